"""Content-derived keys: the same work always lands on the same key.

An asset's key comes from what makes it — the SKU, the variant, the chain fingerprint (every
stage's model id, source, revision and params, and the output encoding), the seed, the prompt
and the row's own parameters — never from when or where it ran. Intermediates use the
fingerprint of the chain up to their stage.

A job with ``channels:`` makes one asset per channel: ``channel_key`` puts the channel's name in
the key, and the fingerprint folds in the channel's own settings (``channel_fingerprints``).
The last channel's fingerprint also covers the whole channel list: its key is the one a row is
looked up by before rendering, so changing, adding or reordering any channel renders the SKU
again (unchanged channels land on their old keys and are found there).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping
from urllib.parse import quote

from stages.base import StagePlan

#: The row fields that change an asset.
WORK_FIELDS = ("sku", "variant", "seed", "prompt", "negative_prompt", "width", "height",
               "palette")


def params_hash(plan: StagePlan) -> str:
    """Short hash of a stage's typed params."""
    text = json.dumps(plan.params.key_params(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def chain_fingerprint(plans: tuple[StagePlan, ...], *, encoding: str = "") -> str:
    """Hash of a stage chain (kinds, model ids, sources, revisions, params) and its encoding."""
    parts = [{"name": p.name, "model": p.card.name, "source": p.source_ref,
              "revision": p.revision, "params": params_hash(p)} for p in plans]
    text = json.dumps({"chain": parts, "encoding": encoding}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


#: The sha256 of a row's product photo (``factory.run.sources``): part of its work where present.
SOURCE_SHA256 = "source_sha256"

#: A re-render's first seed (``factory.spec.qa``): its key is the row's, whatever seed renders it.
KEY_SEED = "key_seed"


def work_hash(fingerprint: str, row: Mapping[str, Any]) -> str:
    """What makes this output: the chain and the row's own inputs. A row the QA gate sent back
    carries its first seed (``KEY_SEED``): the gated chain's output for the row is one asset,
    under one key, whichever derived seed's render passed (the gate is in ``fingerprint``)."""
    inputs = {k: _plain(row.get(k)) for k in WORK_FIELDS}
    if row.get(SOURCE_SHA256):  # the product photo's content (rows of a source stage only)
        inputs[SOURCE_SHA256] = _plain(row[SOURCE_SHA256])
    if row.get(KEY_SEED) is not None:
        inputs["seed"] = _plain(row[KEY_SEED])
    text = json.dumps({"chain": fingerprint, "row": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def key_safe(sku: str) -> str:
    """Percent-encode a checked SKU for use in an object key."""
    return quote(sku, safe="-._~")


def asset_key(fingerprint: str, ext: str, row: Mapping[str, Any]) -> str:
    """``assets/<sku>/<variant>-<work hash>.<ext>`` with the SKU percent-encoded."""
    return f"assets/{key_safe(row['sku'])}/{row['variant']}-{work_hash(fingerprint, row)}.{ext}"


def channel_fingerprints(plans: tuple[StagePlan, ...],
                         channels: tuple[str, ...]) -> tuple[str, ...]:
    """One fingerprint per channel (``channels``: each channel's settings as JSON text)."""
    prints = [chain_fingerprint(plans, encoding=f"channel:{text}") for text in channels]
    if channels:
        whole = json.dumps({"last": channels[-1], "channels": list(channels)}, sort_keys=True)
        prints[-1] = chain_fingerprint(plans, encoding=f"channels:{whole}")
    return tuple(prints)


def channel_key(fingerprint: str, channel: str, ext: str, row: Mapping[str, Any]) -> str:
    """``assets/<sku>/<variant>-<work hash>.<channel>.<ext>``: one channel's asset."""
    return asset_key(fingerprint, f"{channel}.{ext}", row)


def intermediate_key(stage: str, fingerprint: str, row: Mapping[str, Any]) -> str:
    """``intermediates/<stage>/<sku>/<variant>-<work hash>.png``."""
    return (f"intermediates/{stage}/{key_safe(row['sku'])}/{row['variant']}-"
            f"{work_hash(fingerprint, row)}.png")


def extension(image_format: str) -> str:
    return "jpg" if image_format == "jpeg" else image_format


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value
