"""P1: pipeline efficiency — end-to-end assets/s ÷ the all-cores ideal, measured in one run.

Each stage of the chain (tiny models, the job's params and batch sizes) is first run alone in
this process on the same rows, on one thread, and its CPU seconds per asset are measured; the
sink's encode-and-write likewise. That is the work an asset needs. With every core busy on it
the machine could do at best

    ideal = cores ÷ Σ(CPU s per asset over the stages and the sink)       [assets/s]

The job is then run end to end on a local Ray (the factory's own start-up included) and its
assets/s divided by that ideal, for the whole run and for the steady state (first to last
asset). The machine-wide CPU busy fraction over the steady state says how much of the gap is
idle cores and how much is work the isolated runs do not do (Ray, copies, oversubscription);
the share of the cores the stage actors held over that window is the steady-state P1 that
does not depend on how many blocks were in flight when the first asset landed.

    python benchmarks/p1_efficiency.py [--rows 200] [--chain five|two|mission]
Goal (PERFORMANCE.md): >= 0.80 of the all-cores ideal on 2 cores (steady state).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import catalog, job, start_ray, work_rows, workdir
from p0_vs_loop import MISSION

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
         # as jobs/demo.yaml: the (fused) CPU chain runs as 2 actors
         "resources": {"num_cpus": 1, "batch_size": 8, "concurrency": 2}},
        {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
         "resources": {"num_cpus": 1, "batch_size": 8}},
        {"kind": "upscale", "model": "swin2sr-tiny-x2",
         "params": {"tile": 64, "overlap": 16, "min_tile": 32},
         "resources": {"num_cpus": 1, "batch_size": 8}},
    ],
    # the mission's order: the LoRA pass after the x4 upscale, at 256 px
    "mission": MISSION["stages"],
}


def cpu_s_per_asset(the_job, rows: int) -> dict[str, float]:
    """Each stage alone on one thread over the job's rows, batch by batch: CPU s per asset."""
    import torch

    from factory.core import images

    batch = work_rows(the_job, rows)
    saved_threads, saved_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # rembg sizes its onnxruntime session from it
    timings: dict[str, float] = {}
    try:
        for plan in the_job.stages:
            stage = plan.card.runtime(plan=plan)
            size = plan.resources.batch_size
            stage({k: v[:size] for k, v in batch.items()})  # warm-up, as an actor's first batch
            outputs = []
            started = time.process_time()
            for i in range(0, rows, size):
                outputs.append(stage({k: v[i:i + size] for k, v in batch.items()}))
            timings[plan.name] = (time.process_time() - started) / rows
            batch = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
        out = the_job.output
        target = os.path.join(the_job.output.uri + "-isolated")
        os.makedirs(target, exist_ok=True)
        started = time.process_time()
        for sku, pixels in zip(batch["sku"], images.load("image", batch)):
            data = images.encode(pixels, out.image_format, quality=out.quality,
                                 png_level=out.png_compression)
            with open(os.path.join(target, f"{sku}.{out.image_format}"), "wb") as handle:
                handle.write(data)
        timings["sink"] = (time.process_time() - started) / rows
    finally:
        torch.set_num_threads(saved_threads)
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env
    return timings


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU so far, from /proc/stat (0, 0 where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def tree_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and its descendants (the local Ray's daemons and
    workers), summed by role: a stage's actors, the driver, the rest of Ray."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                raw = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        stats[int(entry)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / ticks)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[str, float] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if pid not in stats:
            continue
        _, cmd, seconds = stats[pid]
        if pid == os.getpid():
            role = "driver"
        elif "MapWorker(MapBatches(" in cmd:
            pool = cmd.split("MapBatches(", 1)[1].split(")", 1)[0]
            role = "chain" if pool.startswith("StageChain_") else "stage " + pool.split("_")[-1]
        else:  # a task worker's title changes with its task: count them together
            role = "Ray tasks (read, validate, sink), daemons"
        totals[role] = totals.get(role, 0.0) + seconds
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--chain", choices=sorted(CHAINS), default="five")
    args = parser.parse_args()
    directory = workdir("p1")
    the_job = job(directory, catalog(directory, args.rows), CHAINS[args.chain])
    from factory.core import settings
    from stages.tiny.models import make_all

    make_all(settings.models_dir())
    cpu = cpu_s_per_asset(the_job, args.rows)
    start_ray(the_job)
    from factory.run.pipeline import run_job

    seen: list[tuple[float, int, tuple[float, float]]] = []
    cpu_at: list[dict[str, float]] = []

    def progress(counts, _rows) -> None:
        seen.append((time.perf_counter(), counts.assets, machine_busy()))
        cpu_at[min(len(cpu_at), 1):] = [tree_cpu()]  # keep the first and the latest

    result = run_job(the_job, on_progress=progress)
    assert result.counts.assets == args.rows, result.summary()
    (t0, a0, b0), (t1, a1, b1) = seen[0], seen[-1]
    steady = (a1 - a0) / (t1 - t0) if t1 > t0 else float("nan")
    busy = (b1[0] - b0[0]) / (b1[1] - b0[1]) if b1[1] > b0[1] else float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    work = sum(cpu.values())
    ideal = cores / work
    e2e = result.assets_per_s
    print(f"P1 pipeline efficiency, chain '{args.chain}', {args.rows} assets, {cores} cores")
    for name, seconds in cpu.items():
        print(f"  {name:10} {seconds * 1000:8.1f} CPU ms/asset  ({seconds / work:5.1%} of the work)")
    print(f"  ideal, all {cores} cores busy (cores ÷ Σ): {ideal:8.2f} assets/s")
    print(f"  end to end on local Ray:              {e2e:8.2f} assets/s "
          f"(wall {result.wall_s:.1f} s, incl. Ray Data and actor start-up)")
    print(f"  steady state (first to last asset):   {steady:8.2f} assets/s "
          f"({a1 - a0} assets in {t1 - t0:.1f} s; machine CPU busy {busy:.0%})")
    if len(cpu_at) == 2 and t1 > t0:
        print(f"  where the cores went in the steady state (CPU s per asset, {a1 - a0} assets):")
        first, last = cpu_at
        for role in sorted(last, key=lambda r: -(last[r] - first.get(r, 0.0))):
            used = last[role] - first.get(role, 0.0)
            if used > 0.005 * (t1 - t0):
                print(f"    {role:42} {used * 1000 / (a1 - a0):8.1f} ms  "
                      f"({used / (t1 - t0):.2f} cores)")
    print(f"  P1 whole run:   {e2e / ideal:.2f} of the all-cores ideal")
    # The rate from the first to the last asset counts the assets of blocks that were already
    # in flight at the first one: with few, large blocks per actor it reads high (above 1).
    # The share of the cores the stage actors held over that window does not depend on that.
    print(f"  P1 steady state, by rate: {steady / ideal:.2f} of the all-cores ideal "
          f"(reads high when blocks are large against the run)")
    if len(cpu_at) == 2 and t1 > t0:
        first, last = cpu_at
        stage_s = sum(last[r] - first.get(r, 0.0) for r in last
                      if r == "chain" or r.startswith("stage "))
        print(f"  P1 steady state, by cores: stage actors held {stage_s / (t1 - t0):.2f} of "
              f"{cores} cores = {stage_s / (t1 - t0) / cores:.2f}   (goal >= 0.80)")


if __name__ == "__main__":
    main()
