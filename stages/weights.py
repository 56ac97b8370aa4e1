"""Where weights come from and what we refuse to load.

Sources are resolved on the driver, when the job spec is validated (``resolve_source``):
``tiny:NAME`` is a tiny model built by ``factory models make-tiny`` under the models directory;
anything else is a local path (if it exists) or a hub id. The node that loads a model then
finds it with ``locate``: the driver's path where this node has it, else ``tiny:NAME`` in this
node's own models directory (built there if missing), ``s3://`` through the local cache; a
local path the node does not have is an error that says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


class WeightsError(ValueError):
    """A weights source that is missing or in a format we refuse."""


def resolve_source(source: str, models_dir: Path) -> str:
    """Turn a card or spec source into what ``from_pretrained``/``new_session`` take."""
    if source.startswith("tiny:"):
        return str((models_dir / source.removeprefix("tiny:")).resolve())
    path = Path(source).expanduser()
    if path.exists():
        return str(path.resolve())
    return source


def locate(source: str, *, ref: str, s3_options: object | None, cache_dir: str) -> str:
    """Where this node finds the weights the driver resolved as ``source`` from ``ref``.

    Args:
        source: the driver's resolution (``resolve_source``) of ``ref``.
        ref: the card's or spec's reference (``tiny:NAME``, a path, a hub id, ``s3://``).
        s3_options: how to reach ``s3://`` sources.
        cache_dir: this node's cache for ``s3://`` sources.

    Raises:
        WeightsError: a local path that this node does not have.
    """
    if source.startswith("s3://"):
        return materialize(source, s3_options=s3_options, cache_dir=cache_dir)
    if not ref or ref == source and not _looks_local(ref) or Path(source).exists():
        return source  # a hub id, or a path this node has
    if ref.startswith("tiny:"):
        from factory.core import settings
        from stages.tiny.models import ensure

        return str(ensure(settings.models_dir(), ref.removeprefix("tiny:")))
    import socket

    raise WeightsError(
        f"weights source '{ref}' is '{source}' on the driver, which does not exist on node "
        f"{socket.gethostname()}: give an s3:// URI or a hub id, or a path every node mounts")


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).suffix.lower() in (
        ".onnx", ".safetensors")


def check_local_weights(source: str, *, allow_pickle: bool) -> None:
    """Refuse pickle weight files in a local source unless the job spec allows them.

    Hub ids are checked by the loaders themselves (``use_safetensors=True``).
    """
    path = Path(source)
    if not path.exists():
        if source.startswith(("/", "./", "../")):
            raise WeightsError(f"weights source '{source}' does not exist")
        return
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise WeightsError(
            f"weights source '{source}' contains pickle files ({', '.join(p.name for p in pickles[:3])}); "
            "pickle can run code when loaded. Convert to safetensors, or set "
            "'allow_pickle: true' on the stage in the job spec if you trust the file."
        )


def torch_device(num_gpus: float) -> str:
    """The device Ray gave this actor: CUDA if it asked for a GPU and one is visible.

    On CUDA, float32 matmuls and convolutions run on TF32 tensor cores (``enable_tf32``).
    """
    import torch

    if num_gpus > 0 and torch.cuda.is_available():
        enable_tf32()
        return "cuda"
    if num_gpus > 0:
        log.warning("stage asked for %s GPU but CUDA is not available; running on CPU", num_gpus)
    return "cpu"


def enable_tf32() -> None:
    """TF32 for float32 matmuls and cuDNN convolutions: what is left in float32 on a GPU
    (a VAE upcast, the blend of upscale tiles) runs on tensor cores; precision ~1e-3."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def torch_dtype(name: str, *, device: str, cuda_dtype: str) -> Any:
    """A stage's torch dtype: ``auto`` is the card's advised ``cuda_dtype`` on CUDA and float32
    on a CPU (half precision is slow or unsupported there); any other name is taken as is."""
    import torch

    if name == "auto":
        name = cuda_dtype if device == "cuda" else "float32"
    return getattr(torch, name)


def to_device(model: Any, device: str) -> Any:
    """Move a model or pipeline to ``device``: the one call where weights reach the GPU."""
    return model.to(device)


def compile_denoiser(pipe: Any) -> None:
    """``torch.compile`` a diffusers pipeline's denoiser (``transformer`` or ``unet``) in
    place; it compiles on its first call, once per input shape."""
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.compile()
            return
    raise ValueError(f"{type(pipe).__name__} has no transformer or unet to compile")


def quiet_loaders() -> None:
    """Silence the hub libraries' per-load progress bars and advisory warnings in actors.

    Every actor loads once; dozens of "Loading weights" bars in the driver's log hide the
    factory's own progress and errors. Errors still surface. Call it before importing
    diffusers (its import is what asks for the image processors, ``pil_image_processors``).
    """
    import transformers

    from factory.core.console import pil_image_processors

    pil_image_processors()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def materialize(source: str, *, s3_options: object | None, cache_dir: str) -> str:
    """A local path for ``source``: ``s3://`` model directories (or files) are copied once into
    the cache (keyed by URI) with pyarrow's filesystem copy; anything else is returned as is."""
    if not source.startswith("s3://"):
        return source
    import hashlib
    import shutil
    from pathlib import Path

    import pyarrow.fs as pafs

    from factory.store.s3 import S3Options, pyarrow_filesystem

    target = Path(cache_dir) / hashlib.sha256(source.encode()).hexdigest()[:24]
    marker = target / ".complete"
    name = source.rstrip("/").rsplit("/", 1)[-1]
    if not marker.exists():
        filesystem = pyarrow_filesystem(s3_options or S3Options())
        remote = source.removeprefix("s3://").rstrip("/")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        info = filesystem.get_file_info(remote)
        if info.type == pafs.FileType.NotFound:
            raise WeightsError(f"weights source '{source}' does not exist")
        destination = staging / name if info.type == pafs.FileType.File else staging / "model"
        destination.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(remote, str(destination), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        (staging / ".complete").write_text(source)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        log.info("copied %s into the model cache", source)
    return str(target / name) if (target / name).exists() else str(target / "model")
