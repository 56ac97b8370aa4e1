"""What the ``factory`` commands share: exit codes and loading a job spec for a command.

Exit codes: 0 every row became an asset; 1 the run committed but some rows failed, were
rejected or were deferred by a budget; 2 a bad job spec or bad usage; 3 a manifest that cannot
be read at all; 4 the run could not finish, nothing was committed; 5 no such committed run.
"""

from __future__ import annotations

import sys

import click

EXIT_OK, EXIT_PARTIAL, EXIT_SPEC, EXIT_MANIFEST, EXIT_RUN, EXIT_NO_RUN = 0, 1, 2, 3, 4, 5


def load_spec(job_path: str, **overrides):
    """The validated job of ``job_path`` (with ``overrides``); a bad spec exits 2, naming the
    file and keys; the spec's warnings are printed."""
    from factory.spec.job import SpecError, load_job

    try:
        job = load_job(job_path).with_overrides(**overrides)
    except SpecError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)
    for warning in job.warnings:
        click.echo(f"warning: {job_path}: {warning}", err=True)
    return job


def parse_usd(ctx, param, value: str | None):
    """``--budget``'s click callback: a decimal number of dollars (exact: no float rounding)."""
    from decimal import Decimal, InvalidOperation

    if value is None:
        return None
    try:
        usd = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"'{value}' is not a number of dollars") from None
    if not usd.is_finite() or usd <= 0:
        raise click.BadParameter(f"must be a number of dollars > 0 (got {value})")
    return usd
