"""A run's end announced to the job's webhooks (``notify:``; ``factory.notify``).

``run_job`` hands a job with ``notify:`` to ``run_notified``, so every driver of a run (``factory
run`` and ``refresh`` here, a Ray Jobs submission or a schedule on a cluster) sends the same
events. Order and bounds:

1. The secrets are read first: a ``secret_env`` that is not set stops the run before any work
   (``NotifySecretMissing``, naming the variable).
2. The run runs, and commits, as it would without ``notify:``.
3. Its result raises events (``factory.notify.body.run_events``), sent after the commit and
   within the notify deadline; a run that raised sends ``failed`` and raises again.

A notification that cannot be delivered is logged and recorded on the result
(``RunResult.notifications``); it never fails, blocks or undoes the commit.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from factory.notify.body import RunFacts, event_body, run_events
from factory.notify.delivery import Notification, Notifier
from factory.run.result import RunResult
from factory.spec.job import Job

log = logging.getLogger(__name__)


def run_notified(job: Job, run: Callable[[], RunResult]) -> RunResult:
    """``run()`` (the run of ``job``), with its end announced to ``job.notify``'s webhooks.

    Raises:
        NotifySecretMissing: a webhook's ``secret_env`` is not set; nothing ran.
        BaseException: whatever ``run()`` raised, after ``failed`` was sent.
    """
    if job.notify is None:
        return run()
    notifier = Notifier(job.notify, job.notify.secrets())
    try:
        result = run()
    except BaseException as exc:
        facts = RunFacts(job=job.name, run_id=getattr(exc, "run_id", None) or job.run_id,
                         output=job.output.uri, error=failure_text(exc))
        _send(notifier, facts, ("failed",))
        raise
    facts = run_facts(job, result)
    sent = _send(notifier, facts, run_events(facts))
    return replace(result, notifications=tuple(result.notifications) + sent)


def run_facts(job: Job, result: RunResult) -> RunFacts:
    """What a finished run's events report, from its result."""
    c = result.counts
    usd = result.cost.get("usd")
    return RunFacts(
        job=job.name, run_id=result.run_id,
        counts={"manifest_rows": result.manifest_rows, "assets": c.assets,
                "written": c.written, "failed": c.failed, "rejected": c.rejected,
                "deferred": c.deferred, "review": int(result.qa.get("review") or 0)},
        usd=float(usd) if usd is not None else None, budget=dict(result.budget),
        qa=dict(result.qa), report=result.report_path, lineage=result.lineage_path,
        output=result.output_uri,
        # ``published`` is set by the publish step where a job publishes
        published=tuple(getattr(result, "published", ()) or ()),
        wall_s=round(result.wall_s, 3), already_committed=result.already_committed)


def failure_text(exc: BaseException) -> str:
    """A failed run's reason in one line: the exception's type and its last line (Ray wraps
    a task's error in its traceback; the last line names the cause)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _send(notifier: Notifier, facts: RunFacts, events: tuple[str, ...]
          ) -> tuple[Notification, ...]:
    if not events:
        return ()
    try:
        return notifier.send([(event, event_body(event, facts)) for event in events])
    except Exception as exc:  # noqa: BLE001 - a notification never changes the run's outcome
        log.warning("run %s: notifications not sent: %s", facts.run_id, exc)
        return ()
