"""``factory plan JOB.yaml``: predicted wall time, GPU-hours and dollars before a run."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import click

from factory.cli.exits import EXIT_MANIFEST, EXIT_SPEC
from factory.core import settings


def cost_lines(cost: Mapping[str, Any]) -> list[str]:
    """A run summary's ``cost`` as ``runs show`` prints it: per stage, then the total."""
    prices = cost.get("usd_per_hour") or {}
    gpu = cost.get("gpu", "?")
    lines = [f"cost  {stage:10} gpu_s={c['gpu_s']:<12.3f} cpu_s={c['cpu_s']:<12.3f} "
             f"${c['usd']:.6f}" for stage, c in (cost.get("stages") or {}).items()]
    lines.append(f"cost  {'total':10} ${cost.get('usd', 0.0):.6f} at {gpu} "
                 f"${prices.get(gpu, '?')}/GPU-h, cpu ${prices.get('cpu', '?')}/CPU-h")
    return lines


@click.command("plan")
@click.argument("job_path", type=click.Path(dir_okay=False))
@click.option("--output", "output_uri", help="Override the spec's output URI.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N manifest rows.")
@click.option("--season", help="Season to apply (as `factory run`).")
@click.option("--probe", "probe_rows", type=click.IntRange(min=0), default=8,
              show_default=True, help="Rows of a probe run (into a scratch store) when no "
              "committed run in the output store calibrates a stage; 0: never probe.")
@click.option("--address", envvar=settings.RAY_ADDRESS, help="Ray address for a probe.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(job_path: str, output_uri: str | None, limit: int | None, season: str | None,
         probe_rows: int, address: str | None, as_json: bool) -> None:
    """Predict the run of JOB_PATH: wall time, GPU-hours and dollars per stage and in total.

    Only rows that would render count (valid, not already in the store). Seconds per asset
    come from the lineage of committed runs in the output store (same card, params and device
    kind), else from a probe run of the first --probe rows into a scratch directory.
    """
    from factory.catalog.records import ManifestError
    from factory.cost.calibration import calibrate
    from factory.run.forecast import predict, probe, stage_rows, tally_work
    from factory.spec.job import SpecError, load_job
    from factory.store.storage import Store

    try:
        job = load_job(job_path).with_overrides(output_uri=output_uri).with_season(season)
    except SpecError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)
    try:
        info, tally, routes = tally_work(job, limit=limit)
    except ManifestError as exc:  # as `factory run` says it: no traceback for a bad catalog
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_MANIFEST)
    calibration = calibrate(Store(job.output.uri, job.s3), job)
    # with routes, a stage no row to render goes through needs no calibration
    rendering = stage_rows(job, tally.get("ok", 0), routes)
    missing = calibration.missing([p.name for p in job.stages
                                   if rendering[p.name] or job.routes is None])
    if missing:
        if not probe_rows:
            click.echo(f"no committed run in {job.output.uri} calibrates stages "
                       f"{', '.join(missing)}; run with --probe N", err=True)
            sys.exit(EXIT_SPEC)
        from factory.run.pipeline import init_ray
        from factory.run.placement import logical_cpus_needed

        click.echo(f"no calibration for {', '.join(missing)}: probing {probe_rows} rows",
                   err=True)
        init_ray(address, logical_cpus=logical_cpus_needed(job), dashboard=False)
        calibration = probe(job, rows=probe_rows)
        if still := calibration.missing(missing):  # the probe's rows took other routes
            click.echo(f"the probe's {probe_rows} rows did not go through stages "
                       f"{', '.join(still)}; run with a larger --probe N", err=True)
            sys.exit(EXIT_SPEC)
    result = predict(job, calibration, rows=info.rows, rejected=tally.get("rejected", 0),
                     existing=tally.get("exists", 0), to_render=tally.get("ok", 0),
                     routes=routes)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"plan for job {job.name}: {result.rows} rows: {result.rejected} rejected, "
               f"{result.existing} already in the store, {result.to_render} to render")
    click.echo(f"{'stage':12} {'model':28} {'s/asset':>9} {'busy s':>10} {'GPU-h':>10} "
               f"{'CPU-h':>10} {'dollars':>12}")
    for s in result.stages:
        click.echo(f"{s.name:12} {s.model:28} {s.seconds_per_asset:9.4f} {s.busy_s:10.1f} "
                   f"{s.gpu_hours:10.4f} {s.cpu_hours:10.4f} {s.usd:12.6f}")
    click.echo(f"{'total':12} {'':28} {'':9} {'':10} {result.gpu_hours:10.4f} "
               f"{sum(s.cpu_hours for s in result.stages):10.4f} {result.usd:12.6f}")
    prices = result.prices
    click.echo(f"predicted wall time {result.wall_s:.1f} s; prices: {prices.gpu} "
               f"${prices.gpu_usd_per_hour}/GPU-h, cpu ${prices.cpu_usd_per_hour}/CPU-h")
    for r in result.routes:
        click.echo(f"route {r.name:12} {r.rows:8d} rows x ${r.usd_per_asset:.9f}/asset = "
                   f"${r.usd:.6f}")
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"calibrated from runs: {', '.join(result.calibrated_from)}")
