"""Seasons and schedules of a job spec: date windows that overlay a job's prompt, palette
and LoRA (``Job.with_season``), and cron schedules that submit its refreshes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import date
from typing import Any

from pydantic import Field

from factory.core.strict import Strict
from factory.spec.cron import Overlap
from factory.spec.templating import TemplateError, template_fields
from stages.base import StagePlan

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class SeasonSpec(Strict):
    """A seasonal overlay: a date window and what changes inside it."""

    name: str = Field(pattern=_NAME)
    start: str = Field(pattern=r"^\d{2}-\d{2}$", description="MM-DD, inclusive")
    end: str = Field(pattern=r"^\d{2}-\d{2}$", description="MM-DD, inclusive; may wrap the year")
    prompt: str = ""
    palette: list[str] | None = None
    lora: str | None = None
    lora_scale: float | None = Field(None, ge=0, le=2)

    def contains(self, day: date) -> bool:
        """Whether ``day`` falls in the window (a window may wrap over New Year)."""
        key = (day.month, day.day)
        start, end = _month_day(self.start), _month_day(self.end)
        return start <= key <= end if start <= end else key >= start or key <= end


class ScheduleSpec(Strict):
    """A cron schedule that submits a refresh of this job.

    ``overlap`` says what a due slot does while a run of the same job (from any schedule, or
    submitted by hand) is still running: ``skip`` it, ``queue`` it until that run ends, or
    ``allow`` a second run beside it (``factory.deploy.schedule`` has the details).
    """

    name: str = Field(pattern=_NAME)
    cron: str
    season: str | None = None
    overlap: Overlap = "skip"


def check_seasons(seasons: Sequence[SeasonSpec], schedules: Sequence[ScheduleSpec],
                  problems: list[str]) -> None:
    """Check ``seasons:`` (unique names, real dates, templates, palettes) and ``schedules:``
    (cron lines, seasons they name); ``seasons[i].key: message`` lines go to ``problems``."""
    from factory.spec.cron import validate_cron
    from stages.colour import parse_palette

    names = [s.name for s in seasons]
    for i, season in enumerate(seasons):
        where = f"seasons[{i}]"
        if names.count(season.name) > 1:
            problems.append(f"{where}.name: season '{season.name}' is defined twice")
        for key in ("start", "end"):
            try:
                month, day = _month_day(getattr(season, key))
                date(2024, month, day)  # a leap year, so 02-29 is a valid day
            except ValueError:
                problems.append(f"{where}.{key}: '{getattr(season, key)}' is not a MM-DD date")
        try:
            template_fields(season.prompt)
        except TemplateError as exc:
            problems.append(f"{where}.prompt: {exc}")
        for j, colour in enumerate(season.palette or []):
            try:
                parse_palette([colour])
            except ValueError as exc:
                problems.append(f"{where}.palette[{j}]: {exc}")
    for i, schedule in enumerate(schedules):
        if why := validate_cron(schedule.cron):
            problems.append(f"schedules[{i}].cron: '{schedule.cron}': {why}")
        if schedule.season is not None and schedule.season not in names + ["none"]:
            problems.append(f"schedules[{i}].season: no season named '{schedule.season}'")
    if len({s.name for s in schedules}) != len(schedules):
        problems.append("schedules: schedule names must be unique")


def season_stage(plan: StagePlan, season: SeasonSpec) -> StagePlan:
    """``plan`` inside ``season``: its palette, LoRA and LoRA scale where the stage has them."""
    update: dict[str, Any] = {}
    if season.palette and "palette" in type(plan.params).model_fields:
        update["palette"] = tuple(season.palette)
    if plan.card.kind == "lora" and season.lora:
        update["lora"] = season.lora
    if plan.card.kind == "lora" and season.lora_scale is not None:
        update["adapter_scale"] = season.lora_scale
    if not update:
        return plan
    params = type(plan.params).model_validate({**plan.params.model_dump(), **update})
    return replace(plan, params=params)


def _month_day(text: str) -> tuple[int, int]:
    month, day = text.split("-")
    return int(month), int(day)
