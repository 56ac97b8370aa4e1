"""Incremental refresh: render only new and changed assets, against the latest committed run.

Every asset's key already fingerprints what makes it (the row fields its templates and params
use, the chain, the season's overlay), so a refresh is a run like any other: its run id is
derived from its inputs (or given), and rows whose key exists are skipped before any model
runs. If nothing changed since the job's latest committed run, the derived run id is that run's
and nothing is rendered. The report compares the new lineage with the job's latest committed
lineage in the same store, per ``(sku, variant)`` (and ``channel`` where the job has channels):
unchanged (same key as before), changed (the
pair was there with another key), new (not there before), removed (there before, not in the
manifest now).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyarrow.compute as pc

from factory.run.pipeline import run_job
from factory.run.result import RunResult, WorkCount
from factory.store.run_tables import list_runs, read_lineage, read_rejects
from factory.run.recorder import Counts
from factory.spec.job import Job
from factory.store.storage import Store


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh found and did."""

    previous_run: str | None
    unchanged: int
    changed: int
    new: int
    removed: int
    result: RunResult

    def line(self) -> str:
        c = self.result.counts
        since = f"since run {self.previous_run}" if self.previous_run else "(no earlier run)"
        return (f"refresh {since}: {self.unchanged} unchanged, {self.changed} changed, "
                f"{self.new} new, {self.removed} removed; rendered {c.written}, "
                f"{c.failed} failed, {c.rejected} rejected")


def _units(table) -> list[tuple[str, ...]]:
    """What one asset is: ``(sku, variant)``, and its channel where the run had channels."""
    columns = [table["sku"].to_pylist(), table["variant"].to_pylist()]
    if "channel" in table.column_names:
        columns.append(table["channel"].to_pylist())
    return list(zip(*columns))


def latest_committed(store: Store, job_name: str) -> str | None:
    """The job's most recently committed run in this store."""
    runs = [(summary.get("committed_at", ""), run_id) for run_id, summary in list_runs(store)
            if summary.get("job") == job_name]
    return max(runs)[1] if runs else None


def refresh(job: Job, *, run_id: str | None = None, limit: int | None = None,
            on_progress: Callable[[Counts, int], None] | None = None,
            on_count: Callable[[WorkCount], None] | None = None) -> RefreshReport:
    """Run ``job`` as a refresh and report what changed since its latest committed run."""
    store = Store(job.output.uri, job.s3)
    previous = latest_committed(store, job.name)
    before: dict[tuple[str, str], str] = {}
    if previous is not None:
        table, _ = read_lineage(store, previous)
        table = table.filter(pc.equal(table["status"], "ok"))
        before = dict(zip(_units(table), table["output_key"].to_pylist()))
    if run_id:
        job = job.with_overrides(run_id=run_id)
    result = run_job(job, limit=limit, on_progress=on_progress, on_count=on_count,
                     previous_run=previous)
    lineage, _ = read_lineage(store, result.run_id)
    rejected_skus = set(read_rejects(store, result.run_id)["sku"].to_pylist())
    now = set()
    unchanged = changed = new = 0
    for unit, status, key in zip(_units(lineage), lineage["status"].to_pylist(),
                                 lineage["output_key"].to_pylist()):
        now.add(unit)
        if status != "ok":
            continue
        if unit not in before:
            new += 1
        elif before[unit] == key:
            unchanged += 1
        else:
            changed += 1
    removed = sum(1 for unit in before if unit not in now and unit[0] not in rejected_skus)
    return RefreshReport(previous_run=previous, unchanged=unchanged, changed=changed, new=new,
                         removed=removed, result=result)
