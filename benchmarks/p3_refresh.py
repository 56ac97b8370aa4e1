"""P3: incremental refresh with 1% of SKUs changed ÷ the full run, same job, same process.

Runs the job over the whole catalog, changes one SKU in a hundred (a prompt field), then runs
``refresh`` and prints both wall times and their ratio.

- ``--chain tiny`` (default): the tiny generate + recolor pair (random-weight SD) on a local Ray.
- ``--chain sim``: the five GPU stages of ``jobs/catalog-sim.yaml`` (``stages/simulated.py``:
  each holds its share of a logical GPU and sleeps its card's device time per batch, times
  ``--time-scale``) on a local Ray with one logical GPU, images ``--side`` pixels square out of
  generate, WebP as the spec says.

    python benchmarks/p3_refresh.py [--rows 5000]
    python benchmarks/p3_refresh.py --chain sim --rows 50000 --time-scale 0.002 --side 32
Goal (PERFORMANCE.md): <= 0.03.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import yaml
from _common import catalog, job, start_ray, workdir

STAGES = [
    {"kind": "generate", "model": "sd-tiny",
     "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
     "resources": {"num_cpus": 1, "batch_size": 16}},
    {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
     "resources": {"num_cpus": 0.5, "batch_size": 16}},
]
SIM_SPEC = Path(__file__).resolve().parents[1] / "jobs" / "catalog-sim.yaml"


def sim_stages(time_scale: float, side: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """catalog-sim.yaml's stages (one actor per pool, one logical GPU) and its output."""
    spec = yaml.safe_load(SIM_SPEC.read_text(encoding="utf-8"))
    for stage in spec["stages"]:
        stage["resources"]["concurrency"] = 1
        params = stage.setdefault("params", {})
        params["time_scale"] = time_scale
        if stage["kind"] == "generate":
            params.update(width=side, height=side)
    output = {k: v for k, v in spec["output"].items() if k != "uri"}
    return spec["stages"], output


def start_sim_ray(job_) -> None:
    """A local Ray with one logical GPU (the simulated stages' shares add up to one), with the
    settings of the factory's own local Ray."""
    import ray
    import ray.data

    from factory.run.pipeline import LOCAL_RAY_CONFIG, local_cpus
    from factory.run.placement import logical_cpus_needed

    ray.init(address="local", num_cpus=local_cpus(logical_cpus_needed(job_)), num_gpus=1,
             include_dashboard=False, logging_level="WARNING", _system_config=LOCAL_RAY_CONFIG)
    ray.data.DataContext.get_current().enable_progress_bars = False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--chain", choices=("tiny", "sim"), default="tiny")
    parser.add_argument("--time-scale", type=float, default=0.002,
                        help="sim: multiplies every modelled device second")
    parser.add_argument("--side", type=int, default=32, help="sim: generate's image side")
    args = parser.parse_args()
    directory = workdir("p3")
    manifest = catalog(directory, args.rows)
    if args.chain == "sim":
        stages, output = sim_stages(args.time_scale, args.side)
        extra = {"output": {"uri": str(directory / "out"), **output}}
        full_job = job(directory, manifest, stages, **extra)
        start_sim_ray(full_job)
        label = (f"the simulated five-stage chain (device times x{args.time_scale:g}, "
                 f"{args.side} px), local Ray, 1 logical GPU")
    else:
        from factory.core import settings
        from stages.tiny.models import make_all

        make_all(settings.models_dir())
        stages, extra = STAGES, {}
        full_job = job(directory, manifest, stages)
        start_ray(full_job)
        label = "tiny generate + recolor, local Ray"
    from factory.run.pipeline import run_job
    from factory.run.refresh import refresh

    started = time.perf_counter()
    full = run_job(full_job)
    full_s = time.perf_counter() - started
    with manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    colour = rows[0].index("color")
    for row in rows[1::100]:
        row[colour] = "ultraviolet"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    started = time.perf_counter()
    report = refresh(job(directory, manifest, stages, **extra))  # the catalog read again
    refresh_s = time.perf_counter() - started
    print(f"P3 incremental refresh, {args.rows} SKUs, {label}")
    print(f"  full run:  {full_s:7.1f} s ({full.counts.assets} assets)")
    print(f"  refresh:   {refresh_s:7.1f} s ({report.line()})")
    print(f"  refresh / full: {refresh_s / full_s:.4f}   (goal <= 0.03)")


if __name__ == "__main__":
    main()
