"""Calibration: measured seconds per asset per stage, from committed runs' lineage.

A stage's rate comes from the lineage of committed runs in the same output store whose stage
ran the same card with the same params (its ``params_hash``: size, steps...) on the same kind
of device. ``factory.run.forecast`` predicts a run from it (or from a probe run where there is none);
``factory.cost.budget`` prices a row before the run has costs of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc

from factory.store.storage import Store
from stages.base import StagePlan

if TYPE_CHECKING:
    from factory.spec.job import Job


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


def _device(plan: StagePlan) -> str:
    return "cuda" if plan.resources.num_gpus > 0 else "cpu"


def calibrate(store: Store, job: Job) -> Calibration:
    """Seconds per asset per stage from the committed runs in ``store`` whose stage ran the
    same card, params hash and device kind as the job's; the wall times of runs that match the
    whole chain."""
    import pyarrow.parquet as pq

    from factory.spec.keys import params_hash
    from factory.store.run_tables import LINEAGE, list_runs

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
        # rows rendered: the most any stage rendered (with routes no stage renders them all)
        rendered = max(ms[name][-1].size for name in want) if matched == len(want) else 0
        if matched == len(want) and rendered and "wall_s" in summary:
            walls.append((rendered, float(summary["wall_s"])))
    rates = {name: Rate(seconds=float(np.concatenate(parts).mean()) / 1000.0,
                        assets=int(sum(p.size for p in parts)), runs=tuple(used[name]))
             for name, parts in ms.items() if parts}
    return Calibration(rates=rates, walls=tuple(walls))
