"""The fixed part of a run: what the factory pays before its first asset and after its last,
against the plain loop's load time, phase by phase.

Each repeat runs two fresh processes, interleaved: the plain loop of ``p0_vs_loop.py`` (its
load time is interpreter start → every model loaded, its import time the part of that spent
importing torch, diffusers, transformers and rembg), and the factory's own ``factory run`` path
in one process (``init_ray`` then ``run_job``), which marks:

* ``imports``: interpreter start → the factory's driver modules imported;
* ``ray start``: ``init_ray`` (a local Ray of its own, the dashboard on or off);
* ``plan``: manifest scan, store probe and work list until the count is known (``on_count``);
* ``first asset``: the count → the first rendered row reaches the driver. This holds the
  render's Ray Data execution start, each actor pool's start (a worker process, the stages'
  imports, their model loads) and the first blocks' rendering;
* ``commit+report``: the last batch → ``run_job`` returned (tables, commit, report);
* ``shutdown``: ``ray.shutdown()``.

The part per asset is the steady rate (the assets after the first batch over the time from
the first asset to the last) times every asset; the fixed part is the rest of the whole run.
Where every asset reaches the driver at once there is no steady rate and the whole run counts
as fixed (an upper bound). Goal (PERFORMANCE.md): the factory's fixed part within 1.3× the loop's load time.

    python benchmarks/fixed_part.py --chain demo --rows 24 --repeats 3
    python benchmarks/fixed_part.py --chain mission --rows 24 --repeats 3 --no-dashboard
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

PHASES = ("imports", "ray start", "plan", "first asset", "steady", "commit+report", "shutdown")


def _since_process_start() -> float:
    """Seconds since this process started (its interpreter start included)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - start


def factory_timeline(spec: Path, out: Path, run_id: str, dashboard: bool) -> dict[str, Any]:
    """One ``factory run`` in this process, phase by phase."""
    marks: dict[str, float] = {}
    t0 = time.perf_counter() - _since_process_start()
    import ray

    from factory.run.pipeline import init_ray, run_job
    from factory.run.placement import logical_cpus_needed
    from factory.spec.job import load_job

    job = load_job(spec).with_overrides(output_uri=str(out), run_id=run_id)
    marks["imports"] = time.perf_counter()
    init_ray(None, logical_cpus=logical_cpus_needed(job), dashboard=dashboard)
    marks["ray start"] = time.perf_counter()

    def on_count(_counted) -> None:
        marks["plan"] = time.perf_counter()

    assets = {}

    def on_progress(counts, _rows) -> None:
        if counts.assets and "first asset" not in marks:
            marks["first asset"] = time.perf_counter()
            assets["first"] = counts.assets
        marks["steady"] = time.perf_counter()  # the last batch so far
        assets["last"] = counts.assets

    run_job(job, on_progress=on_progress, on_count=on_count)
    marks["commit+report"] = time.perf_counter()
    ray.shutdown()
    marks["shutdown"] = time.perf_counter()
    seconds, last = {}, t0
    for phase in PHASES:
        seconds[phase] = marks[phase] - last
        last = marks[phase]
    whole = last - t0
    # the steady rate (assets after the first batch ÷ the time they took) times every asset is
    # the run's part per asset; the rest is fixed. Where every asset arrived at once there is no
    # steady rate: the whole run counts as fixed (an upper bound).
    after = assets["last"] - assets["first"]
    per_asset = seconds["steady"] / after if after > 0 and seconds["steady"] > 0 else 0.0
    return {"phases": seconds, "whole": whole, "fixed": whole - per_asset * assets["last"],
            "per_asset": per_asset}


def loop_timeline(spec: Path, out: Path) -> dict[str, Any]:
    """The plain loop's load time: interpreter start → every model loaded."""
    t0 = time.perf_counter() - _since_process_start()
    started = time.perf_counter()
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    imported = time.perf_counter()
    from _common import work_rows

    from factory.spec.job import load_job

    job = load_job(spec)
    work_rows(job)
    [plan.card.runtime(plan=plan) for plan in job.stages]
    loaded = time.perf_counter()
    return {"load": loaded - t0, "imports": imported - started}


def _child(args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"child {args[0]} exited {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chain", choices=("demo", "mission"), default="demo")
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--as-factory", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--as-loop", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_factory:
        spec, out, run_id = args.as_factory
        print(json.dumps(factory_timeline(Path(spec), Path(out), run_id,
                                          dashboard=not args.no_dashboard)))
        return
    if args.as_loop:
        print(json.dumps(loop_timeline(Path(args.as_loop[0]), Path(args.as_loop[1]))))
        return

    import tempfile

    import yaml
    from p0_vs_loop import MISSION, write_spec

    base = MISSION if args.chain == "mission" else yaml.safe_load(
        (ROOT / "jobs" / "demo.yaml").read_text(encoding="utf-8"))
    factories, loops = [], []
    with tempfile.TemporaryDirectory(prefix="fixed-part-") as tmp:
        directory = Path(tmp)
        spec = write_spec(directory, base, args.rows)
        for i in range(args.repeats):
            loops.append(_child(["--as-loop", str(spec), str(directory / f"loop-{i}")]))
            extra = ["--no-dashboard"] if args.no_dashboard else []
            factories.append(_child(["--as-factory", str(spec), str(directory / f"out-{i}"),
                                     f"fixed-{i}", *extra]))
    med = statistics.median
    print(f"{args.chain} chain, {args.rows} rows, dashboard {'off' if args.no_dashboard else 'on'}, "
          f"medians of {args.repeats} interleaved repeats, load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| phase | factory s |\n|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {med(f['phases'][phase] for f in factories):.2f} |")
    print(f"part per asset {med(f['per_asset'] for f in factories) * 1000:.0f} ms")
    fixed, load = med(f["fixed"] for f in factories), med(l["load"] for l in loops)
    print(f"factory fixed part {fixed:.2f} s (whole {med(f['whole'] for f in factories):.2f} s); "
          f"loop load {load:.2f} s (imports {med(l['imports'] for l in loops):.2f} s); "
          f"ratio {fixed / load:.2f} (goal <= 1.3: {'met' if fixed / load <= 1.3 else 'not met'})")


if __name__ == "__main__":
    main()
