"""``factory schedule``: fire a job spec's cron schedules, or export them for Kubernetes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from factory.core import settings
from factory.cli.common import load_spec
from factory.cli.exits import EXIT_OK, EXIT_RUN, EXIT_SPEC


@click.group()
def schedule() -> None:
    """Cron schedules from a job spec's ``schedules:`` (UTC)."""


def _scheduled(job_path: str):
    job = load_spec(job_path)
    if not job.schedules:
        click.echo(f"{job_path}: the spec has no schedules", err=True)
        sys.exit(EXIT_SPEC)
    return job


@schedule.command("run")
@click.argument("job_path", type=click.Path(dir_okay=False))
@click.option("--address", envvar=settings.JOBS_ADDRESS, default=settings.DEFAULT_JOBS_ADDRESS,
              show_default=True, help="The Ray cluster's job server (dashboard address).")
@click.option("--once", is_flag=True, help="Check every schedule once, fire what is due, exit.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535),
              help="Serve the scheduler's Prometheus metrics on this port (/metrics).")
def schedule_run(job_path: str, address: str, once: bool, metrics_port: int | None) -> None:
    """Fire JOB_PATH's schedules: each due slot submits one refresh to the Ray cluster.

    Fires are recorded in the job's output store: a restart, here or on another machine, never
    fires a slot twice, and slots missed while nothing ran fire once, for the latest. A slot
    due while a run of the job is still running on the cluster is skipped, held or submitted
    as its schedule's overlap says.
    """
    from factory.core import metrics
    from factory.deploy.schedule import Scheduler, jobs_running, jobs_submitter
    from factory.store.storage import Store

    job = _scheduled(job_path)
    scheduler = Scheduler(store=Store(job.output.uri, job.s3), job_name=job.name,
                          schedules=job.schedules,
                          submit=jobs_submitter(job_path, address=address),
                          running=jobs_running(address))
    if metrics_port:
        metrics.serve_scheduler_metrics(metrics_port)
    if once:
        for fire in scheduler.tick():
            click.echo(f"fired {fire.schedule} ({fire.slot:%Y-%m-%d %H:%M} UTC): {fire.run_id}")
        for skip in scheduler.last_skipped:
            what = "held until they end" if skip.held else "skipped"
            click.echo(f"{what}: {skip.schedule} ({skip.slot:%Y-%m-%d %H:%M} UTC), "
                       f"still running: {', '.join(skip.running)}")
        for error in scheduler.last_errors:
            click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_RUN if scheduler.last_errors else EXIT_OK)
    names = ", ".join(f"{s.name} ({s.cron})" for s in job.schedules)
    click.echo(f"job {job.name}: schedules {names}, UTC; Ctrl-C stops", err=True)
    try:
        scheduler.run()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


@schedule.command("history")
@click.argument("job_path", type=click.Path(dir_okay=False))
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Slots per schedule, newest first.")
def schedule_history(job_path: str, limit: int) -> None:
    """The slots each of JOB_PATH's schedules fired or skipped, from the job's output store."""
    from factory.deploy.schedule import history
    from factory.store.storage import Store

    job = _scheduled(job_path)
    store = Store(job.output.uri, job.s3)
    for sched in job.schedules:
        click.echo(f"{sched.name} ({sched.cron}, overlap: {sched.overlap}):")
        records = history(store, job.name, sched.name, limit=limit)
        if not records:
            click.echo("  nothing fired yet")
        for r in records:
            why = f"  (running: {', '.join(r['running'])})" if r.get("running") else ""
            click.echo(f"  {r['slot'][:16].replace('T', ' ')} UTC  {r['outcome']:8} "
                       f"{r['run_id']}{why}")


@schedule.command("export")
@click.argument("job_path", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="cluster/schedules",
              show_default=True, help="Directory for the manifests.")
@click.option("--cluster", "cluster_path", type=click.Path(dir_okay=False, exists=True),
              default="cluster/raycluster.yaml", show_default=True,
              help="The RayCluster the RayJobs copy and the fallback CronJob submits to.")
@click.option("--image", help="Image with the factory (`make image`); default: the RayCluster's.")
@click.option("--address", help="The Ray job server the fallback CronJob submits to, as seen "
              "inside Kubernetes; default: the RayCluster's head Service.")
@click.option("--deadline", "deadline_s", type=click.IntRange(min=60), default=6 * 3600,
              show_default=True, help="activeDeadlineSeconds of each RayJob.")
def schedule_export(job_path: str, out_dir: str, cluster_path: str, image: str | None,
                    address: str | None, deadline_s: int) -> None:
    """Write a KubeRay RayJob for JOB_PATH, and per schedule a RayCronJob and a fallback CronJob.

    Give JOB_PATH relative to the repository root: the manifests run it from the image.
    """
    from factory.deploy import kubernetes
    job = load_spec(job_path)
    try:
        paths = kubernetes.export(job_path, job.name, job.schedules, Path(out_dir),
                                  cluster=kubernetes.load_cluster(cluster_path), image=image,
                                  address=address, deadline_s=deadline_s)
    except kubernetes.ExportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_SPEC)
    for path in paths:
        click.echo(path)
