"""The factory's metrics, exported through Ray's metrics agent (Prometheus text on every node).

Stage actors and sink tasks record them with ``ray.util.metrics``; Ray Data's own per-operator
metrics (``ray_data_*``) keep the stage names the pools already carry. Every factory metric is
tagged with the job's name (``job_name``) and the run id; stage metrics also with the stage, the model and the device.

Ray prefixes names with ``ray_`` and gives counters a ``_total`` suffix: the counter
``factory_stage_rows_in`` is scraped as ``ray_factory_stage_rows_in_total``, the histogram
``factory_stage_asset_seconds`` as ``ray_factory_stage_asset_seconds_bucket`` / ``_sum`` /
``_count``. ``EXPORTED`` lists every scraped name (the Grafana dashboard's queries use them).

``factory schedule run`` is not a Ray process: its ``SCHEDULER_METRICS`` go through
``prometheus_client`` on a port of its own instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

# "job_name", not "job": Prometheus renames a scraped "job" label (its own scrape job wins).
STAGE_TAGS = ("job_name", "run_id", "stage", "model", "device")
SINK_TAGS = ("job_name", "run_id")

#: name -> (kind, tag keys, description)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "factory_stage_rows_in": ("counter", STAGE_TAGS, "Rows a stage received (every status)."),
    "factory_stage_rows_out": ("counter", STAGE_TAGS, "Rows a stage passed on as ok."),
    "factory_stage_failures": ("counter", STAGE_TAGS, "Rows that failed inside a stage."),
    "factory_stage_asset_seconds": ("histogram", STAGE_TAGS,
                                    "Seconds of a stage's model call per asset."),
    "factory_stage_gpu_seconds": ("counter", STAGE_TAGS,
                                  "Wall seconds of model calls times the GPUs the actor holds."),
    "factory_stage_cost_usd": ("counter", STAGE_TAGS,
                               "Dollars of the assets a stage rendered (factory.spec.prices), "
                               "recorded by the driver as lineage rows arrive."),
    "factory_sink_bytes_written": ("counter", SINK_TAGS, "Bytes of assets written."),
    "factory_sink_assets_written": ("counter", SINK_TAGS, "Assets written by this run."),
    "factory_sink_assets_skipped": ("counter", SINK_TAGS,
                                    "Assets found already in the store (not rendered again)."),
}
#: Histogram bucket bounds, seconds per asset (tiny CPU models to large GPU diffusion).
LATENCY_BOUNDARIES = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                      30.0, 60.0]


#: Metrics of ``factory schedule run``, a process outside Ray: it serves them itself on
#: ``--metrics-port`` (``prometheus_client``), so they are scraped as named here plus
#: ``_total``, with no ``ray_`` prefix. name -> (tag keys, description); all counters.
SCHEDULER_METRICS: dict[str, tuple[tuple[str, ...], str]] = {
    "factory_schedule_skipped": (("job_name", "schedule"),
                                 "Due slots not submitted because a run of the job was still "
                                 "running (overlap: skip)."),
}


def exported(name: str) -> list[str]:
    """The Prometheus series names Ray exports for one factory metric."""
    kind = METRICS[name][0]
    if kind == "counter":
        return [f"ray_{name}_total"]
    return [f"ray_{name}_{suffix}" for suffix in ("bucket", "sum", "count")]


EXPORTED: tuple[str, ...] = tuple(s for name in METRICS for s in exported(name))


@dataclass(frozen=True)
class RunLabels:
    """What every metric of a run is tagged with; passed to actors and sink tasks."""

    job: str = ""
    run_id: str = ""

    def tags(self, **more: str) -> dict[str, str]:
        return {"job_name": self.job, "run_id": self.run_id, **more}


@lru_cache(maxsize=None)
def _metric(name: str) -> Any:
    from ray.util import metrics

    kind, tags, description = METRICS[name]
    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tags)
    return metrics.Histogram(name, description=description, boundaries=LATENCY_BOUNDARIES,
                             tag_keys=tags)


def inc(name: str, value: float, tags: Mapping[str, str]) -> None:
    """Add ``value`` to a counter (nothing for a zero)."""
    if value:
        _metric(name).inc(value, tags=dict(tags))


def observe(name: str, value: float, tags: Mapping[str, str]) -> None:
    """Record one histogram observation."""
    _metric(name).observe(value, tags=dict(tags))


@lru_cache(maxsize=None)
def _scheduler_counters() -> tuple[CollectorRegistry, dict[str, Counter]]:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry(auto_describe=True)
    return registry, {name: Counter(name, description, labelnames=tags, registry=registry)
                      for name, (tags, description) in SCHEDULER_METRICS.items()}


def scheduler_registry() -> CollectorRegistry:
    """The ``prometheus_client`` registry of ``SCHEDULER_METRICS`` (one per process)."""
    return _scheduler_counters()[0]


def scheduler_inc(name: str, tags: Mapping[str, str]) -> None:
    """Add one to a counter of ``SCHEDULER_METRICS``."""
    _scheduler_counters()[1][name].labels(**tags).inc()


def serve_scheduler_metrics(port: int) -> None:
    """Serve ``SCHEDULER_METRICS`` for Prometheus on ``port`` (``/metrics``), in a thread."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=scheduler_registry())
