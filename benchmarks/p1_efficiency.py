"""P1: pipeline efficiency — end-to-end assets/s ÷ the ideal from isolated stage runs.

Each stage of the chain (tiny models, the same params and batch sizes as the job) is first run
alone in this process on the same rows, with torch limited to the threads its actor gets, to
get seconds per asset; the sink's encode-and-write is timed the same way. The time-shared
ideal is 1 / Σ(stage s/asset) scaled by the cores that can work at once; the job is then run
end to end on a local Ray and its assets/s divided by that ideal.

    python benchmarks/p1_efficiency.py [--rows 200] [--chain two|five]
Goal (PERFORMANCE.md): >= 0.90.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import catalog, job, start_ray, workdir

CHAINS = {
    "two": [
        {"kind": "generate", "model": "sd-tiny",
         "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
         "resources": {"num_cpus": 1, "batch_size": 8}},
        {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
         "resources": {"num_cpus": 1, "batch_size": 8}},
    ],
    # the demo's chain: diffusion before the upscale
    "five": [
        {"kind": "generate", "model": "sd-tiny",
         "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
         "resources": {"num_cpus": 1, "batch_size": 8}},
        {"kind": "segment", "model": "u2net-tiny", "resources": {"num_cpus": 1, "batch_size": 8}},
        {"kind": "lora", "model": "sd-tiny-brand",
         "params": {"lora": "tiny:sd-tiny-lora", "strength": 0.4, "steps": 2},
         "resources": {"num_cpus": 1, "batch_size": 8}},
        {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
         "resources": {"num_cpus": 1, "batch_size": 8}},
        {"kind": "upscale", "model": "swin2sr-tiny-x2",
         "params": {"tile": 64, "overlap": 16, "min_tile": 32},
         "resources": {"num_cpus": 1, "batch_size": 8}},
    ],
}


def isolated_s_per_asset(the_job, rows: int) -> dict[str, float]:
    """Run each stage's runtime alone over the validated rows, batch by batch."""
    import torch

    from factory.manifest import _to_table, iter_records, scan
    from factory.pipeline import row_rules, sink_config
    from factory.rows import validate_batch
    from factory.sink import write_assets
    from factory.storage import Store

    info = scan(the_job.manifest_uri, the_job.manifest_format)
    rules = row_rules(the_job, info)
    table = _to_table(list(iter_records(the_job.manifest_uri, the_job.manifest_format)))
    batch = validate_batch({k: table[k].to_numpy(zero_copy_only=False)
                            for k in table.column_names}, rules=rules)
    timings: dict[str, float] = {}
    for plan in the_job.stages:
        torch.set_num_threads(max(1, int(plan.resources.num_cpus)))
        stage = plan.card.runtime(plan=plan)
        size = plan.resources.batch_size
        stage({k: v[:size] for k, v in batch.items()})  # warm-up, as an actor's first batch
        outputs = []
        started = time.perf_counter()
        for i in range(0, rows, size):
            outputs.append(stage({k: v[i:i + size] for k, v in batch.items()}))
        timings[plan.name] = (time.perf_counter() - started) / rows
        batch = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    config = sink_config(the_job, Store(the_job.output.uri + "-iso"))
    started = time.perf_counter()
    for i in range(0, rows, 8):
        write_assets({k: v[i:i + 8] for k, v in batch.items()}, config=config)
    timings["sink"] = (time.perf_counter() - started) / rows
    torch.set_num_threads(os.cpu_count() or 1)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--chain", choices=sorted(CHAINS), default="five")
    args = parser.parse_args()
    directory = workdir("p1")
    the_job = job(directory, catalog(directory, args.rows), CHAINS[args.chain])
    from factory import settings
    from factory.tiny_models import make_all

    make_all(settings.models_dir())
    iso = isolated_s_per_asset(the_job, args.rows)
    start_ray(the_job)
    from factory.pipeline import run_job

    seen: list[tuple[float, int]] = []
    result = run_job(the_job, on_progress=lambda c, _: seen.append((time.perf_counter(), c.assets)))
    assert result.counts.assets == args.rows, result.summary()
    (t0, a0), (t1, a1) = seen[0], seen[-1]
    steady = (a1 - a0) / (t1 - t0) if t1 > t0 else float("nan")
    cores = os.cpu_count() or 1
    serial_rate = 1.0 / sum(iso.values())
    ideal = serial_rate * min(cores, len(iso))
    e2e = result.assets_per_s
    print(f"P1 pipeline efficiency, chain '{args.chain}', {args.rows} assets, {cores} cores")
    for name, seconds in iso.items():
        print(f"  isolated {name:10} {seconds * 1000:8.2f} ms/asset  ({1 / seconds:8.1f} assets/s)")
    print(f"  ideal, time-shared on one core  (1/Σ): {serial_rate:8.2f} assets/s")
    print(f"  ideal, time-shared on {cores} cores:      {ideal:8.2f} assets/s")
    print(f"  end to end on local Ray:              {e2e:8.2f} assets/s "
          f"(wall {result.wall_s:.1f} s, incl. Ray Data and actor start-up)")
    print(f"  steady state (first to last asset):   {steady:8.2f} assets/s")
    print(f"  efficiency, whole run:   {e2e / ideal:.2f} of the {cores}-core ideal, "
          f"{e2e / serial_rate:.2f} of the 1-core ideal   (goal >= 0.90)")
    print(f"  efficiency, steady state: {steady / ideal:.2f} of the {cores}-core ideal, "
          f"{steady / serial_rate:.2f} of the 1-core ideal")


if __name__ == "__main__":
    main()
