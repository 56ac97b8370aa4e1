"""The output store: a local directory (the embedded default) or an S3 bucket prefix.

Assets are content-addressed, so every asset write is create-only: if the key exists, the same
work was done before and nothing is written. On S3 that is one conditional PUT
(``If-None-Match: *``), or, where a server does not honour it, a HEAD then a PUT with the work
hash in the object's metadata. Locally a file is written under a temporary name, flushed to disk
and linked into place, which fails if the name exists; the directory is flushed after, so a
power loss never leaves a name over an empty file. Run tables are spooled locally and published
whole, so a reader never sees half a table. ``Store`` is frozen and picklable: Ray tasks
rebuild clients.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from factory.store import s3
from factory.store.s3 import S3Options, StorageError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

#: Tries at the commit claim of a store without conditional writes before giving up, and the
#: longest wait between two (seconds; the waits grow from a tenth of a second, with jitter).
CLAIM_TRIES = 8
CLAIM_WAIT_MAX_S = 2.0


class ConcurrentCommitError(StorageError):
    """Another driver is committing the same run on a store without conditional writes (or
    stopped in the middle of it and left its claim behind)."""


@dataclass(frozen=True)
class Head:
    """What a store knows about an existing object."""

    size: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Store:
    """A root URI (``s3://bucket/prefix`` or a directory) and how to reach it."""

    uri: str
    s3: S3Options = S3Options()

    @property
    def is_s3(self) -> bool:
        return s3.is_s3(self.uri)

    @property
    def write_mode(self) -> str:
        """How create-only writes are made: ``local-link`` (a hard link fails if the name
        exists), ``if-none-match`` (a conditional PUT), ``checked`` (HEAD, then PUT), or
        ``auto`` before the preflight has settled it."""
        return self.s3.create_only if self.is_s3 else "local-link"

    def path(self, key: str) -> str:
        """Where a key lives, as shown to users."""
        if self.is_s3:
            return f"{self.uri.rstrip('/')}/{key}"
        return str(Path(self.uri).resolve() / key)

    def _object(self, key: str) -> tuple[str, str]:
        bucket, prefix = s3.split_uri(self.uri)
        return bucket, f"{prefix}/{key}" if prefix else key

    def head(self, key: str) -> Head | None:
        """Size and metadata of an existing object, or None."""
        if not self.is_s3:
            try:
                return Head(size=(Path(self.uri) / key).stat().st_size)
            except FileNotFoundError:
                return None
        bucket, name = self._object(key)
        try:
            response = s3.client(self.s3).head_object(Bucket=bucket, Key=name)
        except Exception as exc:  # noqa: BLE001 - ClientError; 404 means absent
            if s3.error_code(exc)[1] == 404:
                return None
            raise s3.explain(exc, self.uri, f"read {key}") from exc
        return Head(size=int(response["ContentLength"]), metadata=response.get("Metadata", {}))

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def put_if_absent(self, key: str, data: bytes | BinaryIO, *,
                      metadata: dict[str, str] | None = None,
                      content_type: str = "application/octet-stream") -> bool:
        """Write ``data`` at ``key`` unless it exists; True if this call wrote it.

        A retry of a write that landed but whose answer was lost finds the object and returns
        False: the key is derived from the work, so the object there is this work's result.
        On a conditional-write store a 412 says another write created the key first; a 409
        (``ConditionalRequestConflict``: a concurrent write of the key was in flight) is retried
        by the client (``factory.store.s3``) until it turns into a 412 or a success.

        In the ``checked`` mode the HEAD and the PUT are two requests: two concurrent writers
        can both find the key absent and both write. Content-addressed assets tolerate that
        (both wrote the same work); a run's commit does not, and takes ``commit_claim`` first.
        """
        if not self.is_s3:
            try:
                return _local_create(Path(self.uri) / key, data)
            except OSError as exc:  # the store, not this asset: the run stops uncommitted
                raise StorageError(f"{self.uri}: cannot write {key}: "
                                   f"{exc.strerror or exc}") from exc
        bucket, name = self._object(key)
        client = s3.client(self.s3)
        extra = {"Metadata": metadata or {}, "ContentType": content_type}
        if self.s3.create_only == "checked":
            if self.head(key) is not None:
                return False
            client.put_object(Bucket=bucket, Key=name, Body=data, **extra)
            return True
        try:
            client.put_object(Bucket=bucket, Key=name, Body=data, IfNoneMatch="*", **extra)
            return True
        except Exception as exc:  # noqa: BLE001 - ClientError, translated below
            code, status = s3.error_code(exc)
            if status == 412 or code == "PreconditionFailed":
                return False
            if status == 409 and self.head(key) is not None:
                return False  # still conflicting after the client's retries, and a create won
            raise s3.explain(exc, self.uri, f"write {key}") from exc

    def read_bytes(self, key: str) -> bytes:
        if not self.is_s3:
            return (Path(self.uri) / key).read_bytes()
        bucket, name = self._object(key)
        try:
            return s3.client(self.s3).get_object(Bucket=bucket, Key=name)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            if s3.error_code(exc)[1] == 404:
                raise FileNotFoundError(self.path(key)) from exc
            raise s3.explain(exc, self.uri, f"read {key}") from exc

    def publish_file(self, local: Path, key: str, *, create_only: bool = False) -> bool:
        """Make a finished local file visible at ``key`` in one step; True if this call did.

        With ``create_only`` an existing object is left alone and False is returned (a
        concurrent commit of the same run won); otherwise the object is replaced.
        """
        if not self.is_s3:
            target = Path(self.uri) / key
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if create_only:
                    return _local_create(target, local)
                staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
                _write_synced(staging, local)
                os.replace(staging, target)
                _sync_directory(target.parent)
                return True
            except OSError as exc:
                raise StorageError(f"{self.uri}: cannot write {key}: "
                                   f"{exc.strerror or exc}") from exc
        bucket, name = self._object(key)
        if create_only:  # one create-only PUT (5 GB at most; lineage tables are far smaller)
            with local.open("rb") as body:
                return self.put_if_absent(key, body, content_type="application/vnd.apache.parquet")
        try:
            # s3transfer: one PUT, or a multipart upload that becomes visible only on completion
            s3.client(self.s3).upload_file(str(local), bucket, name)
            return True
        except Exception as exc:  # noqa: BLE001
            raise s3.explain(exc, self.uri, f"write {key}") from exc

    def replace_bytes(self, key: str, data: bytes, *,
                      content_type: str = "application/octet-stream") -> None:
        """Write ``data`` at ``key``, replacing what is there, in one step (readers see the
        old object or the new one). For caches only: assets and run tables are create-only."""
        if not self.is_s3:
            target = Path(self.uri) / key
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
                _write_synced(staging, data)
                os.replace(staging, target)
            except OSError as exc:
                raise StorageError(f"{self.uri}: cannot write {key}: "
                                   f"{exc.strerror or exc}") from exc
            return
        bucket, name = self._object(key)
        try:
            s3.client(self.s3).put_object(Bucket=bucket, Key=name, Body=data,
                                          ContentType=content_type)
        except Exception as exc:  # noqa: BLE001
            raise s3.explain(exc, self.uri, f"write {key}") from exc

    def open_input_file(self, key: str) -> pa.NativeFile:
        """A pyarrow random-access file over the object at ``key``: reads are ranged (on S3,
        one ranged GET each), so a reader of a Parquet footer never fetches the whole file.
        Raises ``FileNotFoundError`` if there is no such object."""
        import pyarrow.fs as pafs

        if not self.is_s3:
            return pafs.LocalFileSystem().open_input_file(str(Path(self.uri).resolve() / key))
        bucket, name = self._object(key)
        try:
            return s3.pyarrow_filesystem(self.s3).open_input_file(f"{bucket}/{name}")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"{self.uri}: read {key} failed: {exc}") from exc

    def list_sizes(self, prefix: str) -> Iterator[list[tuple[str, int]]]:
        """Pages of ``(key, size)`` under ``prefix/`` in key order (keys relative to the
        store); on S3 each page is one LIST request of up to 1,000 keys."""
        if not self.is_s3:
            root, directory = Path(self.uri), Path(self.uri) / prefix
            files = directory.rglob("*") if directory.is_dir() else []
            found = sorted((p.relative_to(root).as_posix(), p.stat().st_size)
                           for p in files if p.is_file())
            for i in range(0, len(found), 1000):
                yield found[i:i + 1000]
            return
        bucket, name = self._object(prefix)
        root = name[:len(name) - len(prefix)]
        paginator = s3.client(self.s3).get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{name}/"):
                yield [(item["Key"][len(root):], int(item["Size"]))
                       for item in page.get("Contents", [])]
        except Exception as exc:  # noqa: BLE001 - ClientError
            raise s3.explain(exc, self.uri, f"list {prefix}/") from exc

    def delete(self, key: str) -> None:
        if not self.is_s3:
            (Path(self.uri) / key).unlink(missing_ok=True)
            return
        bucket, name = self._object(key)
        s3.client(self.s3).delete_object(Bucket=bucket, Key=name)

    def children(self, prefix: str) -> list[str]:
        """Folders directly under ``prefix/`` (used to list run ids, never assets); a file
        there (a ``.DS_Store``, a README) is not one. On S3 a folder is a common prefix."""
        if not self.is_s3:
            directory = Path(self.uri) / prefix
            if not directory.is_dir():
                return []
            return sorted(p.name for p in directory.iterdir() if p.is_dir())
        bucket, name = self._object(prefix)
        paginator = s3.client(self.s3).get_paginator("list_objects_v2")
        names: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{name}/", Delimiter="/"):
            names += [p["Prefix"][len(name) + 1:].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    @contextmanager
    def commit_claim(self, prefix: str) -> Iterator[None]:
        """Hold the right to commit under ``prefix`` (a run's folder) for the ``with`` block.

        Local and conditional-write stores need no claim: their create-only write is atomic,
        and the block runs at once. A ``checked`` store (no conditional writes) cannot make a
        HEAD then a PUT atomic, and plain S3 has no compare-and-set: a single object cannot
        say who wrote first. What it does give is strong read-after-write consistency for
        PUTs and LISTs, which is enough for mutual exclusion by claims: each committer writes
        its own claim ``prefix/.commit/<random>``, then lists ``prefix/.commit/``. If it sees
        no other claim, it holds the right: a later committer writes its claim after this
        listing, so its own listing sees this claim. If it sees another, it takes its claim
        back, waits a random while and tries again (both may back off; never both proceed).
        The claim is deleted when the block ends, after the block's writes are complete.

        Raises:
            ConcurrentCommitError: another claim stayed through every try: another driver is
                committing this run, or one stopped mid-commit and left its claim (the error
                names it; delete it if no driver is committing this run).
        """
        if not (self.is_s3 and self.write_mode == "checked"):
            yield
            return
        claims = f"{prefix}/.commit"
        mine = f"{claims}/{uuid.uuid4().hex}"
        others: list[str] = []
        for attempt in range(CLAIM_TRIES):
            self.replace_bytes(mine, b"")
            try:
                others = [key for page in self.list_sizes(claims) for key, _ in page
                          if key != mine]
            except BaseException:
                self._drop_claim(mine)
                raise
            if not others:
                break
            self._drop_claim(mine)
            if attempt < CLAIM_TRIES - 1:
                time.sleep(random.uniform(0.05, min(CLAIM_WAIT_MAX_S, 0.1 * 2 ** attempt)))
        else:
            raise ConcurrentCommitError(
                f"{self.uri}: another driver is committing {prefix} (its claim "
                f"{self.path(others[0])} stayed through {CLAIM_TRIES} tries); this store has "
                "no conditional writes, so commits of one run wait for each other. Nothing was "
                "committed by this driver. If no other driver is running this run, delete "
                "that claim and run again.")
        try:
            yield
        finally:
            self._drop_claim(mine)

    def _drop_claim(self, key: str) -> None:
        try:
            self.delete(key)
        except Exception as exc:  # noqa: BLE001 - a claim left behind names itself later
            log.warning("%s: could not delete the commit claim %s (%s)", self.uri, key, exc)

    def preflight(self, run_id: str) -> Store:
        """Write and delete a probe object before any model loads; return the store with its
        create-only mode settled. Raises ``StorageError`` naming the problem."""
        # at the store's root, not in the run's folder: a run that ends up under another id
        # (its photos are among its inputs) leaves no folder behind, and concurrent runs of
        # one id never remove each other's
        probe = f".preflight-{run_id}-{uuid.uuid4().hex}"
        if not self.is_s3:
            try:
                Path(self.uri).mkdir(parents=True, exist_ok=True)
                _local_create(Path(self.uri) / probe, b"probe")
                self.delete(probe)
            except OSError as exc:
                raise StorageError(f"{self.uri}: cannot write to the output directory: "
                                   f"{exc.strerror or exc}") from exc
            return self
        bucket, name = self._object(probe)
        client = s3.client(self.s3)
        try:
            client.put_object(Bucket=bucket, Key=name, Body=b"probe")
        except Exception as exc:  # noqa: BLE001
            raise s3.explain(exc, self.uri, "write a probe object") from exc
        mode = self.s3.create_only
        try:
            if mode == "auto":
                mode = _probe_create_only(client, bucket, name, self.uri)
        finally:
            try:
                client.delete_object(Bucket=bucket, Key=name)
            except Exception as exc:  # noqa: BLE001
                raise s3.explain(exc, self.uri, "delete the probe object") from exc
        return replace(self, s3=replace(self.s3, create_only=mode))


#: Answers that say "this server does not implement conditional PUTs" (never a transient one).
_NOT_IMPLEMENTED = {"NotImplemented", "InvalidArgument", "InvalidRequest",
                    "UnsupportedOperation", "NotSupported"}


def _probe_create_only(client, bucket: str, name: str, uri: str) -> str:
    """Ask the server, with the probe object in place, whether it honours ``If-None-Match``.

    412: it does. 200: it overwrote, so it ignores the header: ``checked``. A 501 or a 400
    that names the header as unsupported: ``checked``. Anything else — a 5xx or a timeout that
    outlived botocore's retries — says nothing about the server's features, so the preflight
    fails rather than guess.
    """
    try:
        client.put_object(Bucket=bucket, Key=name, Body=b"probe", IfNoneMatch="*")
    except Exception as exc:  # noqa: BLE001 - ClientError and connection errors, sorted below
        code, status = s3.error_code(exc)
        if status == 412 or code == "PreconditionFailed":
            return "if-none-match"
        if status == 501 or (status == 400 and code in _NOT_IMPLEMENTED):
            return "checked"
        raise s3.explain(exc, uri, "probe conditional writes (If-None-Match)") from exc
    return "checked"  # the server overwrote: it ignores If-None-Match


def _local_create(target: Path, data: bytes | BinaryIO | Path) -> bool:
    """Create ``target`` with ``data`` (bytes, a stream, or a file's content) atomically and
    durably; False if it already exists.

    The content is written under a temporary name in the same folder and flushed to disk
    (fsync) before the link makes it visible, and the folder is flushed after: after a power
    loss the name is either absent or names the whole content, never an empty file.
    """
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        _write_synced(staging, data)
        try:
            os.link(staging, target)  # fails if the name exists: create-only, no overwrite
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return False
            raise
        _sync_directory(target.parent)
        return True
    finally:
        staging.unlink(missing_ok=True)


def _write_synced(path: Path, data: bytes | BinaryIO | Path) -> None:
    """Write ``data`` to a new file at ``path`` and flush it to disk."""
    with path.open("xb") as out:
        if isinstance(data, Path):
            with data.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            out.write(data)
        else:
            shutil.copyfileobj(data, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def _sync_directory(directory: Path) -> None:
    """Flush a folder's entries to disk (where the platform can open a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a folder: nothing to flush
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
