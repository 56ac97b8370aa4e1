"""The ``factory`` command line.

Exit codes: 0 every row became an asset; 1 the run committed but some rows failed, were
rejected or were deferred by a budget; 2 a bad job spec or bad usage (an explicit run id
already committed from other inputs included); 3 a manifest that cannot be read at all; 4 the
run could not finish (a model that does not load, storage, Ray); nothing was committed; 5 no
such committed run (``runs show``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from factory.core import settings

from factory.cli.common import (  # noqa: F401 - API
    EXIT_MANIFEST, EXIT_NO_RUN, EXIT_OK, EXIT_PARTIAL, EXIT_RUN, EXIT_SPEC, load_spec, parse_usd,
)


@click.group()
def main() -> None:
    """Distributed batch asset factory: SKU catalogs through chains of image models on Ray."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Only the factory's own loggers follow FACTORY_LOG_LEVEL: botocore at DEBUG would print
    # request headers, and those carry the access key id.
    for name in ("factory", "stages"):
        logging.getLogger(name).setLevel(settings.log_level())


@main.command()
@click.argument("job_path", type=click.Path(dir_okay=False))
def validate(job_path: str) -> None:
    """Parse and check JOB_PATH; start nothing."""
    job = _load(job_path)
    photos = ", source photos" if job.stages[0].card.kind == "source" else ""
    run_id = job.run_id or (f"derived at run time (spec, manifest content{photos}, --limit, "
                            "season)")
    click.echo(f"{job_path}: ok — job '{job.name}', run id {run_id}, "
               f"{len(job.stages)} stages: {' → '.join(p.card.name for p in job.stages)}")
    from stages.chain import pool_resources, pools

    for pool in pools(job.stages, fuse=job.fuse_cpu_stages, keep=job.keep_intermediates):
        r = pool_resources(pool)
        where = f"{r.num_gpus:g} GPU" if r.num_gpus else f"{r.num_cpus:g} CPU"
        click.echo(f"  pool {'+'.join(p.name for p in pool)}: {r.concurrency} actor(s), "
                   f"{where} each, batches of {r.batch_size}")
    if job.routes is not None:
        from factory.spec.routes import describe

        for line in describe(job.routes):
            click.echo(f"  {line}")
    for line in job.qa.describe() if job.qa is not None else ():  # factory.spec.qa
        click.echo(f"  {line}")


@main.command()
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
        season: str | None, budget_usd, address: str | None, no_dashboard: bool) -> None:
    """Run the job in JOB_PATH and commit its run.

    The run id is derived from the spec, the manifest's content, --limit and the season, so
    the same inputs resume (or report) the same run and changed inputs make a new one; work
    already in the store is never rendered again. An explicit --run-id that is committed from
    other inputs is an error (exit 2). The budget is one of the inputs: a larger
    --budget is a new run, which renders the rows an earlier one deferred.
    """
    job = _seasoned(_load(job_path, output_uri=output_uri), season, run_id, budget_usd)
    sys.exit(_execute(job, limit=limit, address=address, dashboard=not no_dashboard))


@main.command()
@click.argument("job_path", type=click.Path(dir_okay=False))
@click.option("--output", "output_uri", help="Override the spec's output URI.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N manifest rows.")
@click.option("--run-id", help="Run id of the refresh (default: derived from its inputs).")
@click.option("--season", help="Season to apply (default: by today's date; 'none').")
@click.option("--budget", "budget_usd", metavar="USD", callback=parse_usd,
              help="Cap the refresh's dollars (see `factory run --budget`).")
@click.option("--address", envvar=settings.RAY_ADDRESS, help="Ray address; default: local.")
@click.option("--no-dashboard", is_flag=True, help="A local Ray without its dashboard.")
def refresh(job_path: str, output_uri: str | None, limit: int | None, run_id: str | None,
            season: str | None, budget_usd, address: str | None, no_dashboard: bool) -> None:
    """Render only new and changed SKUs since the job's latest committed run."""
    from factory.run.refresh import refresh as run_refresh

    job = _seasoned(_load(job_path, output_uri=output_uri), season, None, budget_usd)
    report = _execute(job, limit=limit, address=address, dashboard=not no_dashboard,
                      runner=lambda j, **kw: run_refresh(j, run_id=run_id, **kw))
    sys.exit(report)


def _seasoned(job, season: str | None, run_id: str | None, budget_usd=None):
    from factory.spec.job import SpecError

    try:
        job = job.with_season(season).with_overrides(budget_usd=budget_usd)
        return job.with_overrides(run_id=run_id) if run_id else job
    except SpecError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)


@main.command()
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
    job = _load(str(job_path), output_uri=output_uri)
    if catalog == "photos":  # the shipped catalog, wherever the demo runs from
        from dataclasses import replace

        from factory.catalog.demo import PHOTO_CATALOG

        job = replace(job, manifest_uri=str(PHOTO_CATALOG))
    code = _execute(job, limit=None, address=None)
    # Both catalogs hold bad rows on purpose: a committed run is a successful demo.
    sys.exit(EXIT_OK if code == EXIT_PARTIAL else code)


def _jobs_address_option(f):
    return click.option("--address", envvar=settings.JOBS_ADDRESS,
                        default=settings.DEFAULT_JOBS_ADDRESS, show_default=True,
                        help=f"Ray job server (dashboard) address; env {settings.JOBS_ADDRESS}."
                        )(f)


def _jobs_call(fn, *args, **kwargs):
    from factory.deploy.ray_jobs import JobsError

    try:
        return fn(*args, **kwargs)
    except JobsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_RUN)


@main.command()
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
def submit(job_path: str, address: str, run_id: str | None, season: str | None, refresh: bool,
           budget_usd, working_dir: str) -> None:
    """Validate JOB_PATH here, then run it on a Ray cluster as a Ray job (id = run id)."""
    from factory.deploy import ray_jobs as jobs

    # a bad spec, season or budget: exit 2, nothing uploaded
    _seasoned(_load(job_path), season, run_id, budget_usd)
    submitted = _jobs_call(jobs.submit, job_path, address=address, run_id=run_id, season=season,
                           refresh=refresh, working_dir=working_dir, budget_usd=budget_usd)
    click.echo(f"submitted run {submitted} to {address}\n"
               f"  follow: factory logs {submitted} --follow --address {address}\n"
               f"  dashboard: {address.rstrip('/')}/#/jobs/{submitted}  (with token auth on, "
               "`ray get-auth-token` prints the token the page asks for)")


@main.command("status")
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


@main.command()
@click.argument("run_id")
@_jobs_address_option
@click.option("--follow", "-f", is_flag=True, help="Stream until the job ends.")
def logs(run_id: str, address: str, follow: bool) -> None:
    """A submitted run's driver output."""
    from factory.deploy import ray_jobs as jobs

    _jobs_call(jobs.logs, run_id, address=address, follow=follow,
               out=lambda text: click.echo(text, nl=False))


@main.command()
@click.argument("run_id")
@_jobs_address_option
def stop(run_id: str, address: str) -> None:
    """Stop a submitted run; a stopped run commits nothing."""
    from factory.deploy import ray_jobs as jobs

    was_running = _jobs_call(jobs.stop, run_id, address=address)
    click.echo(f"run {run_id}: " + ("stop requested" if was_running else "was not running"))


@main.command("list")
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


@main.group()
def models() -> None:
    """The model registry."""


@models.command("list")
def models_list() -> None:
    """Every registered model card, with the defaults a job spec overrides key by key."""
    from stages.registry import CARDS

    for card in CARDS:
        r = card.resources
        click.echo(f"{card.name:28} {card.source or '-':36} gpus={r.num_gpus:<4g} "
                   f"batch={r.batch_size:<3} cost={card.cost_weight:<5g} {card.description}")
        params = card.make_params(card.example_params).model_dump(mode="json")
        if "dtype" in params and params["dtype"] == "auto":
            params["dtype"] = f"auto ({card.cuda_dtype} on CUDA, float32 on CPU)"
        shown = ", ".join(f"{k}={v}" for k, v in params.items()
                          if k in card.defaults or k in ("dtype", "width", "height", "steps",
                                                         "guidance", "lora", "tile"))
        click.echo(f"{'':28} defaults: num_cpus={r.num_cpus:g} concurrency={r.concurrency}"
                   + (f"; {shown}" if shown else ""))


@models.command("make-tiny")
@click.argument("out_dir", type=click.Path(file_okay=False), default=None, required=False)
def models_make_tiny(out_dir: str | None) -> None:
    """Build tiny random-weight models of the real architectures into OUT_DIR.

    Default OUT_DIR: the models directory (FACTORY_MODELS_DIR, else build/models), where
    ``tiny:NAME`` sources resolve.
    """
    from stages.tiny.models import make_all

    target = Path(out_dir) if out_dir else settings.models_dir()
    for name, path in make_all(target).items():
        click.echo(f"{name}: {path}")


def _load(job_path: str, **overrides):
    return load_spec(job_path, **overrides)


def _execute(job, *, limit: int | None, address: str | None, runner=None,
             dashboard: bool = True) -> int:
    from factory.run.identity import RunInputsMismatch
    from factory.catalog.manifest import ManifestError
    from factory.core.console import RunProgress, dashboard_line
    from factory.run.pipeline import init_ray, logical_cpus_needed, run_job
    from factory.run.placement import OutputNotShared

    season = f" (season {job.season})" if job.season else ""
    click.echo(f"job {job.name}{season}: {' → '.join(p.name for p in job.stages)} "
               f"→ {job.output.uri}", err=True)
    report = None
    plan_line = lambda plan: click.echo(plan.line(), err=True)  # noqa: E731
    try:
        url = init_ray(address, logical_cpus=logical_cpus_needed(job), dashboard=dashboard)
        if line := dashboard_line(url, token_auth=os.environ.get("RAY_AUTH_MODE") == "token"):
            click.echo(line, err=True)
        with RunProgress() as progress:
            if runner is None:
                result = run_job(job, limit=limit, on_progress=progress, on_plan=plan_line)
            else:
                report = runner(job, limit=limit, on_progress=progress, on_plan=plan_line)
                result = report.result
    except ManifestError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_MANIFEST
    except (RunInputsMismatch, OutputNotShared) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_SPEC
    except Exception as exc:  # noqa: BLE001 - reported with its cause; nothing was committed
        click.echo(f"error: run of job {job.name} did not finish and was not committed: "
                   f"{_root_cause(exc)}", err=True)
        return EXIT_RUN
    c = result.counts
    if result.already_committed:
        click.echo(f"run {result.run_id} was already committed from the same inputs; nothing "
                   "was rendered or written (its committed figures follow)", err=True)
    click.echo(
        f"\nrun {result.run_id}: {result.manifest_rows} rows → {c.assets} assets "
        f"({c.written} written, {c.assets - c.written} already there), {c.failed} failed, "
        f"{c.rejected} rejected" + (f", {c.deferred} deferred" if result.budget else "")
        + f" in {result.wall_s:.1f} s ({result.assets_per_s:.2f} assets/s)\n"
        f"  assets:  {result.output_uri.rstrip('/')}/assets/\n"
        f"  lineage: {result.lineage_path}\n"
        f"  rejects: {result.rejects_path}"
        + (f"\n  report:  {result.report_path}" if result.report_path else ""))
    if c.route_assets:
        click.echo("  assets by route: " + ", ".join(
            f"{route}={n}" for route, n in sorted(c.route_assets.items())))
    if c.failures_by_stage:
        click.echo("  failures by stage: " + ", ".join(
            f"{k}={v}" for k, v in sorted(c.failures_by_stage.items())))
    if result.budget:  # factory.cost.budget
        from factory.cost.budget import budget_line

        click.echo(f"  budget:  {budget_line(result.budget)}"
                   + (f"; rerun with a larger --budget to render the {c.deferred} deferred rows"
                      if c.deferred else ""))
    if result.qa:  # factory.spec.qa
        from factory.spec.qa import qa_line

        click.echo(f"  qa gate: {qa_line(result.qa)}")
    if report is not None:
        click.echo(f"  {report.line()}")
    return EXIT_OK if c.failed == 0 and c.rejected == 0 and c.deferred == 0 else EXIT_PARTIAL


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


from factory.cli.lora import lora  # noqa: E402 - `factory lora` (issue 15)
from factory.cli.forecast import plan  # noqa: E402
from factory.cli.runs import runs  # noqa: E402 - `factory runs`
from factory.cli.schedule import schedule  # noqa: E402

main.add_command(lora)
main.add_command(plan)  # `factory plan` (issue 14)
main.add_command(runs)
main.add_command(schedule)


if __name__ == "__main__":
    main()
