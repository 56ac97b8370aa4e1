"""P0: the factory against the plain loop a user would write instead, on the same cores.

For one job spec, the same manifest rows go through the same stage chain twice, each as its own
process timed whole (interpreter start, imports, model loads, the work, the writes):

* **loop**: one Python process that loads each stage's model once (the stages' own runtime
  classes, so the same libraries, params and batch sizes), then loops over the rows in chunks of
  the largest batch size, runs every stage on each chunk in its own batch size, encodes each
  image once (the job's format) and writes it to a file. torch keeps its default threads.
* **factory**: ``factory run SPEC --output DIR --run-id ID`` as a subprocess, so the figure
  includes starting a local Ray, the actor pools, the sink and the lineage commit.

Repeats are interleaved (loop, factory, loop, factory, ...); the medians and the throughput
ratio factory ÷ loop (= loop time ÷ factory time) are printed, with each side's per-stage
milliseconds per asset (the loop's from its own timers, the factory's from its lineage).

    python benchmarks/p0_vs_loop.py --chain mission [--rows 24] [--repeats 3]
    python benchmarks/p0_vs_loop.py --chain demo    [--rows 200] [--repeats 3]
    python benchmarks/p0_vs_loop.py --job jobs/demo.yaml --rows 8 --repeats 1   # smoke test
    python benchmarks/p0_vs_loop.py --chain mission --rows 96 --cluster   # + on a running Ray
    python benchmarks/p0_vs_loop.py --chain demo --rows 200 2000 --repeats 1  # where it pays off

With several ``--rows``, each size is its own catalog and its own interleaved repeats, and the
medians of two sizes fit each side as ``fixed s + rows x s per asset``: the printed break-even
is the catalog size from which the factory's whole run is the faster one on this machine.

``--chain mission`` is the mission's order (generate 64 px 4 steps → segment u2net-tiny →
upscale swin2sr-tiny-x4 → recolor → LoRA img2img at 256 px, strength 0.5); ``--chain demo`` is
``jobs/demo.yaml``. Goal (PERFORMANCE.md): factory ÷ loop >= 1.0 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

_PALETTE = ["#C8553D", "#F28F3B", "#FFD5C2", "#2D3047"]
#: The mission's order: diffusion first, the LoRA pass after the x4 upscale (at 256 px).
#: Batches of 4, so that 24 rows make 6 blocks for the pool's 2 actors (the loop uses the
#: same batch sizes).
MISSION = {
    "name": "p0-mission",
    "seed": 1234,
    "variant": "hero",
    "prompt": {"template": "photo of a {{ color }} {{ material }} {{ title }}",
               "negative": "blurry, text"},
    "stages": [
        {"kind": "generate", "model": "sd-tiny",
         "params": {"width": 64, "height": 64, "steps": 4, "guidance": 1.0},
         "resources": {"num_cpus": 1, "batch_size": 4}},
        {"kind": "segment", "model": "u2net-tiny",
         "resources": {"num_cpus": 0.5, "batch_size": 4}},
        {"kind": "upscale", "model": "swin2sr-tiny-x4",
         "resources": {"num_cpus": 1, "batch_size": 4}},
        {"kind": "recolor", "model": "lab", "params": {"palette": _PALETTE, "strength": 0.8},
         "resources": {"num_cpus": 0.5, "batch_size": 4}},
        {"kind": "lora", "model": "sd-tiny-brand",
         "params": {"lora": "tiny:sd-tiny-lora", "adapter_scale": 0.8, "strength": 0.5,
                    "steps": 4},
         # the bottleneck: two actors of the (fused) CPU chain, one core each
         "resources": {"num_cpus": 1, "batch_size": 4, "concurrency": 2}},
    ],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("FACTORY_RAY_ADDRESS", None)  # the factory starts a local Ray of its own
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def write_spec(directory: Path, base: dict[str, Any], rows: int) -> Path:
    """A copy of the spec whose manifest is a fresh ``rows``-row catalog in ``directory``."""
    from factory.catalog.demo import write_catalog

    manifest = write_catalog(directory / "catalog.csv", rows, bad_rows=False)
    spec = dict(base)
    spec["manifest"] = {"uri": str(manifest)}
    spec["output"] = {**(base.get("output") or {}), "uri": str(directory / "unused-out")}
    spec.pop("run_id", None)
    spec.pop("channels", None)  # the loop writes one image per SKU: so does the factory here
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the plain loop

def run_loop(spec_path: Path, out_dir: Path) -> dict[str, float]:
    """What a user would write: load each model once, loop over batches, encode, write."""
    import numpy as np
    from _common import work_rows

    from factory.core import images
    from factory.spec.job import load_job

    job = load_job(spec_path)
    rows = work_rows(job)  # read the CSV, render each row's prompt and seed
    n = len(rows["sku"])
    stages = [plan.card.runtime(plan=plan) for plan in job.stages]  # load each model once
    chunk = max(plan.resources.batch_size for plan in job.stages)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = {plan.name: 0.0 for plan in job.stages}
    seconds["encode+write"] = 0.0
    for start in range(0, n, chunk):
        batch: dict[str, Any] = {k: v[start:start + chunk] for k, v in rows.items()}
        for plan, stage in zip(job.stages, stages):
            size = plan.resources.batch_size
            started = time.perf_counter()
            outs = [stage({k: v[i:i + size] for k, v in batch.items()})
                    for i in range(0, len(batch["sku"]), size)]
            batch = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
            seconds[plan.name] += time.perf_counter() - started
        started = time.perf_counter()
        fmt, ext = job.output.image_format, {"jpeg": "jpg"}.get(job.output.image_format,
                                                                  job.output.image_format)
        for sku, pixels in zip(batch["sku"], images.load("image", batch)):
            data = images.encode(pixels, fmt, quality=job.output.quality,
                                 png_level=job.output.png_compression)
            (out_dir / f"{sku}.{ext}").write_bytes(data)
        seconds["encode+write"] += time.perf_counter() - started
    return {name: s * 1000.0 / n for name, s in seconds.items()}


# --------------------------------------------------------------------------- the two processes

def time_loop(spec: Path, out: Path) -> tuple[float, dict[str, float]]:
    report = out.parent / f"{out.name}.json"
    started = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--as-loop", str(spec),
                    str(out), str(report)], check=True, env=_env())
    wall = time.perf_counter() - started
    return wall, json.loads(report.read_text())


def time_factory(spec: Path, out: Path, run_id: str,
                 cluster: dict[str, str] | None = None) -> tuple[float, dict[str, float]]:
    """``factory run`` whole; with ``cluster`` (its address and environment) on that running
    Ray, as ``factory run --address`` (and ``factory submit``) run, else on a local Ray of its
    own, started and stopped inside the timed process."""
    started = time.perf_counter()
    command = [sys.executable, "-c", "from factory.cli.main import main; main()", "run", str(spec),
               "--output", str(out), "--run-id", run_id, "--season", "none"]
    env = _env()
    if cluster:
        command += ["--address", cluster["address"]]
        env.update(cluster["env"])
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"factory run exited {done.returncode}")
    import pyarrow.parquet as pq

    table = pq.read_table(out / "runs" / run_id / "lineage.parquet")
    ms = {name.removeprefix("ms_"): float(sum(table[name].to_pylist()) / max(1, table.num_rows))
          for name in table.column_names if name.startswith("ms_")}
    return wall, ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--chain", choices=("mission", "demo"), default="mission")
    source.add_argument("--job", type=Path, help="a job spec; its manifest is replaced")
    parser.add_argument("--rows", type=int, nargs="+", default=None,
                        help="catalog rows, one or more sizes (default: 24 for mission, "
                             "200 otherwise)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--cluster", action="store_true",
                        help="also time `factory run --address` on a Ray started once before "
                             "the repeats (`ray start --head`, as a user's cluster)")
    parser.add_argument("--as-loop", nargs=3, metavar=("SPEC", "OUT", "REPORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_loop:
        spec, out, report = (Path(p) for p in args.as_loop)
        Path(report).write_text(json.dumps(run_loop(spec, out)))
        return

    import tempfile

    from factory.core import settings
    from stages.tiny.models import make_all

    make_all(settings.models_dir())
    if args.job:
        base, label = yaml.safe_load(args.job.read_text(encoding="utf-8")), str(args.job)
    elif args.chain == "demo":
        base, label = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text()), "jobs/demo.yaml"
    else:
        base, label = MISSION, "mission order"
    sizes = args.rows or [24 if args.chain == "mission" and not args.job else 200]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    results = []
    for rows in sizes:
        directory = Path(tempfile.mkdtemp(prefix="bench-p0-"))
        try:
            results.append(measure(base, label, rows, directory, args, cores))
        finally:
            if not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    if len(results) > 1:
        print_break_even(results)


def measure(base: dict[str, Any], label: str, rows: int, directory: Path,
            args: argparse.Namespace, cores: int) -> dict[str, float]:
    """One catalog size: interleaved repeats of both sides; prints and returns the medians."""
    spec = write_spec(directory, base, rows)
    print(f"P0 factory vs plain loop: {label}, {rows} rows, {cores} cores, "
          f"{args.repeats} interleaved repeats (whole process each)", flush=True)
    head = start_cluster(spec) if args.cluster else None
    loops, factories, on_cluster = [], [], []
    loop_ms: dict[str, float] = {}
    factory_ms: dict[str, float] = {}
    try:
        for i in range(args.repeats):
            wall, loop_ms = time_loop(spec, directory / f"loop-{i}")
            loops.append(wall)
            print(f"  repeat {i + 1}: loop    {wall:7.1f} s", flush=True)
            wall, factory_ms = time_factory(spec, directory / f"factory-{i}", f"p0-{i}")
            factories.append(wall)
            print(f"  repeat {i + 1}: factory {wall:7.1f} s   (its own local Ray)", flush=True)
            if head is not None:
                wall, _ = time_factory(spec, directory / f"cluster-{i}", f"p0c-{i}", head[1])
                on_cluster.append(wall)
                print(f"  repeat {i + 1}: factory {wall:7.1f} s   (--address: a running Ray)",
                      flush=True)
    finally:
        if head is not None:
            head[0].stop()
    loop_s, factory_s = statistics.median(loops), statistics.median(factories)
    print("  loop ms/asset (last):    "
          + ", ".join(f"{k} {v:.1f}" for k, v in loop_ms.items()))
    print("  factory ms/asset (lineage, last): "
          + ", ".join(f"{k} {v:.1f}" for k, v in factory_ms.items()))
    print(f"  median wall: loop {loop_s:.1f} s, factory {factory_s:.1f} s")
    print(f"  P0 factory ÷ loop throughput: {loop_s / factory_s:.2f}   (goal >= 1.0)")
    out = {"rows": rows, "loop": loop_s, "factory": factory_s}
    if on_cluster:
        cluster_s = statistics.median(on_cluster)
        print(f"  P0 on a running Ray (factory run --address): factory {cluster_s:.1f} s: "
              f"{loop_s / cluster_s:.2f}")
        out["cluster"] = cluster_s
    return out


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(fixed s, s per asset)`` of the line through the smallest and largest size."""
    (n0, t0), (n1, t1) = min(points), max(points)
    per = (t1 - t0) / (n1 - n0)
    return t0 - per * n0, per


def print_break_even(results: list[dict[str, float]]) -> None:
    """Each side as fixed + per-asset seconds (from the smallest and largest size), and the
    catalog size from which the factory's whole run takes less time than the loop's."""
    loop_fixed, loop_per = fit([(r["rows"], r["loop"]) for r in results])
    print(f"  fit: loop    {loop_fixed:5.1f} s fixed + {loop_per * 1000:6.1f} ms/asset")
    for side, name in (("factory", "its own local Ray"), ("cluster", "a running Ray")):
        if not all(side in r for r in results):
            continue
        fixed, per = fit([(r["rows"], r[side]) for r in results])
        print(f"  fit: factory {fixed:5.1f} s fixed + {per * 1000:6.1f} ms/asset ({name})")
        if per >= loop_per:
            print(f"  break-even ({name}): none; the factory's steady rate is not above "
                  "the loop's")
        else:
            rows = max(0.0, (fixed - loop_fixed) / (loop_per - per))
            print(f"  break-even ({name}): the factory's whole run is faster from about "
                  f"{rows:.0f} rows; steady rate {1 / per:.1f} vs {1 / loop_per:.1f} assets/s")


def start_cluster(spec: Path):
    """``ray start --head`` on loopback with the logical CPUs the factory's own local Ray would
    have for this job; returns the node and what a driver needs to reach it."""
    import secrets

    from factory.run.pipeline import local_cpus
    from factory.run.placement import logical_cpus_needed
    from factory.spec.job import load_job
    from tests.support.ray_nodes import node_env, start_head, wait_for_nodes

    env = node_env(secrets.token_hex(32))
    node = start_head(env, num_cpus=int(local_cpus(logical_cpus_needed(load_job(spec)))))
    wait_for_nodes(node.extra["gcs"], env, 1)
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")
    return node, {"address": node.extra["gcs"], "env": {k: env[k] for k in keys}}


if __name__ == "__main__":
    main()
