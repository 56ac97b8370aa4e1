"""``factory submit``, ``status``, ``logs``, ``stop`` and ``list``: runs on a Ray cluster,
through its job server (``factory.deploy.ray_jobs``); each submitted run is one Ray job.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any, Callable, TypeVar

import click

from factory.cli.common import load_spec, parse_usd, seasoned
from factory.cli.exits import EXIT_OK, EXIT_PARTIAL, EXIT_RUN
from factory.core import settings
from factory.spec.cron import OVERLAPS, Overlap

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _jobs_address_option(f: F) -> F:
    return click.option("--address", envvar=settings.JOBS_ADDRESS,
                        default=settings.DEFAULT_JOBS_ADDRESS, show_default=True,
                        help=f"Ray job server (dashboard) address; env {settings.JOBS_ADDRESS}."
                        )(f)


def _jobs_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` against the job server; its error exits 4, saying why."""
    from factory.deploy.ray_jobs import JobsError

    try:
        return fn(*args, **kwargs)
    except JobsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUN)


@click.command()
@click.argument("job_path", type=click.Path(dir_okay=False))
@_jobs_address_option
@click.option("--run-id", help="Override the run id (also the Ray submission id).")
@click.option("--season", help="Season to apply (default: by today's date; 'none').")
@click.option("--refresh", is_flag=True, help="Submit `factory refresh` instead of `run`.")
@click.option("--budget", "budget_usd", metavar="USD", callback=parse_usd,
              help="Cap the run's dollars (see `factory run --budget`).")
@click.option("--working-dir", default=".", show_default=True,
              type=click.Path(file_okay=False, exists=True),
              help="Directory uploaded as the job's working directory; JOB_PATH must be in it.")
@click.option("--overlap", type=click.Choice(OVERLAPS), default="allow", show_default=True,
              help="While a run of this job is PENDING or RUNNING on the cluster: skip "
                   "(submit nothing, exit 0), queue (wait for it to end, then submit) or allow.")
def submit(job_path: str, address: str, run_id: str | None, season: str | None, refresh: bool,
           budget_usd: Decimal | None, working_dir: str, overlap: Overlap) -> None:
    """Validate JOB_PATH here, then run it on a Ray cluster as a Ray job (id = run id)."""
    from factory.deploy import ray_jobs as jobs
    from factory.deploy.overlap import await_turn

    # a bad spec, season or budget: exit 2, nothing uploaded
    job = seasoned(load_spec(job_path), season, run_id, budget_usd)
    in_the_way = _jobs_call(await_turn, lambda: jobs.running(job.name, address=address),
                            overlap=overlap, on_wait=lambda runs: click.echo(
                                f"queued: job {job.name} has {', '.join(runs)} running on "
                                f"{address}; submitting when it ends", err=True))
    if in_the_way:
        click.echo(f"skipped: job {job.name} still has {', '.join(in_the_way)} running on "
                   f"{address} (--overlap skip); nothing submitted")
        sys.exit(EXIT_OK)
    submitted = _jobs_call(jobs.submit, job_path, address=address, run_id=run_id, season=season,
                           refresh=refresh, working_dir=working_dir, budget_usd=budget_usd)
    click.echo(f"submitted run {submitted} to {address}\n"
               f"  follow: factory logs {submitted} --follow --address {address}\n"
               f"  dashboard: {address.rstrip('/')}/#/jobs/{submitted}  (with token auth on, "
               "`ray get-auth-token` prints the token the page asks for)")


@click.command("status")
@click.argument("run_id")
@_jobs_address_option
def status_(run_id: str, address: str) -> None:
    """A submitted run's Ray job status."""
    from factory.deploy import ray_jobs as jobs

    info = _jobs_call(jobs.status, run_id, address=address)
    meta = info["metadata"]
    click.echo(f"run {run_id}: {info['status']}"
               + (f" (exit code {info['exit_code']})" if info["exit_code"] is not None else ""))
    for key in ("job_name", "catalog", "season"):
        click.echo(f"  {key:10} {meta.get(key, '')}")
    click.echo(f"  started    {info['start_time'] or '-'}\n  ended      {info['end_time'] or '-'}"
               f"\n  command    {info['entrypoint']}")
    if info["status"] == "FAILED" and info["exit_code"] == EXIT_PARTIAL:
        click.echo("  the run committed, but some rows failed or were rejected "
                   "(factory runs show RUN --output URI)")
    elif info["message"] and info["status"] != "SUCCEEDED":
        click.echo(f"  message    {info['message'].splitlines()[0]}")


@click.command()
@click.argument("run_id")
@_jobs_address_option
@click.option("--follow", "-f", is_flag=True, help="Stream until the job ends.")
def logs(run_id: str, address: str, follow: bool) -> None:
    """A submitted run's driver output."""
    from factory.deploy import ray_jobs as jobs

    _jobs_call(jobs.logs, run_id, address=address, follow=follow,
               out=lambda text: click.echo(text, nl=False))


@click.command()
@click.argument("run_id")
@_jobs_address_option
def stop(run_id: str, address: str) -> None:
    """Stop a submitted run; a stopped run commits nothing."""
    from factory.deploy import ray_jobs as jobs

    was_running = _jobs_call(jobs.stop, run_id, address=address)
    click.echo(f"run {run_id}: " + ("stop requested" if was_running else "was not running"))


@click.command("list")
@_jobs_address_option
def list_(address: str) -> None:
    """Runs submitted to the cluster, oldest first."""
    from factory.deploy import ray_jobs as jobs

    found = _jobs_call(jobs.list_jobs, address=address)
    if not found:
        click.echo(f"no submitted runs on {address}")
    for j in found:
        click.echo(f"{j['run_id']:40} {j['status']:10} job={j['job_name'] or '-':20} "
                   f"season={j['season'] or '-':10} started={j['start_time'] or '-'}")
