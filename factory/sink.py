"""Writing: skip work already in the store, encode each finished image once, write it create-only.

Three Ray Data task functions, each given one frozen config:

* ``mark_existing`` runs before the stages: a row whose asset key already exists becomes
  ``exists`` and every stage skips it (a rerun or resume renders nothing twice).
* ``write_intermediates`` runs after a stage named in ``keep_intermediates``.
* ``write_assets`` runs at the end of the chain and returns the lineage rows, without pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from factory import images
from factory.keys import intermediate_key, work_hash
from factory.storage import Store
from stages.base import STATUS_FAILED, STATUS_OK

#: A row whose asset was found in the store before rendering; lineage records it as ``ok``.
STATUS_EXISTS = "exists"
WORK_META = "factory-work"
SHA_META = "factory-sha256"


@dataclass(frozen=True)
class SinkConfig:
    """Everything the sink tasks need, passed as one frozen argument."""

    store: Store
    image_format: str
    quality: int
    png_compression: int
    chain_fingerprint: str


@dataclass(frozen=True)
class IntermediateConfig:
    """Where one stage's intermediate images go."""

    store: Store
    stage: str
    fingerprint: str


def mark_existing(batch: dict[str, np.ndarray], *, store: Store) -> dict[str, np.ndarray]:
    """Ray Data task: rows whose asset key exists become ``exists`` with its size and hash."""
    n = len(batch["sku"])
    status = batch["status"].astype(object)
    sha = np.full(n, "", dtype=object)
    size = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(status == STATUS_OK):
        key = batch["output_key"][i]
        head = store.head(key)
        if head is None:
            continue
        status[i], size[i] = STATUS_EXISTS, head.size
        sha[i] = head.metadata.get(SHA_META) or hashlib.sha256(store.read_bytes(key)).hexdigest()
    return {**batch, "status": status, "sha256": sha, "bytes": size}


def select_rows(batch: dict[str, np.ndarray], *, existing: bool) -> dict[str, np.ndarray]:
    """Ray Data task: keep the rows whose asset exists (``existing``) or all the others."""
    keep = (batch["status"] == STATUS_EXISTS) == existing
    return {name: column[keep] for name, column in batch.items()}


def write_intermediates(batch: dict[str, np.ndarray], *,
                        config: IntermediateConfig) -> dict[str, np.ndarray]:
    """Ray Data task: write this stage's images (PNG) for its ``ok`` rows; add their keys."""
    n = len(batch["sku"])
    keys = np.full(n, "", dtype=object)
    for i, pixels in enumerate(images.load("image", batch)):
        if pixels is None:
            continue
        row = {k: batch[k][i] for k in batch if k != "image"}
        keys[i] = intermediate_key(config.stage, config.fingerprint, row)
        config.store.put_if_absent(keys[i], images.encode(pixels, "png"),
                                   metadata={WORK_META: keys[i]}, content_type="image/png")
    return {**batch, f"{config.stage}_key": keys}


def write_assets(batch: dict[str, np.ndarray], *, config: SinkConfig) -> dict[str, np.ndarray]:
    """Ray Data task: encode and write the ``ok`` rows; return lineage rows without pixels."""
    n = len(batch["sku"])
    status = batch["status"].astype(object)
    error = batch["error"].astype(object)
    failed_stage = batch["failed_stage"].astype(object)
    keys = batch["output_key"].astype(object)
    digests = batch["sha256"].astype(object) if "sha256" in batch else np.full(n, "", object)
    sizes = batch["bytes"].astype(np.int64) if "bytes" in batch else np.zeros(n, np.int64)
    written = np.zeros(n, dtype=bool)
    pixels = images.load("image", batch) if "image" in batch else [None] * n
    content_type = f"image/{config.image_format}"
    for i in range(n):
        if status[i] == STATUS_EXISTS:
            status[i] = STATUS_OK
            continue
        if status[i] != STATUS_OK:
            keys[i] = ""
            continue
        try:
            if pixels[i] is None:
                raise ValueError("no image reached the sink")
            data = images.encode(pixels[i], config.image_format, quality=config.quality,
                                 png_level=config.png_compression)
            digests[i] = hashlib.sha256(data).hexdigest()
            row = {k: batch[k][i] for k in batch if k != "image"}
            written[i] = config.store.put_if_absent(
                keys[i], data, content_type=content_type,
                metadata={WORK_META: work_hash(config.chain_fingerprint, row),
                          SHA_META: digests[i]})
            sizes[i] = len(data)
        except Exception as exc:  # an unwritable asset is that SKU's failure, not the batch's
            status[i], error[i], failed_stage[i] = STATUS_FAILED, f"{type(exc).__name__}: {exc}", "sink"
            keys[i], digests[i], sizes[i] = "", "", 0
    out = {k: v for k, v in batch.items() if k != "image"}
    out.update(status=status, error=error, failed_stage=failed_stage, output_key=keys,
               sha256=digests, bytes=sizes, written=written)
    return out
