"""A forecast before the run: how long, how many GPU-hours and how many dollars, per stage.

The rows that would render are counted the way ``run_job`` decides them (the manifest's
splits read, every row validated, the store listed for assets already there) but in this
process, with no Ray and no actor pool. Each stage's seconds per asset come from a
calibration: the lineage of committed runs in the same output store whose stage ran the same
card with the same params (its ``params_hash``: size, steps...) on the same kind of device,
or, where none did, a short probe run of the job's first rows into a scratch store
(``probe``). Costs use the job's prices (``factory.spec.prices``).

Wall time: ``fixed + rows x per_asset``. With two or more calibration runs of the whole chain
at different sizes, both come from a least-squares line through their (rendered rows, wall
seconds); with one, ``per_asset`` is the slowest pool's seconds per asset (its stages'
seconds over its actors) and ``fixed`` the rest of that run's wall time (scan, model loads).

With routes (``factory.spec.routes``) a stage renders only the rows of the routes through it: its
busy seconds are its rate times those rows, and each route's dollars are its rows times the
rates of its own stages.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from factory.catalog.manifest import ManifestInfo
from factory.cost.calibration import Calibration, Rate, calibrate
from factory.spec.job import Job
from factory.spec.prices import Prices, StageShare, stage_shares
from factory.store.storage import Store

#: A probe's rows when no committed run calibrates the chain.
PROBE_ROWS = 8


@dataclass(frozen=True)
class StageForecast:
    """One stage's line of the forecast."""

    name: str
    model: str
    seconds_per_asset: float
    busy_s: float
    gpu_hours: float
    cpu_hours: float
    usd: float


@dataclass(frozen=True)
class RouteForecast:
    """One route's line of the forecast: its rows to render and what they cost."""

    name: str
    rows: int
    usd_per_asset: float
    usd: float


@dataclass(frozen=True)
class Forecast:
    """What ``factory plan`` prints: rows by fate, per-stage predictions and the totals."""

    rows: int
    rejected: int
    existing: int
    to_render: int
    stages: tuple[StageForecast, ...]
    wall_s: float
    prices: Prices
    calibrated_from: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: with routes: each route's rows and dollars
    routes: tuple[RouteForecast, ...] = ()

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def usd(self) -> float:
        return sum(s.usd for s in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "rejected": self.rejected, "existing": self.existing,
                "to_render": self.to_render, "wall_s": round(self.wall_s, 3),
                "gpu_hours": self.gpu_hours, "usd": self.usd, "prices": self.prices.as_dict(),
                "calibrated_from": list(self.calibrated_from), "notes": list(self.notes),
                "stages": [vars(s) for s in self.stages],
                **({"routes": [vars(r) for r in self.routes]} if self.routes else {})}


def count_work(job: Job, *, limit: int | None = None) -> tuple[ManifestInfo, dict[str, int]]:
    """The manifest's scan and its rows by fate (``ok``: to render, ``exists``, ``rejected``),
    decided by the same functions as ``run_job``'s work list, in this process."""
    info, tally, _ = tally_work(job, limit=limit)
    return info, tally


def tally_work(job: Job, *, limit: int | None = None
               ) -> tuple[ManifestInfo, dict[str, int], dict[str, int]]:
    """``count_work``'s scan and fates, and the rows to render per route (empty without
    routes)."""
    from factory.catalog.manifest import plan_splits, read_split, scan
    from factory.run.work import row_rules
    from factory.run.rows import validate_batch
    from factory.sink.assets import list_existing, mark_existing

    store = Store(job.output.uri, job.s3)
    info = scan(job.manifest_uri, job.manifest_format, limit=limit, s3_options=job.s3,
                default_variant=job.variant, catalog=job.catalog)
    rules = row_rules(job, info)
    existing = list_existing(store, rows=info.rows)
    tally: dict[str, int] = {}
    routes: dict[str, int] = {}
    for split in plan_splits(job.manifest_uri, job.manifest_format, limit=limit,
                             s3_options=job.s3):
        for table in read_split(job.manifest_uri, job.manifest_format, split, limit=limit,
                                s3_options=job.s3, catalog=job.catalog):
            batch = {name: table[name].to_numpy(zero_copy_only=False)
                     for name in table.column_names}
            batch = mark_existing(validate_batch(batch, rules=rules), store=store,
                                  existing=existing)
            for status in batch["status"]:
                tally[status] = tally.get(status, 0) + 1
            if "route" in batch:
                for status, route in zip(batch["status"], batch["route"]):
                    if status == "ok":
                        routes[route] = routes.get(route, 0) + 1
    return info, tally, routes


def probe(job: Job, *, rows: int = PROBE_ROWS) -> Calibration:
    """Run the job's first ``rows`` manifest rows through the real stages into a scratch
    store (a temporary directory, removed after) and calibrate from that run. Needs
    ``ray.init``."""
    from factory.run.pipeline import run_job

    with tempfile.TemporaryDirectory(prefix="factory-probe-") as scratch:
        # a probe is no run of the job's: its webhooks do not hear of it
        probe_job = replace(job.with_overrides(output_uri=scratch, run_id="probe"), notify=None)
        run_job(probe_job, limit=rows)
        return calibrate(Store(scratch), probe_job)


def stage_rows(job: Job, to_render: int, routes: Mapping[str, int] | None = None
               ) -> dict[str, int]:
    """Rows each stage renders: all ``to_render``, or with routes those of its routes
    (``routes``: rows to render per route, from ``tally_work``)."""
    if job.routes is None or routes is None:
        return {p.name: to_render for p in job.stages}
    return {p.name: sum(routes.get(r, 0) for r in p.routes) for p in job.stages}


def predict(job: Job, calibration: Calibration, *, rows: int, rejected: int, existing: int,
            to_render: int, routes: Mapping[str, int] | None = None) -> Forecast:
    """The forecast for ``to_render`` rows from a calibration that covers every stage that
    renders a row (with routes, ``routes`` gives the rows to render per route)."""
    shares = stage_shares(job.pools)
    prices = job.prices
    counts = stage_rows(job, to_render, routes)
    lines = []
    for share in shares:
        rate = calibration.rates.get(share.name, Rate(0.0, 0, ()))  # missing: renders nothing
        busy = rate.seconds * counts[share.name]
        gpu_s, cpu_s = busy * share.gpus, busy * share.cpus
        usd = float(prices.usd(gpu_s, cpu_s)) + _hosted_usd(job, share, rate) * counts[share.name]
        lines.append(StageForecast(name=share.name, model=share.model,
                                   seconds_per_asset=rate.seconds, busy_s=busy,
                                   gpu_hours=gpu_s / 3600, cpu_hours=cpu_s / 3600, usd=usd))
    wall, notes = _wall(job, calibration, to_render, counts)
    runs = sorted({r for rate in calibration.rates.values() for r in rate.runs})
    return Forecast(rows=rows, rejected=rejected, existing=existing, to_render=to_render,
                    stages=tuple(lines), wall_s=wall, prices=prices, calibrated_from=tuple(runs),
                    notes=tuple(notes), routes=_route_lines(job, calibration, shares, routes))


def _route_lines(job: Job, calibration: Calibration, shares: tuple[StageShare, ...],
                 routes: Mapping[str, int] | None) -> tuple[RouteForecast, ...]:
    """Each route's rows and dollars: its rows x the rates of its own stages."""
    if job.routes is None or routes is None:
        return ()
    lines = []
    for route in job.routes.chains:
        per_asset = 0.0
        for share in shares:
            if share.name in route and share.hosted:
                per_asset += _hosted_usd(job, share, calibration.rates.get(share.name))
            elif share.name in route and share.name in calibration.rates:
                seconds = calibration.rates[share.name].seconds
                per_asset += float(job.prices.usd(seconds * share.gpus, seconds * share.cpus))
        n = routes.get(route.name, 0)
        lines.append(RouteForecast(name=route.name, rows=n, usd_per_asset=per_asset,
                                   usd=per_asset * n))
    return tuple(lines)


def _hosted_usd(job: Job, share: StageShare, rate: Rate | None) -> float:
    """A hosted stage's dollars per asset: the units one asset bills (``expected_units``: its
    params' megapixels, one image; for seconds, its measured seconds) x the price per unit."""
    if not share.hosted:
        return 0.0
    from stages.hosted import expected_units

    plan = next(p for p in job.stages if p.name == share.name)
    units = expected_units(plan)
    if units is None:
        units = rate.seconds if rate is not None else 0.0
    return float(job.prices.units_usd(units, share))


def _wall(job: Job, calibration: Calibration, n: int,
          counts: Mapping[str, int]) -> tuple[float, list[str]]:
    if n == 0:
        return 0.0, ["nothing to render"]
    # a stage's seconds per row of the run: its rate x the share of rows it renders
    per_row = {p.name: calibration.rates[p.name].seconds * counts[p.name] / n
               for p in job.stages if counts[p.name]}
    per_asset = max(sum(per_row.get(p.name, 0.0) for p in pool.plans) / pool.resources.concurrency
                    for pool in job.pools)
    points = sorted(set(calibration.walls))
    if len({p[0] for p in points}) >= 2:
        x = np.array([p[0] for p in points], dtype=float)
        y = np.array([p[1] for p in points])
        slope, fixed = np.polyfit(x, y, 1)
        if slope > 0:
            return float(max(fixed, 0.0) + slope * n), [
                f"wall time: a line through {len(points)} runs' (rows, wall s)"]
    if points:
        rendered, wall = points[-1]
        fixed = max(wall - rendered * per_asset, 0.0)
        return fixed + n * per_asset, [
            (f"wall time: {fixed:.1f} s fixed (the calibration run's wall time beyond its "
             f"slowest pool) + {per_asset:.3f} s per asset")]
    return n * per_asset, [("wall time: the slowest pool's time only (no whole-chain run "
                            "to measure the fixed start-up)")]
