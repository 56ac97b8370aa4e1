"""A committed run's tables, as readers find them: ``runs/<run id>/lineage.parquet`` (the commit
point, with the run summary in its footer) and ``rejects.parquet``. ``factory.run.recorder``
writes them; the CLI, the report, refresh and calibration read them here.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.store.storage import Store

LINEAGE = "lineage.parquet"
REJECTS = "rejects.parquet"
SUMMARY_KEY = b"factory.summary"


def is_committed(store: Store, run_id: str) -> bool:
    """A run is committed exactly when its lineage table exists."""
    return store.exists(f"runs/{run_id}/{LINEAGE}")


def list_runs(store: Store) -> list[tuple[str, dict[str, Any]]]:
    """Committed runs under the store, with their summaries (uncommitted ones are skipped)."""
    runs = []
    for run_id in store.children("runs"):
        try:  # the footer read is the existence check: a run without a lineage is not committed
            runs.append((run_id, read_summary(store, run_id)))
        except FileNotFoundError:
            continue
    return runs


def read_summary(store: Store, run_id: str) -> dict[str, Any]:
    """A committed run's summary, from the lineage footer alone (on S3, ranged GETs of the
    file's tail, however many rows the run has)."""
    with store.open_input_file(f"runs/{run_id}/{LINEAGE}") as file:
        meta = pq.read_metadata(file).metadata or {}
    return json.loads(meta.get(SUMMARY_KEY, b"{}"))


def read_lineage(store: Store, run_id: str) -> tuple[pa.Table, dict[str, Any]]:
    """A committed run's lineage table and summary."""
    data = store.read_bytes(f"runs/{run_id}/{LINEAGE}")
    table = pq.read_table(pa.BufferReader(data))
    meta = pq.read_metadata(pa.BufferReader(data)).metadata or {}
    return table, json.loads(meta.get(SUMMARY_KEY, b"{}"))


def read_rejects(store: Store, run_id: str) -> pa.Table:
    """A committed run's rejects table."""
    return pq.read_table(pa.BufferReader(store.read_bytes(f"runs/{run_id}/{REJECTS}")))
