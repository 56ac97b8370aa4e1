"""A committed run's tables, as readers find them: ``runs/<run id>/lineage.parquet`` (the commit
point, with the run summary in its footer) and ``rejects.parquet``. ``factory.run.recorder``
writes them; the CLI, the report, refresh and calibration read them here.

Both tables are written create-only, the rejects first: once a lineage exists, nothing beside
it is replaced. A lineage that exists but is not a whole Parquet file (an empty file left by a
power loss on a disk that lied about its flushes) is never taken for a commit: the readers
raise ``DamagedRunError`` naming it. What is under ``runs/`` but is not a run's folder (a
``.DS_Store``, a README) is not a run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.store.s3 import StorageError
from factory.store.storage import Store

log = logging.getLogger(__name__)

LINEAGE = "lineage.parquet"
REJECTS = "rejects.parquet"
SUMMARY_KEY = b"factory.summary"
#: In both tables' footers: which attempt's rows they are (``factory.run.recorder``), so a
#: commit can tell rejects of its own inputs from another attempt's.
ATTEMPT_KEY = b"factory.attempt"

#: A Parquet file starts and ends with these bytes; the smallest one is 12 bytes long.
_MAGIC = b"PAR1"
_SMALLEST = 12


class DamagedRunError(StorageError):
    """A run's table exists but is not a readable Parquet file."""

    def __init__(self, path: str, why: str) -> None:
        self.path = path
        super().__init__(f"{path}: damaged run table ({why}); the run is not committed. Delete "
                         "it and run again: the assets already in the store are not rendered "
                         "twice")


def lineage_key(run_id: str) -> str:
    return f"runs/{run_id}/{LINEAGE}"


def is_committed(store: Store, run_id: str) -> bool:
    """A run is committed exactly when its lineage table exists, whole.

    Raises:
        DamagedRunError: a lineage file that is empty or, on a local store, does not begin
            and end as a Parquet file does (on S3 a PUT is whole or absent).
    """
    key = lineage_key(run_id)
    head = store.head(key)
    if head is None:
        return False
    if head.size < _SMALLEST:
        raise DamagedRunError(store.path(key), f"{head.size} bytes")
    if not store.is_s3:
        with open(store.path(key), "rb") as file:
            first = file.read(4)
            file.seek(-4, 2)
            last = file.read(4)
        if first != _MAGIC or last != _MAGIC:
            raise DamagedRunError(store.path(key), "not a Parquet file")
    return True


def list_runs(store: Store) -> list[tuple[str, dict[str, Any]]]:
    """Committed runs under the store, with their summaries. Uncommitted runs and what is not
    a run are skipped; a damaged one is skipped with a warning that names it."""
    runs = []
    for run_id in store.children("runs"):
        try:  # the footer read is the existence check: a run without a lineage is not committed
            runs.append((run_id, read_summary(store, run_id)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except DamagedRunError as exc:
            log.warning("%s", exc)
    return runs


def read_summary(store: Store, run_id: str) -> dict[str, Any]:
    """A committed run's summary, from the lineage footer alone (on S3, ranged GETs of the
    file's tail, however many rows the run has)."""
    key = lineage_key(run_id)
    with store.open_input_file(key) as file:
        meta = _footer(store, key, file)
    return json.loads(meta.get(SUMMARY_KEY, b"{}"))


def read_lineage(store: Store, run_id: str) -> tuple[pa.Table, dict[str, Any]]:
    """A committed run's lineage table and summary."""
    key = lineage_key(run_id)
    data = store.read_bytes(key)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise DamagedRunError(store.path(key), _why(exc)) from exc
    meta = _footer(store, key, pa.BufferReader(data))
    return table, json.loads(meta.get(SUMMARY_KEY, b"{}"))


def read_rejects(store: Store, run_id: str) -> pa.Table:
    """A committed run's rejects table."""
    key = f"runs/{run_id}/{REJECTS}"
    try:
        return pq.read_table(pa.BufferReader(store.read_bytes(key)))
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedRunError(store.path(key), _why(exc)) from exc


def read_footer(store: Store, key: str) -> dict[bytes, bytes]:
    """A table's footer key-value metadata (a ranged read of its tail on S3).

    Raises:
        FileNotFoundError: no such table.
        DamagedRunError: not a readable Parquet file.
    """
    with store.open_input_file(key) as file:
        return _footer(store, key, file)


def _footer(store: Store, key: str, file: Any) -> dict[bytes, bytes]:
    try:
        return pq.read_metadata(file).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedRunError(store.path(key), _why(exc)) from exc


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
