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

from factory import s3
from factory.s3 import S3Options, StorageError


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

    def put_if_absent(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                      content_type: str = "application/octet-stream") -> bool:
        """Write ``data`` at ``key`` unless it exists; True if this call wrote it.

        A retry of a write that landed but whose answer was lost finds the object and returns
        False: the key is derived from the work, so the object there is this work's result.
        """
        if not self.is_s3:
            return _local_create(Path(self.uri) / key, data)
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

    def publish_file(self, local: Path, key: str) -> None:
        """Make a finished local file visible at ``key`` in one step (rename or upload)."""
        if not self.is_s3:
            target = Path(self.uri) / key
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            shutil.copyfile(local, staging)
            os.replace(staging, target)
            return
        bucket, name = self._object(key)
        try:
            # s3transfer: one PUT, or a multipart upload that becomes visible only on completion
            s3.client(self.s3).upload_file(str(local), bucket, name)
        except Exception as exc:  # noqa: BLE001
            raise s3.explain(exc, self.uri, f"write {key}") from exc

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
        probe = f"runs/{run_id}/.preflight-{uuid.uuid4().hex}"
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
                mode = "if-none-match"
                try:
                    client.put_object(Bucket=bucket, Key=name, Body=b"probe", IfNoneMatch="*")
                    mode = "checked"  # the server overwrote: it ignores If-None-Match
                except Exception as exc:  # noqa: BLE001
                    code, status = s3.error_code(exc)
                    if status != 412:
                        mode = "checked"  # 501 NotImplemented and the like
        finally:
            try:
                client.delete_object(Bucket=bucket, Key=name)
            except Exception as exc:  # noqa: BLE001
                raise s3.explain(exc, self.uri, "delete the probe object") from exc
        return replace(self, s3=replace(self.s3, create_only=mode))


def _local_create(target: Path, data: bytes) -> bool:
    """Create ``target`` with ``data`` atomically; False if it already exists."""
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
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
