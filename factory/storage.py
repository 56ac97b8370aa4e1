"""The output store: a local directory (the embedded default) or any pyarrow filesystem URI.

Assets are content-addressed, so a write is create-only: if the key already exists, the same
work was done before and nothing is written. Local writes go to a temporary name and are moved
into place, so a reader never sees half an object. Whole tables stream through
``open_output``; on local disks they are committed by a rename.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs


@dataclass(frozen=True)
class Store:
    """A root URI; keys are ``/``-separated paths below it. Picklable: Ray tasks rebuild it."""

    uri: str

    @property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        try:
            filesystem, root = pafs.FileSystem.from_uri(self.uri)
        except (pa.ArrowInvalid, ValueError):
            filesystem, root = pafs.LocalFileSystem(), self.uri
        if isinstance(filesystem, pafs.LocalFileSystem):
            import os

            root = os.path.abspath(root)
        return filesystem, root.rstrip("/")

    def path(self, key: str) -> str:
        """Where a key lives, as shown to users."""
        return f"{self._fs[1]}/{key}"

    def exists(self, key: str) -> bool:
        filesystem, root = self._fs
        return filesystem.get_file_info(f"{root}/{key}").type == pafs.FileType.File

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless it exists; True if this call wrote it."""
        filesystem, root = self._fs
        target = f"{root}/{key}"
        if filesystem.get_file_info(target).type == pafs.FileType.File:
            return False
        filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with self._atomic(filesystem, target) as stream:
            stream.write(data)
        return True

    def read_bytes(self, key: str) -> bytes:
        filesystem, root = self._fs
        with filesystem.open_input_stream(f"{root}/{key}") as stream:
            return stream.read()

    @contextmanager
    def open_output(self, key: str) -> Iterator[pa.NativeFile]:
        """A stream that becomes visible at ``key`` only when the block exits cleanly."""
        filesystem, root = self._fs
        target = f"{root}/{key}"
        filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with self._atomic(filesystem, target) as stream:
            yield stream

    @staticmethod
    @contextmanager
    def _atomic(filesystem: pafs.FileSystem, target: str) -> Iterator[pa.NativeFile]:
        if not isinstance(filesystem, pafs.LocalFileSystem):
            # Object stores publish an object only when the upload completes.
            with filesystem.open_output_stream(target) as stream:
                yield stream
            return
        temporary = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            with filesystem.open_output_stream(temporary) as stream:
                yield stream
            filesystem.move(temporary, target)
        except BaseException:
            if filesystem.get_file_info(temporary).type == pafs.FileType.File:
                filesystem.delete_file(temporary)
            raise
