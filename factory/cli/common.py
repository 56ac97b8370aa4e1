"""What the ``factory`` commands share: loading a job spec for a command, ``--budget``, and
``echo``, which prints user text (SKUs, reasons, errors, names read from a store) with its
control characters escaped."""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import click

from factory.cli.exits import EXIT_SPEC

if TYPE_CHECKING:
    from factory.spec.job import Job


def echo(message: object = "", *, err: bool = False, newlines: bool = True) -> None:
    """``click.echo`` of a message that may quote user text: each control character (C0, C1,
    DEL), bidi control and lone surrogate is written as its escape (``factory.core.text``), so
    a value cannot move the cursor, retitle the terminal or reorder the line. ``newlines``
    false: a newline is escaped too (a line per row, which a value must not split)."""
    from factory.core.text import escaped

    click.echo(escaped(message, newlines=newlines), err=err)


def load_spec(job_path: str, *, output_uri: str | None = None) -> Job:
    """The validated job of ``job_path`` (``output_uri`` over the spec's); a bad spec exits 2,
    naming the file and keys; the spec's warnings are printed."""
    from factory.spec.job import SpecError, load_job

    try:
        job = load_job(job_path).with_overrides(output_uri=output_uri)
    except SpecError as exc:
        echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)
    for warning in job.warnings:
        echo(f"warning: {job_path}: {warning}", err=True)
    return job


def seasoned(job: Job, season: str | None, run_id: str | None,
             budget_usd: Decimal | None = None) -> Job:
    """``job`` in ``season`` with ``--budget`` and ``--run-id`` applied; a bad season or value
    exits 2."""
    from factory.spec.job import SpecError

    try:
        job = job.with_season(season).with_overrides(budget_usd=budget_usd)
        return job.with_overrides(run_id=run_id) if run_id else job
    except SpecError as exc:
        echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)


def parse_usd(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    """``--budget``'s click callback: a decimal number of dollars (exact: no float rounding)."""
    if value is None:
        return None
    try:
        usd = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"'{value}' is not a number of dollars") from None
    if not usd.is_finite() or usd <= 0:
        raise click.BadParameter(f"must be a number of dollars > 0 (got {value})")
    return usd
