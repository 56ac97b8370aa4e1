"""Training specs: a brand LoRA's YAML parsed once into a frozen ``Training``, before Ray starts.

``load_training(path)`` returns a ``Training`` or raises ``TrainSpecError`` listing every
problem with the file and key path (``train.resolution``), exactly as job specs do
(``factory.spec.job``): unknown keys, wrong types and out-of-range values, a base model that is
not a diffusion card, an images folder that does not exist, a captions manifest whose format
cannot be told. What needs the data itself (listing an ``s3://`` prefix, captions that name
missing files) is checked by ``factory.lora.train.collect_data``, still before Ray starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from factory.core import settings
from factory.store.s3 import S3Options, is_s3
from factory.core.strict import Strict
from factory.spec.job import SpecError, StorageSpec, _pydantic_problems, read_yaml
from stages.weights import resolve_source

#: Registry cards whose pipelines ``AdapterTrainer`` trains for: SD 1.x/2.x (one CLIP text
#: encoder, a UNet). SDXL (two text encoders) and Flux (a transformer) need their own trainer.
TRAINABLE_CARDS = ("generate/sd-tiny", "generate/sd-turbo", "lora/sd-tiny-brand",
                   "lora/sd-turbo-brand")
#: Image files taken from the images folder or prefix.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: The attention projections a style/brand LoRA adapts (diffusers' training scripts' default).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class TrainSpecError(SpecError):
    """A training spec that cannot run; ``problems`` are ``key.path: message`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        ValueError.__init__(self, f"{source}: invalid training spec:\n"
                            + "\n".join(f"  {p}" for p in problems))


class BaseModelSpec(Strict):
    """The model the LoRA is trained for: a registry card, or a source and revision."""

    model: str | None = None
    source: str | None = None
    revision: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> BaseModelSpec:
        if (self.model is None) == (self.source is None):
            raise ValueError("give exactly one of 'model' (a registry card) or 'source' "
                             "(tiny:NAME, a path, s3:// or a hub id)")
        return self


class DataSpec(Strict):
    """Brand images: a folder or ``s3://`` prefix, and optional captions.

    Attributes:
        images: folder or ``s3://bucket/prefix`` holding the images (not recursive).
        captions: optional manifest (CSV or JSONL with ``file`` and ``caption``) naming images
            relative to ``images``; images it does not name get ``caption``.
        caption: the caption of every image the manifest does not caption (the instance
            prompt, e.g. "a product photo in acme style").
    """

    images: str = Field(min_length=1)
    captions: str | None = None
    caption: str = ""


class LoraSpec(Strict):
    rank: int = Field(4, ge=1, le=256)
    alpha: float = Field(4.0, gt=0, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                                      min_length=1)


class TrainSpec(Strict):
    """Hyper-parameters and how the run is laid out on Ray Train.

    Attributes:
        steps: optimizer steps in all (a resumed run stops at the same count).
        checkpoint_every: steps between checkpoints (the last step always checkpoints).
        num_workers: data-parallel Ray Train workers; one per GPU with ``use_gpu``.
        max_failures: worker-group restarts Ray Train makes from the latest checkpoint.
    """

    steps: int = Field(100, ge=1, le=1_000_000)
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    batch_size: int = Field(1, ge=1, le=1024)
    resolution: int = Field(512, ge=8, le=4096)
    seed: int = Field(0, ge=0, lt=2**63)
    random_flip: bool = True
    center_crop: bool = True
    checkpoint_every: int = Field(50, ge=1)
    num_workers: int = Field(1, ge=1, le=1024)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(2, ge=-1, le=100)

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value


class OutputSpec(Strict):
    """Where checkpoints, the adapter and its record go: a directory or ``s3://`` prefix."""

    uri: str = Field(min_length=1)


class TrainingSpecDoc(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    base: BaseModelSpec
    data: DataSpec
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    output: OutputSpec
    storage: StorageSpec = StorageSpec()


@dataclass(frozen=True)
class Training:
    """A validated training spec: everything the run needs, frozen.

    ``base_source`` is resolved for this machine (a path or hub id); ``base_ref`` is what the
    spec or card said, and is what the record and the training id use.
    """

    name: str
    source: str
    spec_hash: str
    base_ref: str
    base_source: str
    base_revision: str
    base_card: str | None
    images_uri: str
    captions_uri: str | None
    caption: str
    lora: LoraSpec
    train: TrainSpec
    output_uri: str
    s3: S3Options
    models_dir: str
    cache_dir: str

    def hyperparameters(self) -> dict[str, Any]:
        """What decides the adapter besides the base and the data (the record's copy)."""
        return {"lora": self.lora.model_dump(mode="json"),
                **{k: v for k, v in self.train.model_dump(mode="json").items()
                   if k not in ("num_workers", "use_gpu", "cpus_per_worker", "max_failures",
                                "checkpoint_every")},
                "world_size": self.train.num_workers}


def load_training(path: str | Path) -> Training:
    """Read and validate a training spec file."""
    return parse_training(read_yaml(path, TrainSpecError), source=str(path))


def parse_training(data: Any, *, source: str = "<training spec>") -> Training:
    """Validate a parsed YAML document into a ``Training``.

    Relative local paths are relative to the working directory, as in job specs.
    """
    if not isinstance(data, dict):
        raise TrainSpecError(source, ["top level: expected a mapping of keys"])
    try:
        spec = TrainingSpecDoc.model_validate(data)
    except ValidationError as exc:
        raise TrainSpecError(source, _pydantic_problems(exc)) from exc
    problems: list[str] = []
    try:
        s3_options = S3Options.from_settings(**spec.storage.model_dump())
    except (TypeError, ValueError) as exc:
        problems.append(f"storage: {exc}")
        s3_options = S3Options()
    base_ref, revision, card_name = _base(spec.base, problems)
    _check_local("data.images", spec.data.images, problems, directory=True)
    if spec.data.captions is not None:
        _check_local("data.captions", spec.data.captions, problems, directory=False)
        if not spec.data.captions.lower().endswith((".csv", ".jsonl", ".ndjson")):
            problems.append(f"data.captions: cannot tell the format of '{spec.data.captions}'; "
                            "use a .csv or .jsonl file with 'file' and 'caption'")
    if not spec.data.caption and spec.data.captions is None:
        problems.append("data: give 'caption' (the brand's instance prompt), 'captions' "
                        "(a manifest), or both")
    if spec.train.use_gpu is False and spec.train.num_workers > 64:
        problems.append("train.num_workers: more than 64 CPU workers; set use_gpu for GPU "
                        "workers (one per GPU)")
    if spec.output.uri.startswith("s3://") and spec.output.uri.rstrip("/") == "s3:":
        problems.append("output.uri: give s3://bucket/prefix")
    if problems:
        raise TrainSpecError(source, problems)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return Training(
        name=spec.name, source=source, spec_hash=digest, base_ref=base_ref,
        base_source=resolve_source(base_ref, settings.models_dir()), base_revision=revision,
        base_card=card_name, images_uri=spec.data.images, captions_uri=spec.data.captions,
        caption=spec.data.caption, lora=spec.lora, train=spec.train,
        output_uri=_absolute(spec.output.uri), s3=s3_options,
        models_dir=str(settings.models_dir()), cache_dir=str(settings.cache_dir()))


def _base(base: BaseModelSpec, problems: list[str]) -> tuple[str, str, str | None]:
    """``(source reference, revision, card name)`` of the base model."""
    if base.model is not None:
        from stages.registry import UnknownModelError, get_card

        try:
            card = get_card(base.model, None)
        except UnknownModelError as exc:
            problems.append(f"base.model: {exc}")
            return "", "", None
        if card.name not in TRAINABLE_CARDS:
            problems.append(f"base.model: cannot train a LoRA for '{card.name}'; trainable "
                            f"cards: {', '.join(TRAINABLE_CARDS)} (or give base.source)")
            return "", "", None
        return card.source, base.revision or card.revision, card.name
    ref = base.source or ""
    if ref.startswith("tiny:"):
        from stages.tiny.models import TINY_MODELS

        if ref.removeprefix("tiny:") != "sd-tiny":
            problems.append(f"base.source: '{ref}' is not a tiny diffusion pipeline "
                            f"(tiny models: {', '.join(TINY_MODELS)}; use tiny:sd-tiny)")
    elif ref.startswith(("/", "./", "../", "~")) and not Path(ref).expanduser().exists():
        problems.append(f"base.source: '{ref}' does not exist")
    revision = base.revision or ("local" if ref.startswith("tiny:") or Path(ref).exists()
                                 else "main")
    return ref, revision, None


def _check_local(key: str, uri: str, problems: list[str], *, directory: bool) -> None:
    if is_s3(uri):
        if not uri.removeprefix("s3://").strip("/"):
            problems.append(f"{key}: give s3://bucket/prefix")
        return
    path = Path(uri).expanduser()
    if not path.exists():
        problems.append(f"{key}: '{uri}' does not exist (relative to {Path.cwd()})")
    elif directory and not path.is_dir():
        problems.append(f"{key}: '{uri}' is not a folder")
    elif not directory and not path.is_file():
        problems.append(f"{key}: '{uri}' is not a file")


def _absolute(uri: str) -> str:
    return uri if is_s3(uri) else str(Path(uri).expanduser().resolve())

