"""Where weights come from and what we refuse to load.

Sources are resolved on the driver, when the job spec is validated (``resolve_source``):
``tiny:NAME`` is a tiny model built by ``factory models make-tiny`` under the models directory;
anything else is a local path (if it exists) or a hub id. The node that loads a model then
finds it with ``locate``: the driver's path where this node has it, else ``tiny:NAME`` in this
node's own models directory (built there if missing), ``s3://`` through the local cache; a
local path the node does not have is an error that says so.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Callable

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
    """A local path for ``source``: an ``s3://`` model directory (or file) is copied once per
    version into the cache (``stage_copy``) with pyarrow's filesystem copy; anything else is
    returned as is.

    The version is the digest of the source's listing (``s3_version``): weights replaced under
    the same URI are copied into a folder of their own, and a folder an actor may be loading
    from is never removed or rewritten.
    """
    if not source.startswith("s3://"):
        return source
    import pyarrow.fs as pafs

    from factory.store.s3 import S3Options, pyarrow_filesystem

    filesystem = pyarrow_filesystem(s3_options or S3Options())
    remote = source.removeprefix("s3://").rstrip("/")
    info, version = s3_version(source, filesystem)
    name = source.rstrip("/").rsplit("/", 1)[-1] if info.type == pafs.FileType.File else "model"

    def copy(destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(remote, str(destination), source_filesystem=filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        log.info("copied %s into the model cache", source)

    root = Path(cache_dir) / hashlib.sha256(source.encode()).hexdigest()[:24]
    return str(stage_copy(root, version, name, copy, note=source) / name)


def s3_version(source: str, filesystem: Any) -> tuple[Any, str]:
    """The ``pyarrow.fs.FileInfo`` of an ``s3://`` source and the digest of what it holds now:
    sha256 over its objects' relative keys, sizes and modification times, sorted (a PUT gives
    an object a new modification time, so replaced weights give a new digest).

    Raises:
        WeightsError: the source does not exist.
    """
    import pyarrow.fs as pafs

    remote = source.removeprefix("s3://").rstrip("/")
    info = filesystem.get_file_info(remote)
    if info.type == pafs.FileType.NotFound:
        raise WeightsError(f"weights source '{source}' does not exist")
    if info.type == pafs.FileType.File:
        files = [info]
    else:
        files = [f for f in filesystem.get_file_info(pafs.FileSelector(remote, recursive=True))
                 if f.type == pafs.FileType.File]
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        relative = f.path[len(remote):].lstrip("/") or f.base_name
        mtime = f.mtime_ns if f.mtime_ns is not None else -1
        digest.update(f"{relative}\0{f.size}\0{mtime}\n".encode())
    return info, digest.hexdigest()


#: Marks a staged folder complete (written last, inside the temporary folder, before its rename).
COMPLETE = ".complete"


def stage_copy(root: Path, version: str, name: str, copy: Callable[[Path], None], *,
               note: str = "") -> Path:
    """The folder ``root/version`` holding ``name``, made once by ``copy`` on this node.

    Actors of one node staging the same weights at once take turns on a lock file beside it
    (``fcntl.flock``; released by the kernel if an actor dies): the first copies into a
    temporary folder of its own and renames it into place once complete; the others find it
    complete and copy nothing. A complete folder is never removed or written again, so an
    actor loading from it is never disturbed; a copy that fails leaves only its temporary
    folder, removed by the actor that made it.

    Args:
        root: the cache folder of one source.
        version: what the source holds (a digest): each version is a folder of its own.
        name: the file or folder ``copy`` writes inside the folder.
        copy: writes the weights to the path it is given (``folder/name``).
        note: written into the completion marker (the source's URI).
    """
    import fcntl
    import shutil
    import tempfile

    folder = root / version
    if (folder / COMPLETE).exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{version}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (folder / COMPLETE).exists():  # another actor staged it while this one waited
                return folder
            staging = Path(tempfile.mkdtemp(dir=root, prefix=f"{version}.partial-"))
            try:
                copy(staging / name)
                (staging / COMPLETE).write_text(note)
                if folder.exists():  # an incomplete folder no reader uses (no marker)
                    shutil.rmtree(folder)
                staging.rename(folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def weights_identity(source: str, revision: str, *, s3_options: object | None = None,
                     hub_cache: str | None = None) -> str:
    """What the weights a stage loads are, for its assets' keys: the revision a card or spec
    names (``main``, ``local``) says where the weights came from, not what they hold.

    * a local file or directory (``tiny:`` models included): ``sha256:`` over its files'
      relative paths and contents (``local_digest``);
    * an ``s3://`` source: ``s3:`` and the digest of its listing (``s3_version``);
    * a hub id: the commit ``revision`` points to in this machine's hub cache (its
      ``refs/<revision>`` file; a 40-hex revision is a commit already); where the cache
      does not have it, ``revision`` as given;
    * anything else (``rembg:NAME`` sessions): ``revision`` as given.

    Args:
        source: the driver's resolution of the stage's weights (``resolve_source``).
        revision: the card's or spec's revision.
        s3_options: how to reach ``s3://`` sources.
        hub_cache: the hub cache folder (default: ``huggingface_hub``'s).
    """
    if source.startswith("s3://"):
        from factory.store.s3 import S3Options, pyarrow_filesystem

        return "s3:" + s3_version(source, pyarrow_filesystem(s3_options or S3Options()))[1]
    path = Path(source)
    if source and path.exists():
        return "sha256:" + local_digest(path)
    if _COMMIT.fullmatch(revision):
        return revision.lower()
    if _HUB_ID.fullmatch(source):  # a hub id (a missing local path is not one)
        return hub_commit(source, revision, hub_cache=hub_cache) or revision
    return revision


_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
#: ``namespace/name`` as the hub spells repository ids.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def hub_commit(repo_id: str, revision: str, *, hub_cache: str | None = None) -> str | None:
    """The commit ``revision`` of hub model ``repo_id`` points to in the local hub cache
    (offline: its ``refs/<revision>`` file), or None where the cache does not have it."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(hub_cache or constants.HF_HUB_CACHE) / repo_folder_name(
        repo_id=repo_id, repo_type="model")
    ref = folder / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return commit.lower() if _COMMIT.fullmatch(commit) else None


#: File digests by (resolved path, size, mtime_ns, inode): a file is read once per process
#: while it is unchanged (an SDXL checkpoint is ~7 GB, ~5 s of sha256).
_FILE_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def local_digest(path: Path) -> str:
    """sha256 over a local file's, or a directory's files', relative paths and content
    digests, in sorted order.

    Content, not sizes and times: weights replaced by others of the same shapes (a fine-tune)
    keep their sizes and may keep their times (a copy that preserves them), and a header hash
    sees shapes only. Each file's digest is kept for the process by (path, size, mtime_ns,
    inode), so a driver validating many jobs reads each file once.
    """
    files = [path] if path.is_file() else sorted(
        (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    digest = hashlib.sha256()
    for file in files:
        relative = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{relative}\0{_file_digest(file)}\n".encode())
    return digest.hexdigest()


def _file_digest(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]
