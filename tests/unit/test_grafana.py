"""The Grafana dashboard (cluster/grafana/asset-factory.json) queries what the factory exports,
and its ConfigMap is what Grafana's sidecar loads. Hermetic: no Ray, no Prometheus, no network.

Every metric a query names must be one of ``factory.core.metrics.EXPORTED``, with only the labels
that metric is tagged with; every factory metric must be on some panel; the ConfigMap must carry
the JSON file byte for byte.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from factory.core import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "cluster" / "grafana" / "asset-factory.json"
CONFIGMAP = REPO / "cluster" / "grafana" / "asset-factory-dashboard.yaml"
#: Labels Prometheus or KubeRay's PodMonitor add to every series (not factory tags).
SCRAPE_LABELS = {"ray_io_cluster"}
#: Ray's own dashboards' uids: ours must not replace one of them.
RAY_UIDS = {"rayDefaultDashboard", "rayDataDashboard", "rayServeDashboard",
            "rayServeDeploymentDashboard", "rayTrainDashboard", "rayServeLlmDashboard"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}

SERIES = re.compile(r"\b(ray_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # a collapsed row holds its panels
    return out


def _queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


def _metric_name(series: str) -> str:
    """``ray_factory_stage_rows_in_total`` -> ``factory_stage_rows_in``."""
    for name in metrics.METRICS:
        if series in metrics.exported(name):
            return name
    raise AssertionError(f"{series} is not a series the factory exports")


def test_every_query_names_only_metrics_the_factory_exports(dashboard) -> None:
    queries = _queries(dashboard)
    assert len(queries) >= 12
    for title, expr in queries:
        names = [m.group(1) for m in SERIES.finditer(expr)]
        assert names, f"panel {title!r}: {expr!r} names no metric"
        for name in names:
            assert name in metrics.EXPORTED, (
                f"panel {title!r} queries {name}, which factory.core.metrics does not export "
                f"(exported: {', '.join(metrics.EXPORTED)})")


def test_every_factory_metric_is_on_some_panel(dashboard) -> None:
    used = {m.group(1) for _, expr in _queries(dashboard) for m in SERIES.finditer(expr)}
    for name in metrics.METRICS:
        assert used & set(metrics.exported(name)), f"no panel shows {name}"
    histogram = [n for n, (kind, _, _) in metrics.METRICS.items() if kind == "histogram"]
    for name in histogram:  # quantiles need the buckets; the mean needs _sum and _count
        assert set(metrics.exported(name)) <= used, name


def test_queries_filter_and_group_only_by_the_metrics_tags(dashboard) -> None:
    """A label the metric does not carry matches nothing: the panel would be empty."""
    for title, expr in _queries(dashboard):
        tags: set[str] = set()
        for match in SERIES.finditer(expr):
            name = _metric_name(match.group(1))
            allowed = set(metrics.METRICS[name][1]) | SCRAPE_LABELS
            if match.group(1).endswith("_bucket"):
                allowed.add("le")
            tags |= allowed
            selector = match.group(2) or "{}"
            for label, _ in MATCHER.findall(selector):
                assert label in allowed, f"panel {title!r}: {name} has no label {label!r}"
            assert "run_id" in selector and "job" in selector, (
                f"panel {title!r}: {match.group(1)} is not filtered by job and run")
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in grouping.split(","))):
                assert label in tags, f"panel {title!r} groups by {label!r}: {expr}"


def test_queries_are_balanced_and_use_defined_variables(dashboard) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    texts = [expr for _, expr in _queries(dashboard)]
    texts += [v["query"]["query"] for v in dashboard["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    texts += [p["title"] for p in _panels(dashboard)]
    for text in texts:
        for open_, close in ("()", "{}", "[]"):
            assert text.count(open_) == text.count(close), text
        assert text.count('"') % 2 == 0, text
        for name in VARIABLE.findall(text):
            assert name in defined, f"{text!r} uses ${name}, which is not a template variable"


def test_follows_rays_dashboard_conventions(dashboard) -> None:
    assert dashboard["uid"] == "asset-factory" and dashboard["uid"] not in RAY_UIDS
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "run_id", "stage"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"], name
        assert variables[name]["datasource"]["uid"] == "${datasource}", name
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_each_stage_gets_throughput_latency_failures_and_gpu_panels(dashboard) -> None:
    panels = dashboard["panels"]
    (repeated,) = [p for p in panels if p["type"] == "row" and p.get("repeat") == "stage"]
    in_row = panels[panels.index(repeated) + 1:]
    exprs = " ".join(t["expr"] for p in in_row for t in p["targets"])
    assert all("$stage" in p["title"] for p in in_row)
    assert 'stage=~"$stage"' in exprs
    for needed in ("ray_factory_stage_rows_out_total", "ray_factory_stage_failures_total",
                   "ray_factory_stage_gpu_seconds_total", "histogram_quantile(0.5,",
                   "histogram_quantile(0.95,"):
        assert needed in exprs, needed


def test_configmap_embeds_exactly_the_dashboard_for_grafanas_sidecar() -> None:
    docs = [d for d in yaml.safe_load_all(CONFIGMAP.read_text(encoding="utf-8")) if d]
    assert len(docs) == 1
    (configmap,) = docs
    assert configmap["apiVersion"] == "v1" and configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # a string, not 1
    assert list(configmap["data"]) == [DASHBOARD.name]
    assert configmap["data"][DASHBOARD.name] == DASHBOARD.read_text(encoding="utf-8"), (
        "the ConfigMap is stale: regenerate it from asset-factory.json (see its header)")
    # kubectl apply keeps the whole object in an annotation, which may not exceed 256 KiB.
    assert len(CONFIGMAP.read_bytes()) < 256 * 1024
    kubernetes_validate.validate(configmap, kubernetes_validate.latest_version(), strict=True)


def test_the_checks_catch_a_wrong_metric_name(dashboard) -> None:
    """The regex really finds names: a misspelt one in a query is caught."""
    expr = 'sum(rate(ray_factory_stage_rows_outt_total{job=~"$job", run_id=~"$run_id"}[1m]))'
    names = [m.group(1) for m in SERIES.finditer(expr)]
    assert names == ["ray_factory_stage_rows_outt_total"]
    assert names[0] not in metrics.EXPORTED
