"""P7 and P6 simulated: the five-stage chain on logical GPUs over two local Ray nodes.

    python benchmarks/cluster_sim.py                      # 8 GPUs, the default (short) run
    python benchmarks/cluster_sim.py --gpus 2,4,8         # scaling: the same at 2, 4, 8 GPUs
    python benchmarks/cluster_sim.py --long               # more rows: a longer steady state
    python benchmarks/cluster_sim.py --block-rows 4       # the factory's plan with another
                                                          # block size (monkeypatched here;
                                                          # also --in-flight, --unordered)

``jobs/catalog-sim.yaml`` (catalog-gpu.yaml's placements, the simulated cards of
``stages/simulated.py``) runs through the factory's own ``run_job`` on a
``ray.cluster_utils.Cluster`` of two nodes, each with half the logical GPUs and enough logical
CPUs for the pools. Every pool's concurrency is the GPU count (catalog-gpu.yaml's advice for
more GPUs; recolor too). Each GPU actor sleeps its card's H100 device time per batch, times
``--time-scale``; images are real arrays, generated at ``--side`` pixels square (2x after the
upscale) and encoded by the sink as the job says (WebP, quality 90).

What it prints, per GPU count:

* assets/s: steady state (the bottleneck's rows while every one of its actors had work: the
  chain's rate is its bottleneck's), at the sink from its first to its last asset, and the
  whole run;
* the ideal: min over the pools of workers ÷ modelled seconds per asset, and P7 = steady ÷ ideal;
* each pool's busy fraction (P6 simulated): the device seconds its actors slept ÷ (workers ×
  window), over the bottleneck's steady window (while every one of its actors had work) and
  over the whole run; the lineage's ``ms_<stage>`` sum (each batch's whole call) beside it;
* where the time went: Ray's start, the run's start until the first batch, the fill until the
  first asset, the steady state, the drain, the commit.

Goal (PERFORMANCE.md): P7 >= 0.90, the bottleneck pool busy >= 0.92 in steady state. On a
2-core machine the sink's encode and the object store's copies share the cores with Ray:
``--side`` and ``--time-scale`` keep that work well under the cores (the script prints the
CPU share the whole run used), so that what limits the rate is the plan.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import yaml  # noqa: E402

from _common import catalog, workdir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
P7_GOAL, P6_GOAL, LINEAR_GOAL = 0.90, 0.92, 0.90
#: Rows per GPU of the default run and of ``--long``.
ROWS_PER_GPU = {"short": 48, "long": 160}


def sim_spec(directory: Path, manifest: Path, *, gpus: int, side: int, time_scale: float,
             trace_dir: Path) -> dict[str, Any]:
    """jobs/catalog-sim.yaml for ``gpus`` GPUs: every pool ``gpus`` actors, local paths."""
    spec = yaml.safe_load((REPO / "jobs" / "catalog-sim.yaml").read_text(encoding="utf-8"))
    spec["name"] = f"sim-{gpus}gpu"
    spec["manifest"] = {"uri": str(manifest)}
    # one machine: both nodes write to the same directory
    spec["output"] = {**spec["output"], "uri": str(directory / "out"), "shared_mount": True}
    for stage in spec["stages"]:
        stage["resources"]["concurrency"] = gpus
        params = stage.setdefault("params", {})
        params.update(time_scale=time_scale, trace_dir=str(trace_dir))
        if stage["kind"] == "generate":
            params.update(width=side, height=side)
    return spec


def node_cpus(job) -> int:
    """Logical CPUs per node: half the pools' and tasks' needs, with room for the sink."""
    from factory.run.placement import TASK_CPUS, logical_cpus_needed

    return math.ceil((logical_cpus_needed(job) + TASK_CPUS) / 2) + 2


def read_traces(trace_dir: Path) -> dict[str, list[dict]]:
    """Every batch the simulated actors recorded, by stage."""
    batches: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(trace_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                batches[record["stage"]].append(record)
    return batches


def overlap(start: float, end: float, w0: float, w1: float) -> float:
    return max(0.0, min(end, w1) - max(start, w0))


def patch_plan(pipeline, args: argparse.Namespace) -> None:
    """The factory's plan with another choice, for before/after figures (monkeypatched in
    this process only): rows per block, tasks queued per actor, output order."""
    if args.block_rows:
        pipeline.block_rows = lambda _job: args.block_rows
    if args.in_flight:
        pipeline.GPU_TASKS_IN_FLIGHT = args.in_flight
    if args.unordered:
        import ray.data

        build = pipeline.build_datasets

        def unordered(*a, **k):  # run_job turned it on just before
            ray.data.DataContext.get_current().execution_options.preserve_order = False
            return build(*a, **k)

        pipeline.build_datasets = unordered


def run_once(gpus: int, args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    from factory.run import pipeline
    from factory.spec.job import parse_job
    from factory.store.run_tables import read_lineage
    from factory.store.storage import Store

    rows = args.rows or ROWS_PER_GPU["long" if args.long else "short"] * gpus
    directory = workdir(f"sim{gpus}")
    trace_dir = directory / "trace"
    job = parse_job(sim_spec(directory, catalog(directory, rows), gpus=gpus, side=args.side,
                             time_scale=args.time_scale, trace_dir=trace_dir),
                    source="<catalog-sim>")
    patch_plan(pipeline, args)
    cpus = node_cpus(job)
    started = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus, "num_gpus": gpus // 2, "object_store_memory": args.store_gib << 30})
    cluster.add_node(num_cpus=cpus, num_gpus=gpus - gpus // 2,
                     object_store_memory=args.store_gib << 30)
    cluster.wait_for_nodes()
    pipeline.init_ray(cluster.address, dashboard=False)
    ray_up = time.time()
    samples: list[tuple[float, int]] = []
    busy0 = _machine_busy()
    try:
        result = pipeline.run_job(
            job, on_progress=lambda counts, _rows: samples.append((time.time(), counts.assets)))
        done = time.time()
        busy1 = _machine_busy()
        lineage, _ = read_lineage(Store(str(directory / "out")), result.run_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert result.counts.assets == rows and result.counts.failed == 0, result.summary()

    traces = read_traces(trace_dir)
    model: dict[str, dict[str, float]] = {}
    for plan in job.stages:
        r = plan.resources
        full = plan.params.device_seconds(r.batch_size) / r.batch_size
        model[plan.name] = {"workers": r.concurrency, "s_per_asset": full,
                            "rate": r.concurrency / full, "gpus": r.num_gpus}
    bottleneck = min(model, key=lambda s: model[s]["rate"])
    ideal = model[bottleneck]["rate"]

    # the bottleneck's steady window: while every one of its actors had had its first batch
    # and none had finished its last
    by_actor: dict[int, list[dict]] = defaultdict(list)
    for b in traces[bottleneck]:
        by_actor[b["pid"]].append(b)
    w0 = max(min(b["start"] for b in bs) for bs in by_actor.values())
    w1 = min(max(b["end"] for b in bs) for bs in by_actor.values())
    pools = {}
    wall = done - started
    for name, batches in traces.items():
        workers = model[name]["workers"]
        slept = sum(b["device_s"] for b in batches)
        in_window = sum(overlap(b["start"], b["start"] + b["device_s"], w0, w1) for b in batches)
        ms = lineage[f"ms_{name}"].to_pylist()
        pools[name] = {
            "actors": len({b["pid"] for b in batches}), "workers": workers,
            "batches": len(batches), "rows": sum(b["rows"] for b in batches),
            "busy_steady": in_window / (workers * (w1 - w0)) if w1 > w0 else float("nan"),
            "busy_run": slept / (workers * (done - ray_up)),
            "lineage_s": sum(v or 0.0 for v in ms) / 1000.0, "slept_s": slept}
    # the chain's steady rate is its bottleneck's while every bottleneck actor has work:
    # the rows it finished inside that window (a batch counted by its share inside)
    done_in = sum(b["rows"] * overlap(b["start"], b["end"], w0, w1) / (b["end"] - b["start"])
                  for b in traces[bottleneck] if b["end"] > b["start"])
    steady = done_in / (w1 - w0) if w1 > w0 else float("nan")
    # the sink's view: first to last asset, the first arrival's rows not counted
    t_first, n_first = next((t, n) for t, n in samples if n > 0)
    t_last = samples[-1][0]
    sink = (rows - n_first) / (t_last - t_first) if t_last > t_first else float("nan")
    first_batch = min(b["start"] for bs in traces.values() for b in bs)
    last_bottleneck = max(b["end"] for b in traces[bottleneck])
    return {
        "gpus": gpus, "rows": rows, "ideal": ideal, "bottleneck": bottleneck, "model": model,
        "pools": pools, "steady": steady, "sink": sink, "whole": rows / (done - ray_up),
        "with_ray": rows / wall, "window": (w0, w1), "cpus_per_node": cpus,
        "cpu_busy": (busy1[0] - busy0[0]) / (busy1[1] - busy0[1]) if busy1[1] > busy0[1]
        else float("nan"),
        "phases": {
            "Ray start (2 nodes)": ray_up - started,
            "run start to first batch (scan, work list, actors)": first_batch - ray_up,
            "first batch to first asset (fill)": t_first - first_batch,
            "first to last asset": t_last - t_first,
            "commit, report": done - t_last},
        "drain": t_last - last_bottleneck,
        "wall": wall, "run_wall": done - ray_up,
    }


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU so far, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    g, b = r["gpus"], r["bottleneck"]
    print(f"\n== {g} logical GPUs on 2 nodes ({r['cpus_per_node']} logical CPUs each), "
          f"{r['rows']} assets, generate {args.side}² -> {2 * args.side}² RGBA WebP, "
          f"device times x{args.time_scale:g}"
          + (f", blocks of {args.block_rows} rows" if args.block_rows else "")
          + (f", {args.in_flight} task(s) in flight per actor" if args.in_flight else "")
          + (", unordered" if args.unordered else "") + " ==")
    print("  pool       workers  GPU  model s/asset  ideal/s  busy steady  busy run  "
          "slept s  lineage s  batches  actors")
    for name, m in r["model"].items():
        p = r["pools"].get(name, {})
        mark = " <- bottleneck" if name == b else ""
        print(f"  {name:10} {m['workers']:7d}  {m['gpus']:3.1f}  {m['s_per_asset']:13.3f}  "
              f"{m['rate']:7.2f}  {p.get('busy_steady', float('nan')):11.2f}  "
              f"{p.get('busy_run', float('nan')):8.2f}  {p.get('slept_s', 0):7.1f}  "
              f"{p.get('lineage_s', 0):9.1f}  {p.get('batches', 0):7d}  "
              f"{p.get('actors', 0):6d}{mark}")
    p7 = r["steady"] / r["ideal"]
    busy = r["pools"][b]["busy_steady"]
    print(f"  ideal (min over pools of workers ÷ s/asset): {r['ideal']:.2f} assets/s ({b})")
    print(f"  assets/s steady (bottleneck, all its actors busy): {r['steady']:.2f}")
    print(f"  assets/s at the sink, first to last asset:   {r['sink']:.2f}   "
          f"(the last asset {r['drain']:.1f} s after the bottleneck's last batch)")
    print(f"  assets/s whole run (run_job call):            {r['whole']:.2f}   "
          f"with Ray's start: {r['with_ray']:.2f}")
    print(f"  P7 steady = {p7:.2f} (goal >= {P7_GOAL}: {'met' if p7 >= P7_GOAL else 'NOT met'});"
          f"  at the sink = {r['sink'] / r['ideal']:.2f};  whole run = {r['whole'] / r['ideal']:.2f}")
    print(f"  P6 simulated: {b} busy {busy:.2f} in its steady window of "
          f"{r['window'][1] - r['window'][0]:.1f} s (goal >= {P6_GOAL}: "
          f"{'met' if busy >= P6_GOAL else 'NOT met'})")
    print(f"  machine CPU busy over the run: {r['cpu_busy']:.0%} of "
          f"{os.cpu_count()} cores (shared machine: other users count too)")
    print("  where the time went:")
    for phase, seconds in r["phases"].items():
        print(f"    {phase:52} {seconds:7.1f} s")
    ideal_s = r["rows"] / r["ideal"]
    print(f"    {'total':52} {r['wall']:7.1f} s   (the ideal's {ideal_s:.1f} s for "
          f"{r['rows']} assets; fixed part {r['wall'] - ideal_s:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", default="8", help="comma-separated GPU counts (even)")
    parser.add_argument("--rows", type=int, default=0, help="default: 48 per GPU (--long: 160)")
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--side", type=int, default=512, help="generated image side, px")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--block-rows", type=int, default=0,
                        help="monkeypatch the factory's rows per block (0: its own)")
    parser.add_argument("--in-flight", type=int, default=0,
                        help="monkeypatch tasks queued per GPU actor (0: the factory's, 1; "
                             "2 is Ray Data's default)")
    parser.add_argument("--unordered", action="store_true",
                        help="monkeypatch: Ray Data's preserve_order off")
    parser.add_argument("--store-gib", type=int, default=2, help="object store per node")
    args = parser.parse_args()
    results = []
    for gpus in [int(g) for g in args.gpus.split(",")]:
        results.append(run_once(gpus, args))
        report(results[-1], args)
    if len(results) > 1:
        base = results[0]
        print("\n== scaling (steady assets/s against linear from the smallest) ==")
        for r in results:
            linear = base["steady"] * r["gpus"] / base["gpus"]
            share = r["steady"] / linear
            print(f"  {r['gpus']} GPUs: {r['steady']:6.2f} assets/s, ideal {r['ideal']:6.2f}, "
                  f"P7 {r['steady'] / r['ideal']:.2f}, {share:.2f} x linear "
                  f"({'>=' if share >= LINEAR_GOAL else '<'} {LINEAR_GOAL}), "
                  f"{r['bottleneck']} busy {r['pools'][r['bottleneck']]['busy_steady']:.2f}")


if __name__ == "__main__":
    main()
