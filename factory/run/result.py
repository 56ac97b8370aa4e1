"""What a run reports: its rows counted by fate before the stages start (``WorkCount``), the
result after (``RunResult``), and the result of a run id that is already committed
(``committed_result``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from factory.notify.delivery import Notification
from factory.run.identity import RunInputs, RunInputsMismatch
from factory.run.recorder import Counts
from factory.spec.job import Job
from factory.store.run_tables import read_summary
from factory.store.storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkCount:
    """What a run will do: its rows counted by fate before any model loads.

    Attributes:
        run_id: the run's id (explicit, or derived from ``inputs``).
        inputs: everything that decides the run's work.
        rows: manifest rows the run covers.
        rejected: rows rejected by validation.
        existing: valid rows whose asset is already in the store (not rendered again).
        to_render: valid rows that go through the stages.
        skipped: a catalog export's rows that are not manifest rows, by reason (not in
            ``rows``: image-only rows, products filtered out by status).
    """

    run_id: str
    inputs: RunInputs
    rows: int
    rejected: int
    existing: int
    to_render: int
    skipped: Mapping[str, int] = field(default_factory=dict)

    def line(self) -> str:
        skipped = "".join(f"; {n} export rows skipped: {why}"
                          for why, n in sorted(self.skipped.items()))
        budget = (f"; budget ${self.inputs.budget_usd} (rows past it are deferred)"
                  if self.inputs.budget_usd is not None else "")
        return (f"plan for run {self.run_id}: {self.rows} rows: {self.rejected} rejected, "
                f"{self.existing} already in the store, {self.to_render} to render{skipped}"
                f"{budget}")


@dataclass(frozen=True)
class RunResult:
    """What a run reports: counts, paths, and whether it was committed before this call.

    ``already_committed`` is True when the run id had been committed (by an earlier call, or
    by a concurrent run of the same id that committed first): the counts are that commit's.
    """

    run_id: str
    manifest_rows: int
    counts: Counts
    wall_s: float
    output_uri: str
    lineage_path: str
    rejects_path: str
    already_committed: bool = False
    write_mode: str = ""
    report_path: str = ""
    #: the summary's ``cost``: dollars and device seconds per stage (``factory.spec.prices``)
    cost: Mapping[str, Any] = field(default_factory=dict)
    #: the summary's ``budget``: the cap, dollars spent, the estimate used (``factory.cost.budget``)
    budget: Mapping[str, Any] = field(default_factory=dict)
    #: the summary's ``qa``: assets flagged for review, re-renders, their dollars (``factory.spec.qa``)
    qa: Mapping[str, Any] = field(default_factory=dict)
    #: the webhooks told of the run's end, each delivered or not (``factory.run.notified``);
    #: sent after the commit, so not in the run's summary
    notifications: tuple[Notification, ...] = ()
    #: the files ``publish:`` wrote after the commit (``factory.run.published``), or found
    #: written before with the same content; not in the run's summary
    published: tuple[str, ...] = ()
    #: the publish's warnings (rows without alt text, images past Merchant Center's limit)
    publish_warnings: tuple[str, ...] = ()
    #: why ``publish:`` failed ("" when it did not); the run stays committed
    publish_error: str = ""

    @property
    def assets_per_s(self) -> float:
        return self.counts.assets / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        c = self.counts
        return {"run_id": self.run_id, "manifest_rows": self.manifest_rows, "assets": c.assets,
                "written": c.written, "failed": c.failed, "rejected": c.rejected,
                "deferred": c.deferred, "failures_by_stage": c.failures_by_stage,
                "wall_s": round(self.wall_s, 3),
                "assets_per_s": round(self.assets_per_s, 3), "write_mode": self.write_mode,
                **({"cost_usd": self.cost.get("usd"), "cost": dict(self.cost)} if self.cost
                   else {}),
                **({"routes": c.routes_summary()} if c.route_assets else {}),
                **({"budget": dict(self.budget)} if self.budget else {}),
                **({"qa": dict(self.qa)} if self.qa else {})}


def committed_result(job: Job, run_id: str, inputs: RunInputs, store: Store,
                     paths: dict[str, str]) -> RunResult:
    """The result of ``run_id``, committed before this call (by an earlier run of the same
    inputs, or a concurrent run that committed first), from its summary.

    Raises:
        RunInputsMismatch: the committed run was made from other inputs.
    """
    summary = read_summary(store, run_id)
    if job.run_id is not None or summary.get("inputs") is not None:
        differences = inputs.differences(summary.get("inputs"))
        if differences:
            raise RunInputsMismatch(run_id, differences)
    log.warning("run %s is already committed; nothing to do", run_id)
    counts = Counts(assets=summary.get("assets", 0), written=summary.get("written", 0),
                    failed=summary.get("failed", 0), rejected=summary.get("rejected", 0),
                    deferred=summary.get("deferred", 0),
                    failures_by_stage=summary.get("failures_by_stage", {}),
                    channels=len(summary.get("channels") or ()) or 1)
    cost = summary.get("cost") or {}
    from factory.run.report import report_key

    report = report_key(run_id)
    return RunResult(run_id=run_id, manifest_rows=summary.get("manifest_rows", 0),
                     counts=counts, wall_s=float(summary.get("wall_s", 0.0)),
                     output_uri=job.output.uri, already_committed=True,
                     write_mode=summary.get("write_mode", ""),
                     report_path=store.path(report) if store.exists(report) else "", cost=cost,
                     budget=summary.get("budget") or {}, qa=summary.get("qa") or {},
                     **paths)
