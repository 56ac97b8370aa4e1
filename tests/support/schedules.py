"""Fakes for the scheduler's tests: a schedule as the spec gives it, and a clock to move."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Sched:
    """A schedule of a job spec (``ScheduleLike``)."""

    name: str
    cron: str
    season: str | None = None
    overlap: str = "skip"


class Clock:
    """``now`` until moved: ``advance(minutes=5)``."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
