"""P2: orchestration overhead — no-op stages at 1024², PNG encode and write included.

Runs a catalog through generate/synthetic (a seeded gradient, ~no model) and two pass-through
stages into the local store, on a local Ray, and prints milliseconds per asset end to end.
For reference it also times, in this process and on one core, the work a row needs anyway
(making the gradient, encoding the PNG, writing the file), so the Ray share can be read off.

    python benchmarks/p2_overhead.py [--rows 300] [--size 1024]
Goal (PERFORMANCE.md): < 50 ms per asset in total on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import catalog, job, start_ray, workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    directory = workdir("p2")
    manifest = catalog(directory, args.rows)
    stages = [
        {"kind": "generate", "model": "synthetic",
         "params": {"width": args.size, "height": args.size},
         "resources": {"num_cpus": 0.5, "batch_size": 8}},
        {"kind": "identity", "model": "passthrough", "name": "noop1",
         "resources": {"num_cpus": 0.25, "batch_size": 8}},
        {"kind": "identity", "model": "passthrough", "name": "noop2",
         "resources": {"num_cpus": 0.25, "batch_size": 8}},
    ]
    the_job = job(directory, manifest, stages)
    start_ray(the_job)
    from factory.run.pipeline import run_job

    result = run_job(the_job)
    assert result.counts.assets == args.rows, result.summary()

    # The unavoidable per-row work, serially on one core in this process.
    from factory.core import images
    from factory.store.storage import Store
    from stages.base import Resources, StagePlan
    from stages.registry import get_card

    card = get_card("generate/synthetic")
    plan = StagePlan(name="g", card=card, params=card.params(width=args.size, height=args.size),
                     source="", revision="", resources=Resources())
    gen = card.runtime(plan=plan)
    store = Store(str(directory / "serial"))
    n = 20
    started = time.perf_counter()
    for i in range(n):
        pixels = gen._predict({"seed": np.array([i]), "sku": np.array([f"s{i}"])})["image"][0]
        store.put_if_absent(f"a/{i}.png", images.encode(pixels, "png"))
    serial_ms = (time.perf_counter() - started) * 1000 / n

    e2e_ms = result.wall_s * 1000 / result.counts.assets
    print(f"P2 orchestration overhead, {args.rows} assets at {args.size}x{args.size} PNG, "
          f"local Ray on this machine")
    print(f"  end to end (incl. Ray Data start-up and actor start): {result.wall_s:.2f} s "
          f"= {e2e_ms:.1f} ms/asset (goal < 50 ms/asset)")
    print(f"  unavoidable work per asset, serial on one core (gradient + PNG encode + write): "
          f"{serial_ms:.1f} ms")
    print(f"  => the same work spread over 2 cores would take >= {serial_ms / 2:.1f} ms/asset; "
          f"orchestration adds ~{e2e_ms - serial_ms / 2:.1f} ms/asset on top")


if __name__ == "__main__":
    main()
