"""P3: incremental refresh with 1% of SKUs changed ÷ the full run, same job, same process.

Runs the job over the whole catalog, changes one SKU in a hundred (a prompt field), then runs
``refresh`` and prints both wall times and their ratio. The chain is the tiny generate + recolor
pair on a local Ray.

    python benchmarks/p3_refresh.py [--rows 5000]
Goal (PERFORMANCE.md): <= 0.03.
"""

from __future__ import annotations

import argparse
import csv
import time

from _common import catalog, job, start_ray, workdir

STAGES = [
    {"kind": "generate", "model": "sd-tiny",
     "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
     "resources": {"num_cpus": 1, "batch_size": 16}},
    {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
     "resources": {"num_cpus": 0.5, "batch_size": 16}},
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    from factory.core import settings
    from stages.tiny.models import make_all

    make_all(settings.models_dir())
    directory = workdir("p3")
    manifest = catalog(directory, args.rows)
    full_job = job(directory, manifest, STAGES)
    start_ray(full_job)
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
    report = refresh(job(directory, manifest, STAGES))
    refresh_s = time.perf_counter() - started
    print(f"P3 incremental refresh, {args.rows} SKUs, tiny generate + recolor, local Ray")
    print(f"  full run:  {full_s:7.1f} s ({full.counts.assets} assets)")
    print(f"  refresh:   {refresh_s:7.1f} s ({report.line()})")
    print(f"  refresh / full: {refresh_s / full_s:.3f}   (goal <= 0.03)")


if __name__ == "__main__":
    main()
