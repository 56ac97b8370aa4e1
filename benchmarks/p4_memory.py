"""P4: peak memory at 100k SKUs ÷ at 10k SKUs, no-op stages (streaming, not loading).

Each size runs in a fresh process with its own local Ray: a catalog of N rows through
generate/synthetic (a seeded gradient at ``--size`` px) and a pass-through stage into the
local store. A sampler records the driver's peak RSS and the Ray object store's peak bytes in
use (the raylet's own figure), and the ratios between the sizes are printed.

    python benchmarks/p4_memory.py [--rows 10000 100000] [--size 16]
Goal (PERFORMANCE.md): ≤ 1.2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _memory import MemorySampler, mib, report, run_child


def child(rows: int, size: int) -> None:
    from _common import catalog, job, start_ray, workdir

    directory = workdir("p4")
    manifest = catalog(directory, rows)
    stages = [
        {"kind": "generate", "model": "synthetic", "params": {"width": size, "height": size},
         "resources": {"num_cpus": 0.5, "batch_size": 32}},
        {"kind": "identity", "model": "passthrough", "name": "noop",
         "resources": {"num_cpus": 0.25, "batch_size": 32}},
    ]
    the_job = job(directory, manifest, stages)
    with MemorySampler() as peaks:
        start_ray(the_job)
        from factory.run.pipeline import run_job

        result = run_job(the_job)
    assert result.counts.assets == rows, result.summary()
    report(peaks, rows=rows, wall_s=round(result.wall_s, 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.rows[0], args.size)
        return
    results = [run_child(Path(__file__), ["--rows", str(n), "--size", str(args.size)])
               for n in args.rows]
    print(f"P4 peak memory, no-op stages (synthetic {args.size}x{args.size} + pass-through), "
          "local store, one fresh process and local Ray per size")
    for r in results:
        print(f"  {r['rows']:>9,} rows: driver RSS {mib(r['driver_rss'])}, object store in use "
              f"{mib(r['object_store'])} (spilled {mib(r['spilled'])}), {r['wall_s']:.1f} s, "
              f"{r['store_samples']} object store samples")
    small, large = results[0], results[-1]
    for name in ("driver_rss", "object_store"):
        ratio = large[name] / small[name] if small[name] else float("nan")
        print(f"  {name} ratio {large['rows']:,} ÷ {small['rows']:,}: {ratio:.2f} (goal ≤ 1.2)")


if __name__ == "__main__":
    main()
