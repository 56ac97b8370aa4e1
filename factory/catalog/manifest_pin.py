"""Pinning the manifest for a run: the scan's view of the file, checked by every read task.

The manifest is read twice, by the scan (row count, duplicates, fingerprint) and then by Ray's
read tasks. A file replaced in between would feed rows the scan never counted, so the scan
takes a ``ManifestPin`` (a local file's size and modification time; an S3 object's ETag and
version) and each read task checks it before its first row and after its last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from factory.catalog.records import ManifestError
from factory.store.s3 import S3Options, is_s3


@dataclass(frozen=True)
class ManifestPin:
    """Which bytes of the manifest a run read: the scan takes it, every read task checks it.

    The manifest is read twice (the scan, then Ray's read tasks); a file replaced in between
    would give rows the scan never counted or fingerprinted, so a changed manifest stops the
    run (uncommitted) with a ``ManifestError`` naming it.

    Attributes:
        size: length in bytes.
        mtime_ns: a local file's modification time.
        etag: an S3 object's ETag (a hash of its content).
        version_id: an S3 object's version, in a bucket with versioning ("" otherwise).
    """

    size: int
    mtime_ns: int = 0
    etag: str = ""
    version_id: str = ""


def pin_manifest(uri: str, s3_options: S3Options | None = None) -> ManifestPin:
    """The manifest's pin as it is now (a stat, or one S3 HEAD)."""
    if is_s3(uri):
        from botocore.exceptions import BotoCoreError, ClientError

        from factory.store.s3 import client, split_uri

        bucket, key = split_uri(uri)
        try:
            head = client(s3_options or S3Options()).head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise ManifestError(f"manifest '{uri}': cannot open: {exc}") from exc
        return ManifestPin(size=int(head["ContentLength"]), etag=head.get("ETag") or "",
                           version_id=head.get("VersionId") or "")
    try:
        stat = Path(uri).expanduser().resolve().stat()
    except OSError as exc:
        raise ManifestError(f"manifest '{uri}': cannot open: {exc}") from exc
    return ManifestPin(size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def check_pin(uri: str, pin: ManifestPin, s3_options: S3Options | None = None) -> None:
    """Raise ``ManifestError`` naming the manifest if it is no longer the one ``pin`` saw."""
    now = pin_manifest(uri, s3_options)
    if now == pin:
        return
    changed = ", ".join(f"{name} {getattr(pin, name)!r} -> {getattr(now, name)!r}"
                        for name in ("size", "mtime_ns", "etag", "version_id")
                        if getattr(pin, name) != getattr(now, name))
    raise ManifestError(f"manifest '{uri}' changed after the run scanned it ({changed}): "
                        "the run stops uncommitted; run it again to read the new manifest")
