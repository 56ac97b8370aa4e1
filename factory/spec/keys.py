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
import os
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Mapping
from urllib.parse import quote

from factory.store.s3 import is_s3, split_uri
from stages.base import StagePlan

#: The row fields that change an asset.
WORK_FIELDS = ("sku", "variant", "seed", "prompt", "negative_prompt", "width", "height",
               "palette")


def params_hash(plan: StagePlan) -> str:
    """Short hash of a stage's typed params."""
    text = json.dumps(plan.params.key_params(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def chain_fingerprint(plans: tuple[StagePlan, ...], *, encoding: str = "") -> str:
    """Hash of a stage chain (kinds, model ids, sources, revisions, what the weights hold,
    params) and its encoding."""
    parts = [{"name": p.name, "model": p.card.name, "source": p.source_ref,
              "revision": p.revision, "params": params_hash(p),
              # what the weights hold, where it says more than the revision does
              **({"weights": p.weights} if p.weights and p.weights != p.revision else {}),
              # the precision rule a torch stage follows (stages.precision), not the device's pick
              **({"precision": p.precision} if p.precision else {})}
             for p in plans]
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


def normal_form(text: str | None) -> str:
    """A SKU or variant as it is compared and keyed: NFC, without surrounding whitespace.

    The NFC and NFD spellings of one SKU (``é`` as one code point, or ``e`` and a combining
    accent) are one SKU: they get one key, and two rows of them are duplicates."""
    return unicodedata.normalize("NFC", text or "").strip()


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


#: Bytes in one file or folder name of a local store (NAME_MAX of Linux and macOS filesystems).
LOCAL_NAME_BYTES = 255
#: Bytes in a whole local path (PATH_MAX less its terminating NUL).
LOCAL_PATH_BYTES = 4095
#: Bytes in an S3 object key, the output prefix included.
S3_KEY_BYTES = 1024
#: A local write stages its file beside the target as ``.<name>.<32 hex digits>``
#: (``factory.store.storage``): the longest name it makes is the target's plus these bytes.
LOCAL_STAGING_BYTES = 34


@dataclass(frozen=True)
class KeyRoom:
    """Where a row's keys land, and every key a job builds from a row's SKU and variant.

    A SKU long enough to overflow one of them is the row's reject (``problem``), never an
    ``OSError`` (name too long) or an S3 ``KeyTooLongError`` that stops the run.

    Attributes:
        store: ``local`` (a directory: each path component, and the whole path, is bounded)
            or ``s3`` (the whole key, the output prefix included, is bounded).
        prefix: the output URI's part before every key: the S3 key prefix inside the bucket
            (``""`` at its root), or the local output directory as given.
        exts: each asset key's extension (with channels: ``<channel>.<ext>`` per channel).
        intermediates: the stages whose intermediates are kept (``intermediate_key``).
    """

    store: Literal["local", "s3"] = "local"
    prefix: str = ""
    exts: tuple[str, ...] = ("png",)
    intermediates: tuple[str, ...] = ()

    @classmethod
    def for_output(cls, uri: str, *, exts: tuple[str, ...],
                   intermediates: tuple[str, ...] = ()) -> KeyRoom:
        """The room in the output store at ``uri`` (``s3://bucket/prefix`` or a directory)."""
        if is_s3(uri):
            return cls(store="s3", prefix=split_uri(uri)[1], exts=exts,
                       intermediates=intermediates)
        return cls(store="local", prefix=uri, exts=exts, intermediates=intermediates)

    def keys(self, sku: str, variant: str) -> list[str]:
        """Every key this job builds for the row, from the key functions themselves (the work
        hash has a fixed length, so a placeholder fingerprint gives each key's length)."""
        row = {"sku": sku, "variant": variant}
        return ([asset_key("", ext, row) for ext in self.exts]
                + [intermediate_key(stage, "", row) for stage in self.intermediates])

    @cached_property
    def _room(self) -> int:
        """Bytes a key may take here before any limit binds (the tightest of them, for a whole
        key: every part of a key is shorter than the key)."""
        if self.store == "s3":
            return S3_KEY_BYTES - (len(self.prefix.encode("utf-8")) + 1 if self.prefix else 0)
        return min(LOCAL_NAME_BYTES - LOCAL_STAGING_BYTES,
                   LOCAL_PATH_BYTES - len(os.fsencode(self.prefix.rstrip("/") or ".")) - 1
                   - LOCAL_STAGING_BYTES)

    @cached_property
    def _fixed(self) -> int:
        """Bytes of this job's longest key without its SKU and variant."""
        return max(len(key.encode("utf-8")) for key in self.keys("", ""))

    def problem(self, sku: str, variant: str) -> str | None:
        """Why the row's keys do not fit this store, naming the limit and the store; None if
        they fit."""
        try:  # percent-encoding takes at most 3 bytes per byte: most rows fit by arithmetic
            if self._fixed + 3 * (len(sku.encode("utf-8")) + len(variant.encode("utf-8"))) \
                    <= self._room:
                return None
        except UnicodeEncodeError:
            pass
        for key in self.keys(sku, variant):
            if self.store == "s3":
                full = f"{self.prefix}/{key}" if self.prefix else key
                size = len(full.encode("utf-8"))
                if size > S3_KEY_BYTES:
                    where = f" with the output prefix '{self.prefix}'" if self.prefix else ""
                    return (f"key-encoded, it makes an S3 key of {size} bytes{where}; S3 "
                            f"allows {S3_KEY_BYTES}")
                continue
            parts = key.split("/")
            for i, part in enumerate(parts):
                size = len(part.encode("utf-8"))
                limit = LOCAL_NAME_BYTES - (LOCAL_STAGING_BYTES if i == len(parts) - 1 else 0)
                if size > limit:
                    staged = (f" (its {LOCAL_NAME_BYTES} less the {LOCAL_STAGING_BYTES} of a "
                              "write's staging name)" if i == len(parts) - 1 else "")
                    return (f"key-encoded, it makes a file or folder name of {size} bytes in "
                            f"'{_shape(key, sku)}'; a local store allows {limit}{staged}")
            size = len(os.fsencode(self.prefix.rstrip("/") or ".")) + 1 + len(key.encode(
                "utf-8")) + LOCAL_STAGING_BYTES
            if size > LOCAL_PATH_BYTES:
                return (f"key-encoded, it makes a local path of {size} bytes under the output "
                        f"directory; a local store allows {LOCAL_PATH_BYTES}")
        return None


def _shape(key: str, sku: str) -> str:
    """``key`` with its SKU shown as ``<sku>``: the key's shape, not its (long) text."""
    return key.replace(f"/{key_safe(sku)}/", "/<sku>/", 1)


def extension(image_format: str) -> str:
    return "jpg" if image_format == "jpeg" else image_format


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value
