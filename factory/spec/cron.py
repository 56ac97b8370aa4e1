"""Cron expressions that both the factory's scheduler and Kubernetes accept, and the overlap
policies a schedule may name.

A leaf module (croniter only): the spec checks its schedules with it, and the scheduler
(``factory.deploy.schedule``) and the Kubernetes export (``factory.deploy.kubernetes``) use it, so none of
them has to import another for it.
"""

from __future__ import annotations

import re
from typing import Literal

from croniter import croniter

#: What a firing does while a run of the same job is still running: ``skip`` records the slot
#: as skipped and submits nothing, ``queue`` holds it until that run ends, ``allow`` submits.
Overlap = Literal["skip", "queue", "allow"]
OVERLAPS: tuple[Overlap, ...] = ("skip", "queue", "allow")

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_NAMES = re.compile(r"(?i)\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|"
                    r"sun|mon|tue|wed|thu|fri|sat)\b")


def validate_cron(expr: str) -> str | None:
    """None if ``expr`` is a cron expression both croniter and Kubernetes accept, else why not.

    Only 5 fields: run ids have minute resolution, and a Kubernetes CronJob takes no seconds
    field, nor croniter's ``L``, ``W`` and ``#`` extensions.
    """
    text = expr.strip() if isinstance(expr, str) else ""
    if not text:
        return "empty cron expression"
    if text.startswith("@"):
        return None if text in MACROS else f"unknown macro; use one of {', '.join(MACROS)}"
    if len(text.split()) != 5:
        return (f"expected 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(text.split())}")
    if re.search(r"[A-Za-z#]", _NAMES.sub("", text)):
        return "uses a croniter extension (L, W, #, H) that a Kubernetes CronJob rejects"
    try:
        croniter(text)
    except (ValueError, KeyError) as exc:  # CroniterError is a ValueError
        return f"not a valid cron expression: {exc}"
    if not croniter.is_valid(text, strict=True):
        return "matches no date (such as 31 February)"
    return None
