"""A plan before the run: how long, how many GPU-hours and how many dollars, per stage.

The rows that would render are counted the way ``run_job`` decides them (the manifest's
splits read, every row validated, the store listed for assets already there) but in this
process, with no Ray and no actor pool. Each stage's seconds per asset come from a
calibration: the lineage of committed runs in the same output store whose stage ran the same
card with the same params (its ``params_hash``: size, steps...) on the same kind of device,
or, where none did, a short probe run of the job's first rows into a scratch store
(``probe``). Costs use the job's prices (``factory.pricing``).

Wall time: ``fixed + rows x per_asset``. With two or more calibration runs of the whole chain
at different sizes, both come from a least-squares line through their (rendered rows, wall
seconds); with one, ``per_asset`` is the slowest pool's seconds per asset (its stages'
seconds over its actors) and ``fixed`` the rest of that run's wall time (scan, model loads).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from factory.pricing import Prices, stage_shares
from factory.storage import Store

#: A probe's rows when no committed run calibrates the chain.
PROBE_ROWS = 8


@dataclass(frozen=True)
class Rate:
    """A stage's measured seconds per asset, and where they come from."""

    seconds: float
    assets: int
    runs: tuple[str, ...]


@dataclass(frozen=True)
class Calibration:
    """Seconds per asset per stage, and the (rendered rows, wall seconds) of whole-chain runs."""

    rates: Mapping[str, Rate]
    walls: tuple[tuple[int, float], ...] = ()

    def missing(self, stages: list[str]) -> list[str]:
        return [s for s in stages if s not in self.rates]


@dataclass(frozen=True)
class StagePlanCost:
    """One stage's line of the plan."""

    name: str
    model: str
    seconds_per_asset: float
    busy_s: float
    gpu_hours: float
    cpu_hours: float
    usd: float


@dataclass(frozen=True)
class CostPlan:
    """The plan: rows by fate, per-stage predictions and the totals."""

    rows: int
    rejected: int
    existing: int
    to_render: int
    stages: tuple[StagePlanCost, ...]
    wall_s: float
    prices: Prices
    calibrated_from: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

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
                "stages": [vars(s) for s in self.stages]}


def count_work(job: Any, *, limit: int | None = None) -> tuple[Any, dict[str, int]]:
    """The manifest's scan and its rows by fate (``ok``: to render, ``exists``, ``rejected``),
    decided by the same functions as ``run_job``'s work list, in this process."""
    from factory.manifest import plan_splits, read_split, scan
    from factory.pipeline import row_rules
    from factory.rows import validate_batch
    from factory.sink import list_existing, mark_existing

    store = Store(job.output.uri, job.s3)
    info = scan(job.manifest_uri, job.manifest_format, limit=limit, s3_options=job.s3,
                default_variant=job.variant, catalog=job.catalog)
    rules = row_rules(job, info)
    existing = list_existing(store, rows=info.rows)
    tally: dict[str, int] = {}
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
    return info, tally


def _device(plan: Any) -> str:
    return "cuda" if plan.resources.num_gpus > 0 else "cpu"


def calibrate(store: Store, job: Any) -> Calibration:
    """Seconds per asset per stage from the committed runs in ``store`` whose stage ran the
    same card, params hash and device kind as the job's; the wall times of runs that match the
    whole chain."""
    import pyarrow.parquet as pq

    from factory.keys import params_hash
    from factory.runs import LINEAGE, list_runs

    want = {p.name: (p.card.name, params_hash(p), _device(p)) for p in job.stages}
    ms: dict[str, list[np.ndarray]] = {name: [] for name in want}
    used: dict[str, list[str]] = {name: [] for name in want}
    walls = []
    for run_id, summary in list_runs(store):
        with store.open_input_file(f"runs/{run_id}/{LINEAGE}") as file:
            lineage = pq.ParquetFile(file)
            wanted = {f"{name}{suffix}" for name in want
                      for suffix in ("_model", "_params_hash", "_placement")}
            wanted |= {f"ms_{name}" for name in want}
            table = lineage.read(columns=[c for c in lineage.schema_arrow.names if c in wanted])
        if table.num_rows == 0:
            continue
        matched = 0
        for name, (model, phash, device) in want.items():
            columns = [f"{name}_model", f"{name}_params_hash", f"ms_{name}", f"{name}_placement"]
            if not all(c in table.column_names for c in columns):
                continue
            ran = pc.and_(pc.and_(pc.equal(table[f"{name}_model"], model),
                                  pc.equal(table[f"{name}_params_hash"], phash)),
                          pc.greater(pc.fill_null(table[f"ms_{name}"], 0.0), 0.0))
            ran = pc.and_(ran, pc.match_substring(table[f"{name}_placement"],
                                                  f"device={device}"))
            values = pc.filter(table[f"ms_{name}"], pc.fill_null(ran, False)).to_numpy()
            if values.size:
                channels = len(summary.get("channels") or ()) or 1
                # with channels a row's lineage repeats its stage time once per channel
                ms[name].append(values[::channels] if channels > 1 else values)
                used[name].append(run_id)
                matched += 1
        rendered = sum(v.size for v in ms[job.stages[0].name][-1:]) if matched else 0
        if matched == len(want) and rendered and "wall_s" in summary:
            walls.append((rendered, float(summary["wall_s"])))
    rates = {name: Rate(seconds=float(np.concatenate(parts).mean()) / 1000.0,
                        assets=int(sum(p.size for p in parts)), runs=tuple(used[name]))
             for name, parts in ms.items() if parts}
    return Calibration(rates=rates, walls=tuple(walls))


def probe(job: Any, *, rows: int = PROBE_ROWS) -> Calibration:
    """Run the job's first ``rows`` manifest rows through the real stages into a scratch
    store (a temporary directory, removed after) and calibrate from that run. Needs
    ``ray.init``."""
    from factory.pipeline import run_job

    with tempfile.TemporaryDirectory(prefix="factory-probe-") as scratch:
        probe_job = job.with_overrides(output_uri=scratch, run_id="probe")
        run_job(probe_job, limit=rows)
        return calibrate(Store(scratch), probe_job)


def predict(job: Any, calibration: Calibration, *, rows: int, rejected: int, existing: int,
            to_render: int) -> CostPlan:
    """The plan for ``to_render`` rows from a calibration that covers every stage."""
    shares = stage_shares(job.stages, fuse=job.fuse_cpu_stages, keep=job.keep_intermediates)
    prices = job.prices
    lines = []
    for share, plan in zip(shares, job.stages):
        rate = calibration.rates[share.name]
        busy = rate.seconds * to_render
        gpu_s, cpu_s = busy * share.gpus, busy * share.cpus
        usd = float(prices.usd(gpu_s, cpu_s))
        lines.append(StagePlanCost(name=share.name, model=share.model,
                                   seconds_per_asset=rate.seconds, busy_s=busy,
                                   gpu_hours=gpu_s / 3600, cpu_hours=cpu_s / 3600, usd=usd))
    wall, notes = _wall(job, calibration, to_render)
    runs = sorted({r for rate in calibration.rates.values() for r in rate.runs})
    return CostPlan(rows=rows, rejected=rejected, existing=existing, to_render=to_render,
                    stages=tuple(lines), wall_s=wall, prices=prices, calibrated_from=tuple(runs),
                    notes=tuple(notes))


def _wall(job: Any, calibration: Calibration, n: int) -> tuple[float, list[str]]:
    from stages.chain import pool_resources, pools

    per_asset = max(sum(calibration.rates[p.name].seconds for p in pool)
                    / pool_resources(pool).concurrency
                    for pool in pools(job.stages, fuse=job.fuse_cpu_stages,
                                      keep=job.keep_intermediates))
    if n == 0:
        return 0.0, ["nothing to render"]
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
