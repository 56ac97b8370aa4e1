"""What the ``factory`` commands share: loading a job spec for a command, and ``--budget``."""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import click

from factory.cli.exits import EXIT_SPEC

if TYPE_CHECKING:
    from factory.spec.job import Job


def load_spec(job_path: str, *, output_uri: str | None = None) -> Job:
    """The validated job of ``job_path`` (``output_uri`` over the spec's); a bad spec exits 2,
    naming the file and keys; the spec's warnings are printed."""
    from factory.spec.job import SpecError, load_job

    try:
        job = load_job(job_path).with_overrides(output_uri=output_uri)
    except SpecError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)
    for warning in job.warnings:
        click.echo(f"warning: {job_path}: {warning}", err=True)
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
        click.echo(str(exc), err=True)
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
