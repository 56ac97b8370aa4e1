"""Incremental refresh: render only new and changed SKUs, against the latest committed run.

Every SKU's asset key already fingerprints what makes it (the row fields its templates and
params use, the chain, the season's overlay), so a refresh is a run with a new run id: rows
whose key exists are skipped before any model runs. The report compares the new lineage with
the job's latest committed lineage in the same store: unchanged (same key as before), changed
(the SKU was there with another key), new (the SKU was not there), removed (there before, not
in the manifest now).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import pyarrow.compute as pc

from factory.pipeline import RunResult, run_job
from factory.runs import Counts, list_runs, read_lineage, read_rejects
from factory.spec import Job
from factory.storage import Store


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


def latest_committed(store: Store, job_name: str) -> str | None:
    """The job's most recently committed run in this store."""
    runs = [(summary.get("committed_at", ""), run_id) for run_id, summary in list_runs(store)
            if summary.get("job") == job_name]
    return max(runs)[1] if runs else None


def refresh(job: Job, *, run_id: str | None = None, limit: int | None = None,
            on_progress: Callable[[Counts, int], None] | None = None) -> RefreshReport:
    """Run ``job`` as a refresh and report what changed since its latest committed run."""
    store = Store(job.output.uri, job.s3)
    previous = latest_committed(store, job.name)
    before: dict[str, str] = {}
    if previous is not None:
        table, _ = read_lineage(store, previous)
        table = table.filter(pc.equal(table["status"], "ok")).select(["sku", "output_key"])
        before = dict(zip(table["sku"].to_pylist(), table["output_key"].to_pylist()))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    job = job.with_overrides(run_id=run_id or f"{job.run_id}-refresh-{stamp}")
    result = run_job(job, limit=limit, on_progress=on_progress)
    lineage, _ = read_lineage(store, job.run_id)
    now_skus = set(lineage["sku"].to_pylist()) | set(read_rejects(store, job.run_id)["sku"].to_pylist())
    unchanged = changed = new = 0
    for sku, status, key in zip(lineage["sku"].to_pylist(), lineage["status"].to_pylist(),
                                lineage["output_key"].to_pylist()):
        if status != "ok":
            continue
        if sku not in before:
            new += 1
        elif before[sku] == key:
            unchanged += 1
        else:
            changed += 1
    removed = len(set(before) - now_skus)
    return RefreshReport(previous_run=previous, unchanged=unchanged, changed=changed, new=new,
                         removed=removed, result=result)
