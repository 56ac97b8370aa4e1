"""Writing: skip work already in the store, encode each finished image once, write it create-only.

Three Ray Data task functions, each given one frozen config:

* ``mark_existing`` runs before the stages: a row whose asset key already exists becomes
  ``exists`` and every stage skips it (a rerun or resume renders nothing twice).
* ``write_intermediates`` runs after a stage named in ``keep_intermediates``.
* ``write_assets`` runs at the end of the chain and returns the lineage rows, without pixels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Callable
from dataclasses import dataclass, field

import numpy as np

from factory.core import images
from factory.core import metrics
from factory.core.status import STATUS_EXISTS
from factory.spec.keys import intermediate_key, work_hash
from factory.core.metrics import RunLabels
from factory.store.storage import Store
from factory.core.status import STATUS_FAILED, STATUS_OK, STATUS_TO_RENDER
from stages.product import PRODUCT

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
    labels: RunLabels = RunLabels()
    #: In a job with routes: each route's chain fingerprint (a row's is its route's).
    route_fingerprints: Mapping[str, str] = field(default_factory=dict)

    def fingerprint_of(self, row: Mapping) -> str:
        """The chain fingerprint of a row's asset: its route's, or the job's."""
        if self.route_fingerprints:
            return self.route_fingerprints[row["route"]]
        return self.chain_fingerprint


@dataclass(frozen=True)
class IntermediateConfig:
    """Where one stage's intermediate images go."""

    store: Store
    stage: str
    fingerprint: str


#: Listing the store's assets pays off from this many rows (a LIST costs ~12 HEADs on AWS).
LIST_MIN_ROWS = 16
#: Give up listing past this many keys per manifest row: the store holds mostly other work,
#: and a HEAD per row is cheaper than reading (and holding) its whole listing.
LIST_KEYS_PER_ROW = 4


@dataclass(frozen=True)
class ExistingAssets:
    """The store's asset keys from one listing: sorted 16-byte key digests and object sizes."""

    digests: np.ndarray
    sizes: np.ndarray

    def sizes_of(self, keys: np.ndarray) -> np.ndarray:
        """Each key's object size, or -1 where the listing did not have it."""
        if len(self.digests) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        wanted = np.array([_key_digest(k) for k in keys], dtype="S16")
        at = np.minimum(np.searchsorted(self.digests, wanted), len(self.digests) - 1)
        return np.where(self.digests[at] == wanted, self.sizes[at], -1)


def _key_digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def list_existing(store: Store, *, rows: int) -> ExistingAssets | None:
    """On S3, list ``assets/`` once (one LIST request per 1,000 keys) where that is cheaper
    than a HEAD per row; None where it is not: a local store (a stat per row is cheap), a
    manifest of a few rows, or a store holding more than ``LIST_KEYS_PER_ROW`` assets per
    manifest row (the listing stops there and each row gets its HEAD)."""
    if not store.is_s3 or rows < LIST_MIN_ROWS:
        return None
    budget, seen = max(1000, LIST_KEYS_PER_ROW * rows), 0
    digests: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    for page in store.list_sizes("assets"):
        seen += len(page)
        if seen > budget:
            return None
        digests.append(np.array([_key_digest(key) for key, _ in page], dtype="S16"))
        sizes.append(np.array([size for _, size in page], dtype=np.int64))
    if not digests:
        return ExistingAssets(np.array([], dtype="S16"), np.array([], dtype=np.int64))
    flat = np.concatenate(digests)
    order = np.argsort(flat, kind="stable")
    return ExistingAssets(flat[order], np.concatenate(sizes)[order])


def mark_existing(batch: dict[str, np.ndarray], *, store: Store,
                  existing: ExistingAssets | None = None) -> dict[str, np.ndarray]:
    """Ray Data task: rows whose asset key exists become ``exists`` with the object's size.

    The lookup is a ``list_existing`` listing where one was made, else a HEAD (locally a stat)
    per row; nothing is read or hashed again, so ``sha256`` stays empty for these rows: the
    run that wrote the object has its hash in its lineage.
    """
    n = len(batch["sku"])
    status = batch["status"].astype(object)
    size = np.zeros(n, dtype=np.int64)
    todo = np.flatnonzero(status == STATUS_OK)
    if existing is not None:
        found = existing.sizes_of(batch["output_key"][todo])
        for i, stored in zip(todo[found >= 0], found[found >= 0]):
            status[i], size[i] = STATUS_EXISTS, stored
    else:
        for i in todo:
            head = store.head(batch["output_key"][i])
            if head is not None:
                status[i], size[i] = STATUS_EXISTS, head.size
    return {**batch, "status": status, "sha256": np.full(n, "", dtype=object), "bytes": size}


#: A listing of no assets: ``mark_existing`` looks nothing up (rows whose fate is decided).
NOTHING_LISTED = ExistingAssets(np.array([], dtype="S16"), np.array([], dtype=np.int64))


def settle_batch(batch: dict[str, np.ndarray], *, sink: Callable[..., dict[str, np.ndarray]],
                 config: Any) -> dict[str, np.ndarray]:
    """Ray Data task: the work list's finished rows (found in the store, rejected, a photo
    that could not be fetched) as ``sink``'s lineage rows; each row to render as one row of
    status ``to_render`` with no asset key, for the driver to count (``factory.run.work``)."""
    status = batch["status"].astype(object)
    status[status == STATUS_OK] = STATUS_TO_RENDER
    return sink({**batch, "status": status}, config=config)


def select_rows(batch: dict[str, np.ndarray], *, render: bool) -> dict[str, np.ndarray]:
    """Ray Data task: keep the rows to render (``render``: valid, not in the store yet) or
    all the others (already in the store, or rejected): they need no stage."""
    keep = (batch["status"] == STATUS_OK) == render
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


def stored_digest(store: Store, key: str) -> tuple[str, int]:
    """The sha256 and size of the object stored at ``key``: from its metadata (``SHA_META``,
    one HEAD) where the writer recorded it there, else by reading it back.

    A create-only write that found its key taken (a retried task, a concurrent run) records
    this, not its own encoding: the bytes of a re-render may differ (a GPU's float order), and
    the lineage describes what the store holds."""
    head = store.head(key)
    if head is not None and head.metadata.get(SHA_META):
        return head.metadata[SHA_META], head.size
    data = store.read_bytes(key)
    return hashlib.sha256(data).hexdigest(), len(data)


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
        except Exception as exc:  # an unencodable image is that SKU's failure, not the batch's
            status[i], error[i], failed_stage[i] = STATUS_FAILED, f"{type(exc).__name__}: {exc}", "sink"
            keys[i], digests[i], sizes[i] = "", "", 0
            continue
        digests[i] = hashlib.sha256(data).hexdigest()
        row = {k: batch[k][i] for k in batch if k not in ("image", PRODUCT)}
        # A store that fails for good (StorageError, after botocore's retries) is not this
        # SKU's fault: it propagates, the run stops uncommitted, and a rerun resumes.
        written[i] = config.store.put_if_absent(
            keys[i], data, content_type=content_type,
            metadata={WORK_META: work_hash(config.fingerprint_of(row), row), SHA_META: digests[i]})
        sizes[i] = len(data)
        if not written[i]:  # an earlier write of this work is there: the lineage describes it
            digests[i], sizes[i] = stored_digest(config.store, keys[i])
    ok = status == STATUS_OK
    tags = config.labels.tags()
    metrics.inc("factory_sink_assets_written", int(written.sum()), tags)
    metrics.inc("factory_sink_assets_skipped", int(ok.sum() - written.sum()), tags)
    metrics.inc("factory_sink_bytes_written", int(sizes[written].sum()), tags)
    out = {k: v for k, v in batch.items() if k not in ("image", PRODUCT)}
    out.update(status=status, error=error, failed_stage=failed_stage, output_key=keys,
               sha256=digests, bytes=sizes, written=written)
    return out
