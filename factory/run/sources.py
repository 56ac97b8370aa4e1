"""Each row's product photo, fetched while the run decides its work.

A job whose first stage is ``source`` (``stages.source_photo``) renders the catalog's own
photos. The photo's content is part of each asset's work: its sha256 joins the row's work hash
(``factory.spec.keys``), so a changed photo lands on a new key and renders again, and an unchanged
one is found in the store and does not. That is why photos are fetched here, in the work list,
before existing work is looked up, and not inside the stage.

``fetch_sources`` runs as a Ray Data task over blocks of validated rows. Each task fetches its
block's distinct references ``concurrency`` at a time (threads: the work is waiting on the
network, and it holds no GPU) through ``factory.store.photo_fetch`` (urllib3 with its own ``Retry``,
botocore's retries for ``s3://``; SSRF checks before any connection). Each photo's bytes are
stored once, content-addressed and create-only, at ``sources/<aa>/<sha256>``: the source stage
reads them from there, and the run's input photos stay beside its assets. Over HTTP and S3 the
answer's ``ETag`` / ``Last-Modified`` are kept in a small cache object per reference
(``sources/refs/<sha256 of the URL>.json``), so the next run asks with a conditional GET and an
unchanged photo costs a 304, not its body.

A photo that cannot be had (refused URL, 404, timeout, too large, empty, not an image, a
decompression bomb) makes its row a reject naming the photo field and the reason; its
block-mates go on. A store that fails for good stops the run, as everywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np

from factory.spec.keys import SOURCE_SHA256, asset_key
from factory.spec.routes import ROUTE_COLUMN
from factory.run.rows import PHOTO, RowRules
from factory.store.s3 import S3Options, StorageError, is_s3
from factory.store.storage import Store
from factory.core.status import STATUS_OK, STATUS_REJECTED
from stages.source_photo import SOURCE_URI, PhotoSourceParams

if TYPE_CHECKING:
    import ray.data

    from factory.store.photo_fetch import PhotoFetcher, Validators

log = logging.getLogger(__name__)

SOURCES = "sources"
#: Per row: milliseconds its photo took to fetch, check and store (lineage ``fetch_ms``).
FETCH_MS = "fetch_ms"
_REMOTE = ("http://", "https://", "s3://")


@dataclass(frozen=True)
class SourceConfig:
    """What ``fetch_sources`` needs, frozen: where photos go, how to fetch them, and how a
    row's asset key is derived (with its photo's hash)."""

    store: Store
    params: PhotoSourceParams
    #: Relative photo paths resolve here (the manifest's folder); "" refuses them.
    base_dir: str
    s3: S3Options
    rules: RowRules


def content_key(sha256: str) -> str:
    """Where a photo's bytes are kept in the output store."""
    return f"{SOURCES}/{sha256[:2]}/{sha256}"


def ref_cache_key(ref: str) -> str:
    """Where the validators of a remote reference's last fetch are kept."""
    return f"{SOURCES}/refs/{hashlib.sha256(ref.encode('utf-8', 'surrogateescape')).hexdigest()}.json"


def manifest_folder(manifest_uri: str) -> str:
    """The folder relative photo paths resolve in: a local manifest's own; none on S3."""
    if is_s3(manifest_uri):
        return ""
    return str(Path(manifest_uri).expanduser().resolve().parent)


@dataclass(frozen=True)
class _Got:
    sha256: str = ""
    uri: str = ""
    reason: str = ""
    #: wall milliseconds of this photo's fetch, check and store (one thread's)
    ms: float = 0.0


def fetch_sources(batch: dict[str, np.ndarray], *, config: SourceConfig) -> dict[str, np.ndarray]:
    """Ray Data task: each ``ok`` row's photo fetched, stored and hashed into its asset key.

    Adds ``source_sha256`` and ``source_uri``; a row whose photo cannot be had becomes a
    reject naming the photo field.
    """
    from factory.store.photo_fetch import PhotoFetcher

    n = len(batch["sku"])
    status = batch["status"].astype(object)
    error = batch["error"].astype(object)
    reject_field = batch["reject_field"].astype(object)
    keys = batch["output_key"].astype(object)
    digests = np.full(n, "", dtype=object)
    uris = np.full(n, "", dtype=object)
    fetch_ms = np.zeros(n, dtype=np.float64)
    params = config.params
    wanted: dict[str, list[int]] = {}
    for i in np.flatnonzero(status == STATUS_OK):
        ref = str(batch[PHOTO][i] or "").strip()
        if ref:
            wanted.setdefault(ref, []).append(int(i))
        elif params.missing == "reject":
            status[i], reject_field[i] = STATUS_REJECTED, params.column
            error[i] = f"no photo: '{params.column}' is empty (source.missing: text renders " \
                       "such rows from the prompt)"
    if wanted:
        fetcher = PhotoFetcher(params.policy(), base_dir=config.base_dir or None,
                               s3_options=config.s3)
        try:
            with ThreadPoolExecutor(max_workers=min(params.concurrency, len(wanted))) as pool:
                got = dict(zip(wanted, pool.map(lambda ref: _obtain(ref, fetcher, config),
                                                wanted)))
        finally:
            fetcher.close()
        for ref, rows in wanted.items():
            result = got[ref]
            for i in rows:
                fetch_ms[i] = result.ms / len(rows)  # rows sharing a photo share its fetch
                if result.reason:
                    status[i], reject_field[i], error[i] = (STATUS_REJECTED, params.column,
                                                            result.reason)
                    continue
                digests[i], uris[i] = result.sha256, result.uri
                keys[i] = _key(batch, i, result.sha256, config.rules)
    return {**batch, "status": status, "error": error, "reject_field": reject_field,
            "output_key": keys, SOURCE_SHA256: digests, SOURCE_URI: uris, FETCH_MS: fetch_ms}


def _key(batch: dict[str, np.ndarray], i: int, sha256: str, rules: RowRules) -> str:
    """Row ``i``'s asset key with its photo's hash in its work."""
    row = {name: batch[name][i] for name in batch}
    row[SOURCE_SHA256] = sha256
    chain, ext = (rules.route_keys[row[ROUTE_COLUMN]] if rules.routes is not None
                  else (rules.chain_fingerprint, rules.image_ext))
    return asset_key(chain, ext, row)


def _obtain(ref: str, fetcher: PhotoFetcher, config: SourceConfig) -> _Got:
    """One reference's photo in the store: its hash and stored URI, or why not."""
    started = time.perf_counter()
    got = _fetch_and_store(ref, fetcher, config)
    return replace(got, ms=(time.perf_counter() - started) * 1000.0)


def _fetch_and_store(ref: str, fetcher: PhotoFetcher, config: SourceConfig) -> _Got:
    from factory.core.photo_decode import PhotoError, probe_photo

    store = config.store
    remote = ref.lower().startswith(_REMOTE)
    cache = ref_cache_key(ref) if remote else ""
    try:
        validators = _read_validators(store, cache) if cache else None
        fetched = fetcher.fetch(ref, validators=validators)
        if fetched.not_modified and store.head(content_key(fetched.sha256)) is None:
            fetched = fetcher.fetch(ref)  # the stored copy is gone: fetch the body again
        if fetched.data is not None:
            probe_photo(fetched.data, max_pixels=config.params.max_pixels)
            store.put_if_absent(content_key(fetched.sha256), fetched.data,
                                # object metadata is ASCII: the reference, percent-encoded
                                metadata={"factory-source": quote(ref, safe=":/?&=%@+,;")[:1024]})
            if cache and (fetched.etag or fetched.last_modified):
                store.replace_bytes(cache, json.dumps({
                    "ref": ref, "etag": fetched.etag, "last_modified": fetched.last_modified,
                    "sha256": fetched.sha256}).encode(), content_type="application/json")
        return _Got(sha256=fetched.sha256, uri=store.path(content_key(fetched.sha256)))
    except StorageError:
        raise  # the store, not this photo: the run stops uncommitted
    except PhotoError as exc:
        return _Got(reason=f"photo {_printable(ref)[:300]}: {exc.reason}")
    except Exception as exc:  # noqa: BLE001 - one odd photo never costs the catalog its run
        log.warning("photo %r: %s", ref[:300], exc, exc_info=True)
        return _Got(reason=f"photo {_printable(ref)[:300]}: {type(exc).__name__}: {exc}"[:2000])


def _read_validators(store: Store, key: str) -> Validators | None:
    """The validators of the reference's last fetch, or None (none kept, or unreadable)."""
    from factory.store.photo_fetch import Validators

    try:
        data = json.loads(store.read_bytes(key))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None  # a damaged cache entry costs one full fetch, nothing else
    return Validators(etag=str(data.get("etag", "")),
                      last_modified=str(data.get("last_modified", "")),
                      sha256=str(data.get("sha256", "")))


def _printable(text: str) -> str:
    from factory.core.text import bounded

    return bounded(text, limit=300)


def sources_digest(work: ray.data.Dataset) -> str:
    """A hash of every row's photo as fetched (row number and content hash), in manifest
    order: a run's input like the manifest's content (``factory.run.identity``)."""
    digest = hashlib.sha256()
    for batch in work.select_columns(["row", SOURCE_SHA256]).iter_batches(
            batch_size=4096, batch_format="numpy"):
        for row, sha in zip(batch["row"], batch[SOURCE_SHA256]):
            digest.update(f"{int(row)}:{sha}\n".encode())
    return digest.hexdigest()
