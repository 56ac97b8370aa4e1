"""The plan (``factory plan``) against the measured run, on the tiny-model chain.

Commits a calibration run of the first ``--calibrate`` rows (or, with ``--probe``, calibrates
from a probe run in a scratch store instead), then plans a catalog of ``--rows`` rows into the
same store (the calibrated rows are already there: the plan counts the rest), runs it, and
prints predicted and measured wall time, busy seconds per stage and dollars, with the error.

    python benchmarks/plan_accuracy.py [--rows 48] [--calibrate 16] [--probe]
Goal (issue 14): within ±15% of the measured run.
"""

from __future__ import annotations

import argparse
import os
import time
from decimal import Decimal

from _common import catalog, job, start_ray, workdir

# the demo's chain without its channels: generate, segment, LoRA img2img, recolor, upscale
STAGES = [
    {"kind": "generate", "model": "sd-tiny",
     "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
     "resources": {"num_cpus": 1, "batch_size": 8}},
    {"kind": "segment", "model": "u2net-tiny", "resources": {"num_cpus": 0.5, "batch_size": 16}},
    {"kind": "lora", "model": "sd-tiny-brand",
     "params": {"lora": "tiny:sd-tiny-lora", "adapter_scale": 0.8, "strength": 0.4, "steps": 2},
     "resources": {"num_cpus": 1, "batch_size": 8, "concurrency": 2}},
    {"kind": "recolor", "model": "lab",
     "params": {"palette": ["#C8553D", "#F28F3B", "#FFD5C2", "#2D3047"], "strength": 0.8},
     "resources": {"num_cpus": 0.5, "batch_size": 16}},
    {"kind": "upscale", "model": "swin2sr-tiny-x2",
     "params": {"tile": 64, "overlap": 16, "min_tile": 32},
     "resources": {"num_cpus": 1, "batch_size": 8}},
]


def error(predicted: float, measured: float) -> str:
    return f"{(predicted - measured) / measured * 100:+6.1f}%" if measured else "   n/a"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--calibrate", type=int, default=16)
    parser.add_argument("--probe", action="store_true",
                        help="calibrate from a probe run in a scratch store, not a committed run")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    from factory.core import settings
    from stages.tiny.models import make_all

    make_all(settings.models_dir())
    directory = workdir("plan")
    manifest = catalog(directory, args.rows)
    full = job(directory, manifest, STAGES)
    start_ray(full)
    from factory.run.pipeline import run_job
    from factory.cost.calibration import calibrate
    from factory.run.forecast import count_work, predict, probe
    from factory.store.run_tables import read_lineage
    from factory.store.storage import Store

    store = Store(full.output.uri)
    if args.probe:
        calibration = probe(full, rows=args.calibrate)
        source = f"a probe run of {args.calibrate} rows (scratch store)"
    else:
        run_job(full, limit=args.calibrate)
        calibration = calibrate(store, full)
        source = f"the committed run of the first {args.calibrate} rows"
    started = time.perf_counter()
    info, tally = count_work(full)
    plan = predict(full, calibration, rows=info.rows, rejected=tally.get("rejected", 0),
                   existing=tally.get("exists", 0), to_render=tally.get("ok", 0))
    plan_s = time.perf_counter() - started
    result = run_job(full)
    lineage, summary = read_lineage(store, result.run_id)
    rendered = [r for r in lineage.to_pylist() if r["status"] == "ok" and r["written"]]
    print(f"plan accuracy, tiny-model chain ({' -> '.join(s['kind'] for s in STAGES)}), "
          f"local Ray on this machine; calibrated from {source}")
    print(f"  plan: {plan.to_render} rows to render of {plan.rows} ({plan.existing} already "
          f"there), planned in {plan_s:.2f} s without Ray; measured run rendered "
          f"{len(rendered)}")
    print(f"  {'':22} {'predicted':>10} {'measured':>10} {'error':>8}")
    print(f"  {'wall time (s)':22} {plan.wall_s:10.1f} {result.wall_s:10.1f} "
          f"{error(plan.wall_s, result.wall_s):>8}")
    for line in plan.stages:
        busy = sum(r[f"ms_{line.name}"] for r in rendered) / 1000
        print(f"  {line.name + ' busy s':22} {line.busy_s:10.1f} {busy:10.1f} "
              f"{error(line.busy_s, busy):>8}")
    measured_usd = float(sum((r["cost_usd"] for r in rendered), Decimal(0)))
    print(f"  {'dollars':22} {plan.usd:10.6f} {measured_usd:10.6f} "
          f"{error(plan.usd, measured_usd):>8}")
    print(f"  run summary cost ${summary['cost_usd']:.6f} at {summary['cost']['gpu']} prices; "
          f"goal: within ±15%")
    print(f"  load average (1 min) at start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f}, "
          f"on {os.cpu_count()} CPUs: the figures are only as steady as the machine")
    for note in plan.notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
