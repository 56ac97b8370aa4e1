"""``factory runs``: committed runs in an output store, read from their lineage tables."""

from __future__ import annotations

import sys

import click

from factory.cli.common import echo, load_spec
from factory.cli.exits import EXIT_NO_RUN


def _echo(line: str, *, err: bool = False) -> None:
    """One line that may quote what a store or manifest holds: escaped, newlines included."""
    echo(line, err=err, newlines=False)


@click.group()
def runs() -> None:
    """Committed runs in an output store (read from their lineage tables)."""


def _store_option(f):
    f = click.option("--job", "job_path", type=click.Path(dir_okay=False),
                     help="Take the output URI and storage settings from this job spec.")(f)
    return click.option("--output", "output_uri", help="Output URI (a directory or s3://...).")(f)


def _store(output_uri: str | None, job_path: str | None):
    from factory.store.s3 import S3Options
    from factory.store.storage import Store

    if job_path:
        job = load_spec(job_path, output_uri=output_uri)
        return Store(job.output.uri, job.s3)
    if not output_uri:
        raise click.UsageError("give --output URI or --job JOB.yaml")
    return Store(output_uri, S3Options.from_settings())


@runs.command("list")
@_store_option
def runs_list(output_uri: str | None, job_path: str | None) -> None:
    """Every committed run: id, rows, assets, failed, rejected, wall time."""
    from factory.store.run_tables import list_runs

    store = _store(output_uri, job_path)
    found = list_runs(store)
    if not found:
        _echo(f"no committed runs in {store.uri}")
    for run_id, s in found:
        _echo(f"{run_id:40} rows={s.get('manifest_rows', '?'):<7} "
                   f"assets={s.get('assets', '?'):<7} failed={s.get('failed', '?'):<5} "
                   f"rejected={s.get('rejected', '?'):<5} wall={s.get('wall_s', '?')}s "
                   f"job={s.get('job', '?')}")


@runs.command("show")
@click.argument("run_id")
@_store_option
@click.option("--failures", default=10, show_default=True, help="Failures to list.")
def runs_show(run_id: str, output_uri: str | None, job_path: str | None, failures: int) -> None:
    """One committed run: its summary, stages, failures and rejections."""
    from factory.store.run_tables import is_committed, read_lineage, read_rejects

    store = _store(output_uri, job_path)
    if not is_committed(store, run_id):
        _echo(f"run {run_id} is not committed in {store.uri} (unknown, running, or "
                   "stopped before its commit)", err=True)
        sys.exit(EXIT_NO_RUN)
    lineage, summary = read_lineage(store, run_id)
    rejects = read_rejects(store, run_id)
    for key in ("job", "manifest_rows", "assets", "written", "failed", "rejected", "deferred",
                "wall_s", "assets_per_s", "write_mode", "spec_hash"):
        if key in summary or key != "deferred":  # runs before budgets record no deferrals
            _echo(f"{key:14} {summary.get(key)}")
    if summary.get("budget"):  # factory.cost.budget
        from factory.cost.budget import budget_line

        _echo(f"{'budget':14} {budget_line(summary['budget'])}")
    if summary.get("qa"):  # factory.spec.qa
        from factory.spec.qa import qa_line

        _echo(f"{'qa':14} {qa_line(summary['qa'])}")
    for reason, n in (summary.get("skipped") or {}).items():  # a catalog export's non-rows
        _echo(f"{'skipped':14} {n} ({reason})")
    for key, value in (summary.get("inputs") or {}).items():
        _echo(f"{'input ' + key:14} {value}")
    for route, line in (summary.get("routes") or {}).items():  # factory.spec.routes
        _echo(f"{'route ' + route:14} {line['assets']} assets ${line['usd']:.6f}")
    stages = [c.removesuffix("_model") for c in lineage.column_names if c.endswith("_model")]
    rows = lineage.to_pylist()
    for stage in stages:
        done = [r[f"ms_{stage}"] for r in rows if r[f"ms_{stage}"]]
        mean = sum(done) / len(done) if done else 0.0
        # with routes a row off the stage's routes records no model for it
        model = next((r[f"{stage}_model"] for r in rows if r[f"{stage}_model"]), "-")
        _echo(f"stage {stage:10} {model:28} {mean:9.1f} ms/asset over {len(done)} rows")
    cost = summary.get("cost")
    if cost:  # factory.spec.prices: device seconds x the share each actor reserved x hourly prices
        from factory.cli.forecast import cost_lines

        for line in cost_lines(cost):
            _echo(line)
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed[:failures]:
        _echo(f"failed  row {r['row']:<6} {r['sku']:24} [{r['failed_stage']}] {r['error']}")
    review = [r for r in rows if r.get("qa") == "review" and r["status"] == "ok"]
    for r in review[:failures]:  # factory.spec.qa: written, outside the gate after its retries
        _echo(f"review  row {r['row']:<6} {r['sku']:24} [{r['qa_attempts']} renders] "
                   f"{r['qa_reason']}")
    for r in rejects.to_pylist()[:failures]:
        _echo(f"rejected row {r['row']:<6} {r['sku'][:24]:24} {r['field']}: {r['reason']}")


@runs.command("open")
@click.argument("run_id")
@_store_option
@click.option("--print", "print_only", is_flag=True, help="Print where the report is; open "
              "no browser.")
def runs_open(run_id: str, output_uri: str | None, job_path: str | None,
              print_only: bool) -> None:
    """Open a committed run's report (runs/RUN/report.html) in a browser.

    A run committed without one gets it written first. On S3 it prints the s3:// URI and the
    object's https URL (it opens where the bucket serves a static site or public reads).
    """
    import webbrowser

    from factory.run.report import object_url, report_key, write_report
    from factory.store.run_tables import is_committed

    store = _store(output_uri, job_path)
    if not is_committed(store, run_id):
        _echo(f"run {run_id} is not committed in {store.uri} (unknown, running, or "
                   "stopped before its commit)", err=True)
        sys.exit(EXIT_NO_RUN)
    key = report_key(run_id)
    if not store.exists(key):
        _echo(f"writing the report of run {run_id}…", err=True)
        write_report(store, run_id)
    url = object_url(store, key)
    _echo(store.path(key))
    if store.is_s3:
        _echo(url)
    if store.is_s3 or print_only:
        return
    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        _echo("no browser here: open the file above", err=True)
