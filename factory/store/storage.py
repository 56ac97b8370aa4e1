"""The output store: a local directory (the embedded default) or an S3 bucket prefix.

Assets are content-addressed, so every asset write is create-only: if the key exists, the same
work was done before and nothing is written. On S3 that is one conditional PUT
(``If-None-Match: *``), or, where a server does not honour it, a HEAD then a PUT with the work
hash in the object's metadata. Locally a file is written under a temporary name and linked into
place, which fails if the name exists. Run tables are spooled locally and published whole, so a
reader never sees half a table. ``Store`` is frozen and picklable: Ray tasks rebuild clients.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from factory.store import s3
from factory.store.s3 import S3Options, StorageError

if TYPE_CHECKING:
    import pyarrow as pa


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
                return False  # a concurrent create of the same work won
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
                shutil.copyfile(local, staging)
                os.replace(staging, target)
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
                staging.write_bytes(data)
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
        """Names directly under ``prefix/`` (used to list run ids, never assets)."""
        if not self.is_s3:
            directory = Path(self.uri) / prefix
            return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        bucket, name = self._object(prefix)
        paginator = s3.client(self.s3).get_paginator("list_objects_v2")
        names: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{name}/", Delimiter="/"):
            names += [p["Prefix"][len(name) + 1:].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

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


def _local_create(target: Path, data: bytes | Path) -> bool:
    """Create ``target`` with ``data`` (bytes, or a file's content) atomically; False if it
    already exists."""
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    if isinstance(data, Path):
        shutil.copyfile(data, staging)
    else:
        staging.write_bytes(data)
    try:
        os.link(staging, target)  # fails if the name exists: create-only, no overwrite
        return True
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return False
        raise
    finally:
        staging.unlink(missing_ok=True)
