"""The factory's metrics, scraped from the node's Prometheus endpoint after a local run and
checked against the run's lineage table."""

from __future__ import annotations

import os
import time
import urllib.request
from collections import defaultdict

import pytest

from factory.catalog.demo import write_catalog
from factory.core.metrics import EXPORTED
from factory.store.run_tables import read_lineage
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration

FAIL = ("SKU-00004", "SKU-00017")


@pytest.fixture(scope="module")
def ray_with_dashboard():
    import ray

    from factory.run.pipeline import init_ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_metrics_report_interval_ms"] = "500"  # Ray's system config, from the env
    try:
        url = init_ray(None, logical_cpus=4)
        yield url
    finally:
        ray.shutdown()
        os.environ.pop("RAY_metrics_report_interval_ms", None)


def scrape() -> dict[str, dict[tuple, float]]:
    """factory series from this node's metrics endpoint: name -> {sorted tag items: value}."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    node = ray._private.worker.global_worker.node
    url = f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    series: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_factory_"):
                keep = {k: v for k, v in sample.labels.items()
                        if k in ("job_name", "run_id", "stage", "model", "device", "le")}
                # one series per worker process: sum them
                series[sample.name][tuple(sorted(keep.items()))] += sample.value
    return series


def total(series, name: str, **match: str) -> float:
    return sum(v for tags, v in series.get(name, {}).items()
               if all(dict(tags).get(k) == want for k, want in match.items()))


def worker_processes() -> list:
    """The Ray worker processes of this driver's local node (the raylet's children but its
    agents), by their titles."""
    import psutil
    import ray

    node = ray._private.worker.global_worker.node
    raylet = next(p for p in psutil.Process().children(recursive=True)
                  if p.name() == "raylet" and node.session_name in " ".join(p.cmdline()))
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # the node's, not workers
    return [" ".join(p.cmdline()).strip() for p in raylet.children()
            if not " ".join(p.cmdline()).startswith(agents)]


def test_a_local_ray_prestarts_no_worker_a_run_cannot_use(ray_with_dashboard):
    """Ray prestarts idle workers without a runtime env when a driver connects; a run's tasks
    and actors all have one, so the factory's local Ray starts only the worker Ray starts for
    the driver's own runtime env. (First in this module: a run leaves idle workers behind.)"""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert len(worker_processes()) <= 1, worker_processes()
        time.sleep(0.25)


def test_metrics_on_the_node_endpoint_match_the_lineage(ray_with_dashboard, tmp_path,
                                                        models_dir):
    from factory.run.pipeline import run_job

    assert ray_with_dashboard and "127.0.0.1" in ray_with_dashboard  # dashboard on loopback
    catalog = write_catalog(tmp_path / "catalog.csv", 40)  # rows 11, 21, 31 are bad
    job = parse_job({
        "name": "metered", "manifest": {"uri": str(catalog)}, "output": {"uri": str(tmp_path)},
        "prompt": {"template": "a {{ color }} {{ title }}"},
        "stages": [{"kind": "generate", "model": "synthetic", "params": {"width": 32,
                                                                         "height": 32}},
                   {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}},
                   {"kind": "identity", "model": "passthrough",
                    "params": {"fail_skus": list(FAIL)}}]})
    result = run_job(job)
    again = run_job(job.with_overrides(run_id="metered-again"))  # everything already there
    lineage, summary = read_lineage(Store(str(tmp_path)), result.run_id)
    rows = lineage.to_pylist()
    rendered = [r for r in rows if r["generate_placement"]]
    ok = [r for r in rows if r["status"] == "ok"]
    expect = {
        ("factory_stage_rows_in", "generate"): len(rendered),
        ("factory_stage_rows_out", "generate"): len(rendered),
        ("factory_stage_rows_out", "recolor"): len(rendered),
        ("factory_stage_rows_in", "identity"): len(rendered),
        ("factory_stage_rows_out", "identity"): len(rendered) - len(FAIL),
        ("factory_stage_failures", "identity"): len(FAIL),
        ("factory_stage_failures", "generate"): 0,
    }
    run = {"run_id": result.run_id, "job_name": "metered"}
    deadline = time.monotonic() + 60
    while True:  # the metrics agent exports on a period: wait for the final figures
        series = scrape()
        seen = {key: total(series, f"ray_{key[0]}_total", stage=key[1], **run) for key in expect}
        sink = (total(series, "ray_factory_sink_assets_written_total", **run),
                total(series, "ray_factory_sink_bytes_written_total", **run),
                total(series, "ray_factory_sink_assets_skipped_total", **run),
                total(series, "ray_factory_sink_assets_skipped_total",
                      run_id="metered-again", job_name="metered"))
        want_sink = (summary["written"], sum(r["bytes"] for r in ok if r["written"]),
                     summary["assets"] - summary["written"], again.counts.assets)
        if (seen == expect and sink == want_sink) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == expect
    assert sink == want_sink and summary["written"] == 35
    # the latency histogram counts every asset a stage passed on, tagged with model and device
    assert total(series, "ray_factory_stage_asset_seconds_count", stage="recolor",
                 model="recolor/lab", device="cpu", **run) == len(rendered)
    assert total(series, "ray_factory_stage_gpu_seconds_total", **run) == 0  # no GPU held
    # the driver counts each stage's dollars as lineage rows arrive (factory.spec.prices)
    deadline = time.monotonic() + 30
    while (total(series, "ray_factory_stage_cost_usd_total", **run)
           != pytest.approx(summary["cost_usd"], rel=1e-6)) and time.monotonic() < deadline:
        time.sleep(1)
        series = scrape()
    assert total(series, "ray_factory_stage_cost_usd_total", **run) == pytest.approx(
        summary["cost_usd"], rel=1e-6) and summary["cost_usd"] > 0
    assert total(series, "ray_factory_stage_cost_usd_total", stage="recolor", **run) == (
        pytest.approx(summary["cost"]["stages"]["recolor"]["usd"], rel=1e-6))
    names = {name for name in series}
    assert names <= set(EXPORTED) and "ray_factory_stage_asset_seconds_bucket" in names
