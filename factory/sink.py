"""The sink: encode each finished image once, write it under its content key, record lineage.

``write_assets`` runs as a CPU task pool at the end of the chain. An asset's key is derived
from what made it (SKU, variant, the chain fingerprint, seed, prompt and row parameters), so
the same work always lands on the same key and a retried task finds its own earlier write.
The driver streams the returned rows into the run's tables (``RunRecorder``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from factory import images
from factory.rows import key_safe
from factory.storage import Store
from stages.base import STATUS_OK, StagePlan


@dataclass(frozen=True)
class SinkConfig:
    """Everything the sink tasks need, passed as one frozen argument."""

    output_uri: str
    image_format: str
    quality: int
    png_compression: int
    chain_fingerprint: str
    final_image_column: str = "image"


def params_hash(plan: StagePlan) -> str:
    """Short hash of a stage's typed params."""
    text = json.dumps(plan.params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def chain_fingerprint(plans: tuple[StagePlan, ...], *, image_format: str, quality: int) -> str:
    """Hash of the stage chain: kinds, model ids, sources, revisions, params, output encoding."""
    parts = [{"name": p.name, "model": p.card.name, "source": p.source_ref,
              "revision": p.revision, "params": params_hash(p)} for p in plans]
    text = json.dumps({"chain": parts, "format": image_format, "quality": quality},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def work_hash(config: SinkConfig, row: dict[str, Any]) -> str:
    """What makes this asset: the chain and the row's own inputs. Same work, same hash."""
    inputs = {k: _plain(row.get(k)) for k in ("sku", "variant", "seed", "prompt",
                                               "negative_prompt", "width", "height", "palette")}
    text = json.dumps({"chain": config.chain_fingerprint, "row": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def asset_key(config: SinkConfig, row: dict[str, Any]) -> str:
    """``assets/<sku>/<variant>-<work hash>.<ext>`` with the SKU percent-encoded."""
    ext = "jpg" if config.image_format == "jpeg" else config.image_format
    return f"assets/{key_safe(row['sku'])}/{row['variant']}-{work_hash(config, row)}.{ext}"


def write_assets(batch: dict[str, np.ndarray], *, config: SinkConfig) -> dict[str, np.ndarray]:
    """Ray Data task: encode and write the ``ok`` rows; return lineage rows without pixels."""
    store = Store(config.output_uri)
    column = config.final_image_column
    n = len(batch["sku"])
    keys = np.full(n, "", dtype=object)
    digests = np.full(n, "", dtype=object)
    sizes = np.zeros(n, dtype=np.int64)
    written = np.zeros(n, dtype=bool)
    status = batch["status"].astype(object)
    error = batch["error"].astype(object)
    failed_stage = batch["failed_stage"].astype(object)
    pixels = images.load(column, batch) if column in batch else [None] * n
    for i in range(n):
        if status[i] != STATUS_OK:
            continue
        row = {k: batch[k][i] for k in batch if k != column}
        try:
            if pixels[i] is None:
                raise ValueError("no image reached the sink")
            data = images.encode(pixels[i], config.image_format, quality=config.quality,
                                 png_level=config.png_compression)
            keys[i] = asset_key(config, row)
            written[i] = store.put_if_absent(keys[i], data)
            digests[i] = hashlib.sha256(data).hexdigest()
            sizes[i] = len(data)
        except Exception as exc:  # an unwritable asset is that SKU's failure, not the batch's
            status[i], error[i], failed_stage[i] = "failed", f"{type(exc).__name__}: {exc}", "sink"
            keys[i] = ""
    out = {k: v for k, v in batch.items() if k != column}
    out.update(status=status, error=error, failed_stage=failed_stage, output_key=keys,
               sha256=digests, bytes=sizes, written=written)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value
