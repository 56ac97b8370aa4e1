"""Brand images for LoRA training: listed, captioned and fingerprinted on the driver, then
streamed to the Ray Train workers as a Ray Dataset.

``collect_data`` runs before Ray starts: it lists the images directly under a folder or
``s3://`` prefix, matches the captions manifest (CSV or JSONL with ``file`` and ``caption``)
and hashes every byte into the data's fingerprint, part of the training's identity.
``image_dataset`` is what the workers' shards stream: decoded, resized, cropped and flipped in
Ray Data tasks on CPU.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.store.s3 import is_s3
from factory.lora.train_spec import IMAGE_SUFFIXES, Training, TrainSpecError


@dataclass(frozen=True)
class TrainImage:
    """One training image: its name under the images folder, where a reader finds it (a local
    path, or ``bucket/key`` on S3), the sha256 of its bytes and its caption."""

    name: str
    path: str
    sha256: str
    caption: str


@dataclass(frozen=True)
class TrainData:
    images: tuple[TrainImage, ...]
    fingerprint: str


def collect_data(training: Training) -> TrainData:
    """List the images, read their captions and hash every byte; the data's fingerprint.

    Raises:
        TrainSpecError: no images, fewer images than workers, or a captions manifest that
            names a missing image, lacks a column, or names an image twice.
    """
    source = training.source
    files = _list_images(training)
    if not files:
        raise TrainSpecError(source, [(f"data.images: no images ({', '.join(IMAGE_SUFFIXES)}) "
                                       f"in '{training.images_uri}'")])
    if len(files) < training.train.num_workers:
        raise TrainSpecError(source, [(f"train.num_workers: {training.train.num_workers} "
                                       f"workers but only {len(files)} images")])
    captions = _read_captions(training, {name for name, _ in files})
    images = tuple(TrainImage(name=name, path=path, sha256=hashlib.sha256(data).hexdigest(),
                              caption=captions.get(name, training.caption))
                   for (name, path), data in zip(files, _read_all(training, files)))
    missing = [i.name for i in images if not i.caption]
    if missing:
        raise TrainSpecError(source, [(f"data.caption: images {missing[:3]} have no caption "
                                       "in the manifest and the spec gives no default caption")])
    text = json.dumps([(i.name, i.sha256, i.caption) for i in images])
    return TrainData(images=images, fingerprint=hashlib.sha256(text.encode()).hexdigest())


def image_dataset(training: Training, data: TrainData) -> Any:
    """The images as one Ray Dataset stream of ``pixels`` (3 x R x R float32) and ``caption``,
    decoded and augmented in Ray Data tasks: the image list repeats for as many epochs as the
    steps need, so the whole training is one streaming execution (each pass flips anew)."""
    import math

    import ray.data

    t = training.train
    epochs = math.ceil(t.steps * t.batch_size * t.num_workers / len(data.images))
    paths = [i.path for _ in range(epochs) for i in data.images]
    captions = {i.path: i.caption for i in data.images}
    dataset = ray.data.read_images(paths, filesystem=filesystem(training), include_paths=True,
                                   mode="RGB",
                                   override_num_blocks=max(t.num_workers,
                                                           min(len(paths) // 64, 256), 1))
    return dataset.map_batches(
        prepare_images, batch_format="numpy", batch_size=32,
        fn_kwargs={"captions": captions, "resolution": t.resolution,
                   "center_crop": t.center_crop, "random_flip": t.random_flip})


def prepare_images(batch: dict[str, Any], *, captions: dict[str, str], resolution: int,
                   center_crop: bool, random_flip: bool) -> dict[str, Any]:
    """Ray Data task: decoded images -> training pixels and their captions."""
    import numpy as np

    from factory.lora.adapter import to_pixels

    n = len(batch["path"])
    flips = (np.random.default_rng().random(n) < 0.5) if random_flip else [False] * n
    return {"pixels": to_pixels(list(batch["image"]), resolution=resolution,
                                center_crop=center_crop, flips=list(flips)),
            "caption": np.array([captions[str(p)] for p in batch["path"]], dtype=object)}


def filesystem(training: Training) -> Any:
    if not is_s3(training.images_uri) and not is_s3(training.output_uri):
        return None
    from factory.store.s3 import pyarrow_filesystem

    return pyarrow_filesystem(training.s3)


def _list_images(training: Training) -> list[tuple[str, str]]:
    """``(name, reader path)`` of every image directly under the images folder, sorted."""
    uri = training.images_uri
    if not is_s3(uri):
        root = Path(uri).expanduser().resolve()
        return [(p.name, str(p)) for p in sorted(root.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    import pyarrow.fs as pafs

    prefix = uri.removeprefix("s3://").rstrip("/")
    infos = filesystem(training).get_file_info(pafs.FileSelector(prefix, allow_not_found=True))
    return sorted((info.base_name, info.path) for info in infos
                  if info.type == pafs.FileType.File
                  and Path(info.base_name).suffix.lower() in IMAGE_SUFFIXES)


def _read_all(training: Training, files: list[tuple[str, str]]) -> list[bytes]:
    if not is_s3(training.images_uri):
        return [Path(path).read_bytes() for _, path in files]
    source = filesystem(training)
    out = []
    for _, path in files:
        with source.open_input_stream(path) as stream:
            out.append(stream.read())
    return out


def _read_captions(training: Training, names: set[str]) -> dict[str, str]:
    """``{image name: caption}`` from the captions manifest (CSV or JSONL: file, caption)."""
    uri = training.captions_uri
    if uri is None:
        return {}
    if is_s3(uri):
        with filesystem(training).open_input_stream(uri.removeprefix("s3://")) as stream:
            text = stream.read().decode("utf-8-sig")
    else:
        text = Path(uri).read_text(encoding="utf-8-sig")
    if uri.lower().endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TrainSpecError(training.source, [
                        f"data.captions: line {number} of '{uri}' is not JSON: {exc}"]) from exc
    captions: dict[str, str] = {}
    problems = []
    for number, row in enumerate(rows, start=1):
        name, caption = (row or {}).get("file"), (row or {}).get("caption")
        if not isinstance(name, str) or not isinstance(caption, str):
            problems.append(f"data.captions: row {number} of '{uri}' needs 'file' and 'caption'")
        elif name not in names:
            problems.append(f"data.captions: row {number} names '{name}', which is not an "
                            f"image in '{training.images_uri}'")
        elif name in captions:
            problems.append(f"data.captions: row {number} captions '{name}' a second time")
        else:
            captions[name] = caption
    if problems:
        raise TrainSpecError(training.source, problems[:20])
    return captions
