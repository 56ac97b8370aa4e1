"""What a webhook is told: the events a run's end raises, and each event's JSON body.

A run that commits raises ``committed``, then ``budget_exhausted`` when its budget deferred
rows and ``review`` when its QA gate flagged assets; a run that raises raises ``failed``. A
call that finds its run id already committed (an earlier run of the same inputs, or a
concurrent run that committed first) raises nothing: the driver whose commit made the run
sends its events, so a receiver hears of each committed run once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: The body's layout; a receiver can refuse one it does not know.
SCHEMA = 1
#: The most of a failure's message a body carries.
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class RunFacts:
    """What the events of one run's end report, as plain values (``factory.run.notified``
    fills it from the run's result, or from what a failed run knew).

    Attributes:
        job: the job's name.
        run_id: the run id; None when the run failed before it was derived.
        counts: ``manifest_rows``, ``assets``, ``written``, ``failed``, ``rejected``,
            ``deferred`` and ``review`` (empty for a failed run).
        usd: the run's dollars (``factory.spec.prices``), None where not priced.
        budget: the run summary's ``budget`` (``factory.cost.budget``), empty without one.
        qa: the run summary's ``qa`` (``factory.spec.qa``), empty without a gate.
        report: the run's HTML report (a path or URL), "" where none was written.
        lineage: the run's lineage table.
        output: the job's output URI.
        published: where the run's assets were published, if anywhere.
        wall_s: the run's seconds.
        already_committed: the run id had been committed before this call.
        error: why the run failed ("" when it did not).
    """

    job: str
    run_id: str | None
    counts: Mapping[str, int] = field(default_factory=dict)
    usd: float | None = None
    budget: Mapping[str, Any] = field(default_factory=dict)
    qa: Mapping[str, Any] = field(default_factory=dict)
    report: str = ""
    lineage: str = ""
    output: str = ""
    published: tuple[str, ...] = ()
    wall_s: float | None = None
    already_committed: bool = False
    error: str = ""


def run_events(facts: RunFacts) -> tuple[str, ...]:
    """The events a finished run raises (``failed`` is raised where a run raises)."""
    if facts.already_committed:
        return ()
    events = ["committed"]
    if facts.budget.get("exhausted"):
        events.append("budget_exhausted")
    if int(facts.qa.get("review") or 0) > 0:
        events.append("review")
    return tuple(events)


def event_body(event: str, facts: RunFacts, *, now: datetime | None = None) -> dict[str, Any]:
    """The JSON body of ``event`` (every key always present; null where it does not apply).
    ``timestamp`` is when the event was raised (UTC); the signature has its own."""
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    failed = event == "failed"
    return {
        "schema": SCHEMA,
        "event": event,
        "job": facts.job,
        "run_id": facts.run_id,
        "timestamp": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "counts": None if failed else dict(facts.counts),
        "usd": facts.usd,
        "budget": dict(facts.budget) or None,
        "qa": dict(facts.qa) or None,
        "report": facts.report or None,
        "lineage": facts.lineage or None,
        "output": facts.output or None,
        "published": list(facts.published),
        "wall_s": facts.wall_s,
        "error": (facts.error[:MAX_ERROR_CHARS] or None) if failed else None,
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The body's bytes as sent and signed: compact JSON, keys sorted, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8")
