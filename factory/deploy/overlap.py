"""Runs of one job that must not overlap: a lease in the job's output store, and waiting a turn.

Where a job's runs are Ray jobs on one long-lived cluster (``factory schedule run``, the
Kubernetes CronJob fallback), that cluster's Jobs API knows which are still running
(``factory.deploy.ray_jobs.running``), whoever submitted them. A KubeRay RayCronJob has no
such place: each firing is a RayJob on a Ray cluster of its own, which is gone when the run
ends, and no process outlives a firing. The output store is the one thing the firings share, so
each firing's driver takes ``RunLease`` there before it runs (``factory refresh --overlap``)
and gives it back when the run ends.

One folder per lease, numbered::

    schedules/<job>/_lease/<n>/held.json       create-only: holder, taken_at, expires_at
    schedules/<job>/_lease/<n>/released.json   create-only: the holder's run ended

The lease is free when the newest folder is released or expired. Taking it is the create-only
write of folder ``n + 1``: of the firings that found ``n`` free, exactly one creates it (on a
store without conditional writes, inside ``Store.commit_claim``); the others look again and
find the winner holding it. The expiry bounds a holder that died without giving the lease
back (a killed driver): the export sets it to the RayJob's ``activeDeadlineSeconds``, after
which KubeRay has stopped that run anyway. (``_lease`` cannot clash with a schedule's folder:
schedule names never start with ``_``.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from factory.spec.cron import Overlap
from factory.store.s3 import StorageError
from factory.store.storage import Store

log = logging.getLogger(__name__)

#: How often a queued firing looks again whether the run in its way has ended.
POLL_S = 30.0
_SEQ = re.compile(r"^\d{10}$")
_TRIES = 5


@dataclass(frozen=True)
class LeaseHolder:
    """A live lease: who holds it, since when, until when, and where it lies."""

    holder: str
    taken_at: datetime
    expires_at: datetime
    path: str

    def describe(self) -> str:
        return (f"{self.holder} (since {self.taken_at:%Y-%m-%d %H:%M} UTC, lease expires "
                f"{self.expires_at:%Y-%m-%d %H:%M} UTC; {self.path})")


class RunLease:
    """The one-run-at-a-time lease of a job in its output store (see the module docstring).

    Args:
        store: The job's output store.
        job_name: The job's name (``Job.name``): every run of the job shares one lease.
        expires_at: When a lease taken by this object stops counting, held or not.
        holder: Who takes it, as shown to the firings it keeps out; default: host and pid.
        clock: The current time, timezone-aware.
    """

    def __init__(self, store: Store, job_name: str, *, expires_at: datetime,
                 holder: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-._") or "x"
        self.store, self.prefix = store, f"schedules/{slug}/_lease"
        self.expires_at = expires_at.astimezone(timezone.utc)
        self.holder = holder or f"{socket.gethostname()} pid {os.getpid()}"
        self._clock = clock
        self._token = uuid.uuid4().hex  # tells this holder's record from a namesake's
        self._held: str | None = None

    @classmethod
    def for_seconds(cls, store: Store, job_name: str, ttl_s: float, *,
                    holder: str | None = None) -> RunLease:
        """A lease that expires ``ttl_s`` seconds from now."""
        now = datetime.now(timezone.utc)
        return cls(store, job_name, expires_at=now + timedelta(seconds=ttl_s), holder=holder)

    def current(self) -> LeaseHolder | None:
        """The live lease of the job (this object's own included), or None when it is free."""
        top = max((s for s in self.store.children(self.prefix) if _SEQ.match(s)), default=None)
        return self._live(top) if top else None

    def acquire(self) -> LeaseHolder | None:
        """Take the lease: None when taken (or already held by this object), else who holds it.

        Raises:
            StorageError: the store failed, or the lease changed hands on every try.
        """
        if self._held:
            return None
        for _ in range(_TRIES):
            top = max((s for s in self.store.children(self.prefix) if _SEQ.match(s)),
                      default=None)
            if top and (holder := self._live(top)):
                return holder
            seq = f"{int(top or 0) + 1:010d}"
            record = {"holder": self.holder, "token": self._token,
                      "taken_at": self._clock().astimezone(timezone.utc).isoformat(),
                      "expires_at": self.expires_at.isoformat()}
            with self.store.commit_claim(self.prefix):  # a no-op where creates are atomic
                won = self.store.put_if_absent(f"{self.prefix}/{seq}/held.json",
                                               json.dumps(record, indent=2).encode(),
                                               content_type="application/json")
            if won:
                self._held = seq
                log.info("took the run lease %s", self.store.path(f"{self.prefix}/{seq}"))
                return None
        raise StorageError(f"{self.store.path(self.prefix)}: the run lease changed hands on "
                           f"each of {_TRIES} tries")

    def release(self) -> None:
        """Give the lease back (nothing if this object does not hold it)."""
        if self._held is None:
            return
        record = {"released_at": self._clock().astimezone(timezone.utc).isoformat()}
        self.store.put_if_absent(f"{self.prefix}/{self._held}/released.json",
                                 json.dumps(record).encode(), content_type="application/json")
        self._held = None

    def _live(self, seq: str) -> LeaseHolder | None:
        folder = f"{self.prefix}/{seq}"
        if self.store.exists(f"{folder}/released.json"):
            return None
        try:
            record = json.loads(self.store.read_bytes(f"{folder}/held.json"))
        except FileNotFoundError:  # a local store can keep the folder of a create that failed
            return None
        expires = datetime.fromisoformat(record["expires_at"])
        if expires <= self._clock():
            return None
        return LeaseHolder(holder=record["holder"], expires_at=expires,
                           taken_at=datetime.fromisoformat(record["taken_at"]),
                           path=self.store.path(f"{folder}/held.json"))


def await_turn(in_the_way: Callable[[], list[str]], *, overlap: Overlap,
               sleep: Callable[[float], None] = time.sleep, poll_s: float = POLL_S,
               on_wait: Callable[[list[str]], None] | None = None) -> list[str]:
    """Wait for a run's turn; what is still in the way (empty: go ahead).

    Args:
        in_the_way: Names the runs of the job that are still running (or takes a lease and
            names its holder); empty when this run may go.
        overlap: ``allow`` goes at once without asking; ``skip`` asks once and returns what
            is in the way; ``queue`` asks every ``poll_s`` seconds until nothing is.
        sleep: Sleeps for the given seconds.
        poll_s: Seconds between two questions while queued.
        on_wait: Told what is in the way, once, when a queued run starts to wait.
    """
    if overlap == "allow":
        return []
    blockers = in_the_way()
    if not blockers or overlap == "skip":
        return blockers
    if on_wait is not None:
        on_wait(blockers)
    while blockers:
        sleep(poll_s)
        blockers = in_the_way()
    return []
