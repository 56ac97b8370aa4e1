"""Cron schedules for jobs: which slot is due, fire it once, remember the fire in the store.

``Scheduler`` runs in one long-lived process (``factory schedule run``); ``factory.deploy.kubernetes``
writes the same schedules as Kubernetes objects instead. Times are UTC; slots have minute
resolution (5-field cron or an ``@`` macro).

Catch-up policy: missed slots are coalesced. After downtime a schedule fires ONCE, for the latest
missed slot, as soon as the scheduler is back (a refresh re-renders only what changed, so one run
per missed slot buys nothing). A slot at or before the last recorded fire never fires again.
Nothing older than the minute in which a schedule (or its current cron expression) was first
seen fires: adding ``0 2 * * *`` at 14:00 means "from tonight", not "now".

State lives in the job's output store, so a scheduler restarted elsewhere carries on::

    schedules/<job>/<schedule>/<slot>/fired.json      one create-only object per fire
    schedules/<job>/<schedule>/<slot>/skipped.json    one per slot skipped for an overlap
    schedules/<job>/<schedule>/seen-<cron hash>.json  when this cron expression was first seen

Create-only objects, not one ``state.json`` replaced per fire: a replace is read-modify-write, so
two schedulers (a restart overlapping the old process) could lose history or move ``last_fired``
backwards; a conditional create has exactly one winner. The last fire is the newest slot folder
(folders, because ``Store.children`` lists S3 common prefixes, not objects).

Per due slot: skip it if its marker exists; submit with a run id derived from the slot (a
duplicate submission counts as success); then create the marker. A crash in between re-submits
the same id on restart, which Ray refuses as a duplicate: no fire is lost, each is recorded once.
(A Ray head that lost its job table would run it again; a rerun of a run id resumes that run.)

Overlap: a schedule's ``overlap`` says what its due slot does while a run of the same job is
still running. Any run of the job counts, fired by any of its schedules or submitted by hand:
every run of a job holds the same GPUs and writes the same output. ``running(job_name)`` names
those runs; ``factory schedule run`` asks the Ray Jobs API (``ray_jobs.running``: submissions
tagged with the job's name, PENDING or RUNNING), which every driver and scheduler submitting to
that cluster sees alike. The slot's own run id does not count: a crash between submit and
marker finds its own run running, and records the fire as above.

- ``skip`` (the default): nothing is submitted; the slot is recorded as skipped (a create-only
  ``skipped.json`` beside where ``fired.json`` would be, so it counts as handled: it is never
  retried, by this process or a restarted one, and ``history`` shows it), logged once and
  counted (``factory_schedule_skipped``, ``factory.core.metrics.SCHEDULER_METRICS``).
- ``queue``: nothing is recorded and the slot stays due; each tick (at most ``max_sleep_s``
  apart) asks again, and submits once the run in the way has ended. A later slot that comes
  due while one waits takes its place (the catch-up policy above: one run, for the latest
  slot, never one per waiting slot). Nothing of the wait is stored, nor needs to be: a
  restarted scheduler finds the same slot due and waits for the same run.
- ``allow``: submitted regardless. Each slot's run has its own run id, and every asset's key
  is derived from its work, so two runs at once commit separately and hold the same assets.

Two schedules of one job due in the same tick fire in spec order: the second finds the first's
run PENDING. The check and the submission are two requests, so two schedulers submitting to
one cluster at once (which a deployment should not have) could both pass it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from croniter import croniter

from factory.core import metrics
from factory.spec.cron import MACROS, OVERLAPS, Overlap, validate_cron
from factory.store.storage import Store

log = logging.getLogger(__name__)

__all__ = ["MACROS", "AlreadySubmitted", "Fire", "Scheduler", "Skip", "due_slot", "jobs_running",
           "jobs_submitter", "run_id_for", "validate_cron"]

SLOT_FORMAT = "%Y%m%dT%H%MZ"
_SLOT = re.compile(r"^\d{8}T\d{4}Z$")

#: ``submit(schedule_name, run_id, season, slot)``; raises ``AlreadySubmitted`` for a duplicate.
SubmitFn = Callable[[str, str, str | None, datetime], None]
#: ``running(job_name)``: the run ids of the job's runs that are still running (or pending).
RunningFn = Callable[[str], list[str]]


class AlreadySubmitted(Exception):
    """A submit function's answer when ``run_id`` was submitted before: the fire happened."""


class ScheduleLike(Protocol):
    """What the scheduler reads from a schedule (``factory.spec.job.ScheduleSpec`` has it)."""

    @property
    def name(self) -> str: ...
    @property
    def cron(self) -> str: ...
    @property
    def season(self) -> str | None: ...
    @property
    def overlap(self) -> Overlap: ...


@dataclass(frozen=True)
class Fire:
    """One slot this process submitted and recorded."""

    schedule: str
    slot: datetime
    run_id: str
    season: str | None = None


@dataclass(frozen=True)
class Skip:
    """One slot this process did not submit: runs of the job were in the way.

    ``held`` is True for ``overlap: queue`` (still due: submitted once they end), False for
    ``skip`` (recorded as skipped, never submitted).
    """

    schedule: str
    slot: datetime
    run_id: str
    running: tuple[str, ...]
    held: bool = False


def due_slot(cron: str, last_fired: datetime | None, now: datetime, *,
             first_run: datetime | None = None) -> datetime | None:
    """The slot to fire now: the latest ``s`` with ``last_fired < s <= now``, or None.

    Missed slots are coalesced: only the latest is returned, never one at or before
    ``last_fired``.

    Args:
        cron: A cron expression that ``validate_cron`` accepts, read in UTC.
        last_fired: The slot of the last recorded fire, or None.
        now: The current time; every datetime here must be timezone-aware.
        first_run: When the schedule (with this cron) was first seen. Slots before its minute
            are history and never returned; without it or ``last_fired``, the latest slot up
            to ``now`` is due.

    Returns:
        The due slot in UTC, or None.
    """
    now = _utc(now)
    # get_prev is strictly earlier than its start: start a second past the minute so that a
    # slot equal to ``now`` is due.
    slot = croniter(cron, now.replace(second=0, microsecond=0) + timedelta(seconds=1)
                    ).get_prev(datetime).astimezone(timezone.utc).replace(fold=0)
    if last_fired is not None and slot <= _utc(last_fired):
        return None
    if first_run is not None and slot < _utc(first_run).replace(second=0, microsecond=0):
        return None
    return slot


def run_id_for(job_name: str, schedule: str, slot: datetime) -> str:
    """The run id (and Ray submission id) of one slot: the same on every machine and retry."""
    return f"{_slug(job_name)[:64]}-{_slug(schedule)[:40]}-{_utc(slot):{SLOT_FORMAT}}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Scheduler:
    """Fires each schedule's due slot once; all state in ``store`` (see the module docstring).

    Args:
        store: The job's output store; fires are recorded under ``schedules/<job>/``.
        job_name: The job's name (``Job.name``).
        schedules: The job's schedules (``Job.schedules``), names unique.
        submit: ``submit(schedule_name, run_id, season, slot)``; raises ``AlreadySubmitted``
            when ``run_id`` was submitted before, anything else when the fire failed.
        running: ``running(job_name)``: run ids of the job still running anywhere (for
            ``overlap``); anything it raises fails the tick's check, retried on the next.
        clock: The current time, timezone-aware.
        sleep: Sleeps for the given seconds (``run`` only).
        max_sleep_s: The longest ``run`` sleeps between ticks.
    """

    def __init__(self, *, store: Store, job_name: str, schedules: Sequence[ScheduleLike],
                 submit: SubmitFn, running: RunningFn, clock: Callable[[], datetime] = _utcnow,
                 sleep: Callable[[float], None] = time.sleep, max_sleep_s: float = 60.0) -> None:
        problems = [f"{s.name}: {why}" for s in schedules if (why := validate_cron(s.cron))]
        problems += [f"{s.name}: overlap '{s.overlap}' is not one of {', '.join(OVERLAPS)}"
                     for s in schedules if s.overlap not in OVERLAPS]
        if len({_slug(s.name) for s in schedules}) != len(schedules):
            problems.append("schedule names must be unique")
        if problems:
            raise ValueError(f"job {job_name}: bad schedules: " + "; ".join(problems))
        self.store, self.job_name, self.schedules = store, job_name, tuple(schedules)
        self._submit, self._running, self._clock, self._sleep = submit, running, clock, sleep
        self._max_sleep_s = max_sleep_s
        self._last: dict[str, datetime | None] = {}
        self._first: dict[str, datetime] = {}
        self._held: dict[str, datetime] = {}  # schedule -> the queued slot already logged
        #: ``schedule: error`` for each schedule the last ``tick`` could not check or fire.
        self.last_errors: list[str] = []
        #: The slots the last ``tick`` skipped or held because runs of the job were running.
        self.last_skipped: list[Skip] = []

    def tick(self) -> list[Fire]:
        """Check every schedule once and fire what is due; a failure is logged and retried."""
        now = _utc(self._clock())
        fired, self.last_errors, self.last_skipped = [], [], []
        for schedule in self.schedules:
            try:
                fire = self._fire_if_due(schedule, now)
            except Exception as exc:  # noqa: BLE001 - not recorded, so the next tick retries it
                log.error("schedule %s of job %s: not fired, retrying on the next tick: %s",
                          schedule.name, self.job_name, exc,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                self.last_errors.append(f"{schedule.name}: {exc}")
                continue
            if fire is not None:
                fired.append(fire)
        return fired

    def run(self, *, stop: Callable[[], bool] | None = None) -> None:
        """Tick, then sleep until the next slot (at most ``max_sleep_s``), until ``stop()``."""
        while stop is None or not stop():
            self.tick()
            self._sleep(self.seconds_to_next_slot())

    def seconds_to_next_slot(self) -> float:
        """Seconds until the next slot of any schedule, within [0.05, max_sleep_s]."""
        now = _utc(self._clock())
        waits = [(croniter(s.cron, now).get_next(datetime) - now).total_seconds()
                 for s in self.schedules]
        return min(max(min(waits, default=self._max_sleep_s), 0.05), self._max_sleep_s)

    def history(self, schedule: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` recorded slots of ``schedule``, newest first: fired and skipped
        (``outcome``), each with its slot and run id."""
        return history(self.store, self.job_name, schedule, limit=limit)

    def state(self, schedule: str, *, limit: int = 20) -> dict[str, Any]:
        """``{"last_fired", "run_id", "history"}`` for ``schedule``, derived from its records."""
        records = self.history(schedule, limit=limit)
        fires = [r for r in records if r["outcome"] == "fired"]
        return {"last_fired": fires[0]["slot"] if fires else None,
                "run_id": fires[0]["run_id"] if fires else None, "history": records}

    def _fire_if_due(self, schedule: ScheduleLike, now: datetime) -> Fire | None:
        name, prefix = schedule.name, self._prefix(schedule.name)
        if name not in self._last:
            newest = self.history(name, limit=1)
            self._last[name] = datetime.fromisoformat(newest[0]["slot"]) if newest else None
        slot = due_slot(schedule.cron, self._last[name], now,
                        first_run=self._first_seen(schedule, now))
        if slot is None:
            return None
        key = f"{prefix}/{slot:{SLOT_FORMAT}}/fired.json"
        skipped_key = f"{prefix}/{slot:{SLOT_FORMAT}}/skipped.json"
        if self.store.exists(key) or self.store.exists(skipped_key):  # an earlier process, a peer
            self._last[name] = slot
            return None
        run_id = run_id_for(self.job_name, name, slot)
        if schedule.overlap != "allow" and self._in_the_way(schedule, slot, run_id, now):
            return None
        self._held.pop(name, None)
        try:
            self._submit(name, run_id, schedule.season, slot)
        except AlreadySubmitted:
            log.info("%s was submitted before (a restart after a crash?); recording it", run_id)
        record = {"job": self.job_name, "schedule": name, "cron": schedule.cron,
                  "season": schedule.season, "slot": slot.isoformat(), "run_id": run_id,
                  "outcome": "fired", "fired_at": now.isoformat()}
        wrote = self.store.put_if_absent(key, json.dumps(record, indent=2).encode(),
                                         content_type="application/json")
        self._last[name] = slot
        if not wrote:
            return None
        log.info("schedule %s of job %s: fired %s for slot %s", name, self.job_name, run_id, slot)
        return Fire(schedule=name, slot=slot, run_id=run_id, season=schedule.season)

    def _in_the_way(self, schedule: ScheduleLike, slot: datetime, run_id: str,
                    now: datetime) -> bool:
        """Whether runs of the job keep ``slot`` from firing now; records and logs a skip."""
        name = schedule.name
        # the slot's own run id: submitted before a crash, its marker not yet written
        busy = tuple(r for r in self._running(self.job_name) if r != run_id)
        if not busy:
            return False
        shown = ", ".join(busy)
        if schedule.overlap == "queue":
            self.last_skipped.append(Skip(name, slot, run_id, busy, held=True))
            if self._held.get(name) != slot:  # one line per held slot, not one per tick
                self._held[name] = slot
                log.warning("schedule %s of job %s: slot %s held until %s ends (overlap: "
                            "queue)", name, self.job_name, f"{slot:%Y-%m-%d %H:%M}", shown)
            return True
        record = {"job": self.job_name, "schedule": name, "cron": schedule.cron,
                  "season": schedule.season, "slot": slot.isoformat(), "run_id": run_id,
                  "outcome": "skipped", "skipped_at": now.isoformat(), "running": list(busy)}
        key = f"{self._prefix(name)}/{slot:{SLOT_FORMAT}}/skipped.json"
        wrote = self.store.put_if_absent(key, json.dumps(record, indent=2).encode(),
                                         content_type="application/json")
        self._last[name] = slot
        if wrote:  # a peer that recorded it first has logged and counted it
            self.last_skipped.append(Skip(name, slot, run_id, busy))
            log.warning("schedule %s of job %s: skipped slot %s, %s still running (overlap: "
                        "skip)", name, self.job_name, f"{slot:%Y-%m-%d %H:%M}", shown)
            metrics.scheduler_inc("factory_schedule_skipped",
                                  {"job_name": self.job_name, "schedule": name})
        return True

    def _first_seen(self, schedule: ScheduleLike, now: datetime) -> datetime:
        cron_hash = hashlib.sha256(schedule.cron.strip().encode()).hexdigest()[:12]
        key = f"{self._prefix(schedule.name)}/seen-{cron_hash}.json"
        if key not in self._first:
            record = {"cron": schedule.cron, "first_seen": now.isoformat()}
            self.store.put_if_absent(key, json.dumps(record).encode(),
                                     content_type="application/json")  # first writer wins
            seen = json.loads(self.store.read_bytes(key))["first_seen"]
            self._first[key] = datetime.fromisoformat(seen)
        return self._first[key]

    def _prefix(self, schedule: str) -> str:
        return _prefix(self.job_name, schedule)


def history(store: Store, job_name: str, schedule: str, *,
            limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` recorded slots of one schedule, newest first.

    Each record has ``outcome`` (``fired`` or ``skipped``), ``slot`` and ``run_id`` (the id
    the slot's run has, or would have had); a skipped one also names the runs in the way.
    """
    prefix = _prefix(job_name, schedule)
    records = []
    for slot in sorted(filter(_SLOT.match, store.children(prefix)), reverse=True):
        if len(records) == limit:
            break
        for name, outcome in (("fired.json", "fired"), ("skipped.json", "skipped")):
            key = f"{prefix}/{slot}/{name}"
            if store.exists(key):  # a local crash can leave an empty slot folder
                records.append({"outcome": outcome, **json.loads(store.read_bytes(key))})
                break
    return records


def _prefix(job_name: str, schedule: str) -> str:
    return f"schedules/{_slug(job_name)}/{_slug(schedule)}"


def jobs_running(address: str) -> RunningFn:
    """A ``running`` for ``Scheduler``: the job's runs PENDING or RUNNING on the cluster."""
    jobs = importlib.import_module("factory.deploy.ray_jobs")  # late: this module needs no Ray

    def running(job_name: str) -> list[str]:
        return jobs.running(job_name, address=address)

    return running


def jobs_submitter(job_path: str, *, address: str | None, working_dir: str = ".") -> SubmitFn:
    """A ``submit`` for ``Scheduler`` that submits refresh runs through ``factory.deploy.ray_jobs``."""
    jobs = importlib.import_module("factory.deploy.ray_jobs")  # late: this module needs no Ray

    def submit(schedule: str, run_id: str, season: str | None, slot: datetime) -> None:
        try:
            jobs.submit(job_path, address=address, run_id=run_id, season=season, refresh=True,
                        working_dir=working_dir)
        except jobs.JobsError as exc:
            # jobs.submit has no error type of its own for a duplicate; its message says so
            if "already submitted" in str(exc) or "already exists" in str(exc):
                raise AlreadySubmitted(run_id) from exc
            raise

    return submit


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no timezone; schedules need aware datetimes (UTC)")
    return moment.astimezone(timezone.utc)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "x"

