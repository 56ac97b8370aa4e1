"""``factory validate``, ``run``, ``refresh`` and ``demo``: a job spec checked, then run by
this process as the Ray driver (on a local Ray of its own, or a cluster's ``--address``).
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Callable

import click

from factory.cli.common import echo, load_spec, parse_usd, seasoned
from factory.cli.exits import EXIT_MANIFEST, EXIT_OK, EXIT_PARTIAL, EXIT_RUN, EXIT_SPEC
from factory.core import settings
from factory.spec.cron import OVERLAPS, Overlap

if TYPE_CHECKING:
    from factory.deploy.overlap import RunLease
    from factory.run.refresh import RefreshReport
    from factory.run.result import WorkCount
    from factory.spec.job import Job


@click.command()
@click.argument("job_path", type=click.Path(dir_okay=False))
def validate(job_path: str) -> None:
    """Parse and check JOB_PATH; start nothing."""
    job = load_spec(job_path)
    photos = ", source photos" if job.stages[0].card.kind == "source" else ""
    run_id = job.run_id or (f"derived at run time (spec, manifest content{photos}, --limit, "
                            "season)")
    echo(f"{job_path}: ok — job '{job.name}', run id {run_id}, "
         f"{len(job.stages)} stages: {' → '.join(p.card.name for p in job.stages)}")
    for pool in job.pools:
        r = pool.resources
        where = f"{r.num_gpus:g} GPU" if r.num_gpus else f"{r.num_cpus:g} CPU"
        echo(f"  pool {pool.name}: {r.concurrency} actor(s), "
             f"{where} each, batches of {r.batch_size}")
    if job.routes is not None:
        from factory.spec.routes import describe

        for line in describe(job.routes):
            echo(f"  {line}")
    for line in job.qa.describe() if job.qa is not None else ():  # factory.spec.qa
        echo(f"  {line}")
    for line in job.notify.describe() if job.notify is not None else ():  # factory.spec.notify
        echo(f"  {line}")
    for line in job.publish.describe() if job.publish is not None else ():  # factory.spec.publish
        echo(f"  {line}")


@click.command()
@click.argument("job_path", type=click.Path(dir_okay=False))
@click.option("--output", "output_uri", help="Override the spec's output URI.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N manifest rows.")
@click.option("--run-id", help="Override the run id (default: from the spec, or derived).")
@click.option("--season", help="Season to apply (default: the one whose dates hold today; "
                                "'none' for no season).")
@click.option("--budget", "budget_usd", metavar="USD", callback=parse_usd,
              help="Cap the run's dollars (over the spec's budget.usd): rows past it are "
                   "deferred; a rerun with a larger budget renders them.")
@click.option("--address", envvar=settings.RAY_ADDRESS, help="Ray address; default: local.")
@click.option("--no-dashboard", is_flag=True, help="A local Ray without its dashboard.")
def run(job_path: str, output_uri: str | None, limit: int | None, run_id: str | None,
        season: str | None, budget_usd: Decimal | None, address: str | None,
        no_dashboard: bool) -> None:
    """Run the job in JOB_PATH and commit its run.

    The run id is derived from the spec, the manifest's content, --limit and the season, so
    the same inputs resume (or report) the same run and changed inputs make a new one; work
    already in the store is never rendered again. An explicit --run-id that is committed from
    other inputs is an error (exit 2). The budget is one of the inputs: a larger
    --budget is a new run, which renders the rows an earlier one deferred.
    """
    job = seasoned(load_spec(job_path, output_uri=output_uri), season, run_id, budget_usd)
    sys.exit(_execute(job, limit=limit, address=address, dashboard=not no_dashboard))


@click.command()
@click.argument("job_path", type=click.Path(dir_okay=False))
@click.option("--output", "output_uri", help="Override the spec's output URI.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N manifest rows.")
@click.option("--run-id", help="Run id of the refresh (default: derived from its inputs).")
@click.option("--season", help="Season to apply (default: by today's date; 'none').")
@click.option("--budget", "budget_usd", metavar="USD", callback=parse_usd,
              help="Cap the refresh's dollars (see `factory run --budget`).")
@click.option("--address", envvar=settings.RAY_ADDRESS, help="Ray address; default: local.")
@click.option("--no-dashboard", is_flag=True, help="A local Ray without its dashboard.")
@click.option("--overlap", type=click.Choice(OVERLAPS), default="allow", show_default=True,
              help="skip or queue: first take the job's run lease in the output store; while "
                   "another run holds it, skip (exit 0) or wait. What a RayCronJob firing runs.")
@click.option("--lease-ttl", "lease_ttl_s", type=click.IntRange(min=60), default=6 * 3600,
              show_default=True, help="Seconds from now after which the lease lapses, held or "
                                      "not (a killed run's lease must not keep others out).")
def refresh(job_path: str, output_uri: str | None, limit: int | None, run_id: str | None,
            season: str | None, budget_usd: Decimal | None, address: str | None,
            no_dashboard: bool, overlap: Overlap, lease_ttl_s: int) -> None:
    """Render only new and changed SKUs since the job's latest committed run."""
    from factory.run.refresh import refresh as run_refresh

    job = seasoned(load_spec(job_path, output_uri=output_uri), season, None, budget_usd)
    lease = _take_lease(job, overlap, lease_ttl_s) if overlap != "allow" else None
    try:
        report = _execute(job, limit=limit, address=address, dashboard=not no_dashboard,
                          runner=lambda j, **kw: run_refresh(j, run_id=run_id, **kw))
    finally:
        if lease is not None:
            lease.release()
    sys.exit(report)


def _take_lease(job: Job, overlap: Overlap, ttl_s: int) -> RunLease:
    """The job's run lease (``factory.deploy.overlap``), or exit: 0 when skipped, 4 when the
    store cannot be reached."""
    from factory.deploy.overlap import RunLease, await_turn
    from factory.store.s3 import StorageError
    from factory.store.storage import Store

    lease = RunLease.for_seconds(Store(job.output.uri, job.s3), job.name, ttl_s)

    def in_the_way() -> list[str]:
        holder = lease.acquire()
        return [holder.describe()] if holder else []

    try:
        held_by = await_turn(in_the_way, overlap=overlap, on_wait=lambda who: echo(
            f"queued: a run of job {job.name} holds its lease: {who[0]}; waiting", err=True))
    except StorageError as exc:
        echo(f"error: cannot take the run lease of job {job.name}: {exc}", err=True)
        sys.exit(EXIT_RUN)
    if held_by:
        echo(f"skipped: a run of job {job.name} holds its lease: {held_by[0]} (--overlap "
             "skip); nothing was run")
        sys.exit(EXIT_OK)
    return lease


@click.command()
@click.option("--output", "output_uri", default="demo-out", show_default=True)
@click.option("--catalog", type=click.Choice(["photos", "text"]), default="photos",
              show_default=True,
              help="photos: a Shopify export's own product photos in new scenes "
                   "(jobs/product-photos.yaml); text: products invented from a generated "
                   "catalog's text (jobs/demo.yaml).")
@click.option("--rows", type=click.IntRange(min=1), default=200, show_default=True,
              help="Rows of the generated text catalog.")
def demo(output_uri: str, catalog: str, rows: int) -> None:
    """Build the tiny models (and the text catalog), then run a demo job on a local Ray."""
    from factory.catalog.demo import prepare_demo

    job_path = prepare_demo(catalog=catalog, rows=rows)
    job = load_spec(str(job_path), output_uri=output_uri)
    if catalog == "photos":  # the shipped catalog, wherever the demo runs from
        from dataclasses import replace

        from factory.catalog.demo import PHOTO_CATALOG

        job = replace(job, manifest_uri=str(PHOTO_CATALOG))
    code = _execute(job, limit=None, address=None)
    # Both catalogs hold bad rows on purpose: a committed run is a successful demo.
    sys.exit(EXIT_OK if code == EXIT_PARTIAL else code)


def _execute(job: Job, *, limit: int | None, address: str | None,
             runner: Callable[..., RefreshReport] | None = None, dashboard: bool = True) -> int:
    """Run ``job`` (or ``runner`` it: a refresh) with a progress display; the exit code."""
    from factory.catalog.manifest import ManifestError
    from factory.core.console import RunProgress, dashboard_line
    from factory.run.identity import RunInputsMismatch
    from factory.run.pipeline import init_ray, run_job
    from factory.run.placement import OutputNotShared, logical_cpus_needed
    from factory.spec.notify import NotifySecretMissing

    season = f" (season {job.season})" if job.season else ""
    echo(f"job {job.name}{season}: {' → '.join(p.name for p in job.stages)} "
         f"→ {job.output.uri}", err=True)
    report = None
    try:
        if job.notify is not None:  # a webhook secret that is not set: stop before Ray starts
            job.notify.secrets()
        url = init_ray(address, logical_cpus=logical_cpus_needed(job), dashboard=dashboard)
        if line := dashboard_line(url, token_auth=os.environ.get("RAY_AUTH_MODE") == "token"):
            echo(line, err=True)
        with RunProgress() as progress:
            if runner is None:
                result = run_job(job, limit=limit, on_progress=progress, on_count=_count_line)
            else:
                report = runner(job, limit=limit, on_progress=progress,
                                on_count=_count_line)
                result = report.result
    except ManifestError as exc:
        echo(f"error: {exc}", err=True)
        return EXIT_MANIFEST
    except (RunInputsMismatch, OutputNotShared, NotifySecretMissing) as exc:
        echo(f"error: {exc}", err=True)
        return EXIT_SPEC
    except Exception as exc:  # noqa: BLE001 - reported with its cause; nothing was committed
        echo(f"error: run of job {job.name} did not finish and was not committed: "
             f"{_root_cause(exc)}", err=True)
        return EXIT_RUN
    c = result.counts
    if result.already_committed:
        echo(f"run {result.run_id} was already committed from the same inputs; nothing "
             "was rendered or written (its committed figures follow)", err=True)
    echo(
        f"\nrun {result.run_id}: {result.manifest_rows} rows → {c.assets} assets "
        f"({c.written} written, {c.assets - c.written} already there), {c.failed} failed, "
        f"{c.rejected} rejected" + (f", {c.deferred} deferred" if result.budget else "")
        + f" in {result.wall_s:.1f} s ({result.assets_per_s:.2f} assets/s)\n"
        f"  assets:  {result.output_uri.rstrip('/')}/assets/\n"
        f"  lineage: {result.lineage_path}\n"
        f"  rejects: {result.rejects_path}"
        + (f"\n  report:  {result.report_path}" if result.report_path else ""))
    if c.route_assets:
        echo("  assets by route: " + ", ".join(
            f"{route}={n}" for route, n in sorted(c.route_assets.items())))
    if c.failures_by_stage:
        echo("  failures by stage: " + ", ".join(
            f"{k}={v}" for k, v in sorted(c.failures_by_stage.items())))
    if result.budget:  # factory.cost.budget
        from factory.cost.budget import budget_line

        echo(f"  budget:  {budget_line(result.budget)}"
             + (f"; rerun with a larger --budget to render the {c.deferred} deferred rows"
                if c.deferred else ""))
    if result.qa:  # factory.spec.qa
        from factory.spec.qa import qa_line

        echo(f"  qa gate: {qa_line(result.qa)}")
    for note in result.notifications:  # factory.run.notified: sent after the commit
        echo(f"  notify:  {note.line()}")
    for path in result.published:  # factory.run.published: written after the commit
        echo(f"  publish: {path}")
    for line in result.publish_warnings:
        echo(f"  publish: warning: {line}")
    if result.publish_error:  # the run stays committed; a scheduler sees exit code 1
        echo(f"  publish failed (run {result.run_id} is committed): {result.publish_error}; "
             f"`factory publish {result.run_id} --output {result.output_uri}` tries again",
             err=True)
    if report is not None:
        echo(f"  {report.line()}")
    clean = c.failed == 0 and c.rejected == 0 and c.deferred == 0 and not result.publish_error
    return EXIT_OK if clean else EXIT_PARTIAL


def _count_line(counted: WorkCount) -> None:
    echo(counted.line(), err=True)


def _root_cause(exc: BaseException) -> str:
    """The line that says what went wrong, out of Ray's wrapped tracebacks."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        if "failed to load" in line:
            return line.strip()
    for line in reversed(text.splitlines()):  # a store that failed for good, inside a task
        if "StorageError: " in line:
            return "storage: " + line.split("StorageError: ", 1)[1].strip()
    return text.splitlines()[-1] if text else type(exc).__name__

