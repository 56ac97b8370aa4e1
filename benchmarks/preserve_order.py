"""What ``preserve_order`` costs: one slow batch holds back every output behind it.

A Ray Data plan shaped like the factory's render plan (blocks of 8 rows → an actor pool of 2
→ a sink task per block → the driver), where every batch takes ``--batch-ms`` and every
``--slow-every``-th batch takes ``--slow-s`` instead (a slow model call, or an actor that died
and was restarted). Runs the plan with ``preserve_order`` on and off, interleaved, and prints
the wall time, when the driver had half of the rows, and the longest stretch in which the
driver received nothing (head-of-line blocking). With ``--factory-rows N`` it also times
``run_job`` itself on a no-op chain (synthetic 64 px + pass-through) with the option on and
off (``run_job`` turns it on; here a context that ignores that is swapped in).

    python benchmarks/preserve_order.py [--rows 960] [--slow-every 20] [--slow-s 2]
                                        [--factory-rows 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray.data


class Stage:
    def __init__(self, batch_ms: float, slow_every: int, slow_s: float) -> None:
        self.batch_s, self.slow_every, self.slow_s = batch_ms / 1000, slow_every, slow_s

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = int(batch["id"][0])
        slow = self.slow_every and (first // len(batch["id"])) % self.slow_every == 1
        time.sleep(self.slow_s if slow else self.batch_s)
        return batch


class PinnedOrder(ray.data.ExecutionOptions):
    """Execution options whose ``preserve_order`` no later assignment changes."""

    def __setattr__(self, name: str, value: object) -> None:
        if name != "preserve_order":
            super().__setattr__(name, value)


def sink(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(0.002)
    return batch


def once(args: argparse.Namespace, preserve: bool) -> dict[str, float]:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = preserve
    ds = ray.data.range(args.rows, override_num_blocks=args.rows // 8)
    ds = ds.map_batches(Stage, fn_constructor_kwargs={"batch_ms": args.batch_ms,
                                                      "slow_every": args.slow_every,
                                                      "slow_s": args.slow_s},
                        batch_size=8, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
    ds = ds.map_batches(sink, batch_size=8, num_cpus=0.25)
    started = time.perf_counter()
    arrivals, rows = [], 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows += len(batch["id"])
        arrivals.append((time.perf_counter() - started, rows))
    assert rows == args.rows
    times = [t for t, _ in arrivals]
    gaps = np.diff([0.0, *times])
    half = next(t for t, n in arrivals if n >= args.rows / 2)
    return {"wall": times[-1], "half": half, "max_gap": float(gaps.max())}


def factory_once(rows: int, preserve: bool, tag: str) -> float:
    import copy

    import ray.data

    from _common import catalog, job, workdir
    from factory.run.pipeline import run_job

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options
    pinned = copy.copy(saved)
    pinned.preserve_order = preserve
    pinned.__class__ = PinnedOrder
    ctx.execution_options = pinned
    try:
        directory = workdir(f"order-{tag}")
        stages = [{"kind": "generate", "model": "synthetic", "params": {"width": 64, "height": 64},
                   "resources": {"num_cpus": 0.5, "batch_size": 8}},
                  {"kind": "identity", "model": "passthrough",
                   "resources": {"num_cpus": 0.25, "batch_size": 8}}]
        result = run_job(job(directory, catalog(directory, rows), stages))
        assert ctx.execution_options.preserve_order is preserve
        return result.wall_s
    finally:
        ctx.execution_options = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=960)
    parser.add_argument("--batch-ms", type=float, default=20)
    parser.add_argument("--slow-every", type=int, default=20)
    parser.add_argument("--slow-s", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--factory-rows", type=int, default=0)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    once(args, True)  # warm-up: workers and actors started once
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for preserve in (True, False):
            results[preserve].append(once(args, preserve))
    slow_batches = args.rows // 8 // args.slow_every if args.slow_every else 0
    print(f"preserve_order cost: {args.rows} rows in blocks of 8, actor pool of 2, "
          f"{args.batch_ms:g} ms per batch, {slow_batches} batches of {args.slow_s:g} s; "
          f"median of {args.repeats}, interleaved")
    for preserve in (True, False):
        r = {k: float(np.median([x[k] for x in results[preserve]])) for k in results[preserve][0]}
        print(f"  preserve_order={preserve!s:5}: wall {r['wall']:.2f} s, half the rows at "
              f"{r['half']:.2f} s, longest wait for the next output {r['max_gap']:.2f} s")
    on = np.median([x["wall"] for x in results[True]])
    off = np.median([x["wall"] for x in results[False]])
    print(f"  wall time on ÷ off: {on / off:.2f}")
    if args.factory_rows:
        walls: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.repeats):
            for preserve in (True, False):
                walls[preserve].append(factory_once(args.factory_rows, preserve, f"{i}{preserve}"))
        print(f"  run_job, {args.factory_rows} rows, synthetic 64 px + pass-through: "
              f"on {np.median(walls[True]):.1f} s, off {np.median(walls[False]):.1f} s, "
              f"on ÷ off {np.median(walls[True]) / np.median(walls[False]):.2f} "
              f"(each {walls})")


if __name__ == "__main__":
    main()
