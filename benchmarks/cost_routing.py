"""Routing by tier against the premium chain for every row: dollars per catalog.

A mixed catalog (``--hero-every 20``: 5% hero, 95% thumbnail) runs twice on the tiny-model
chain, each into its own store: routed by its ``tier`` column (thumbnails: a fast 32 px,
1-step generate, a cutout and the palette; heroes: the premium 64 px generate, cutout, LoRA,
palette and upscale), then all on the premium chain. Dollars are each run summary's ``cost``
(``factory.spec.prices``: device seconds x the price table), so they follow the measured stage
times.

    python benchmarks/cost_routing.py [--rows 160] [--hero-every 20]
Goal (issue 14): routed >= 40% fewer dollars per catalog than all-premium.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

from _common import catalog, job, start_ray, workdir

GENERATE = {"kind": "generate", "model": "sd-tiny", "resources": {"num_cpus": 1, "batch_size": 8}}
FAST = {**GENERATE, "name": "generate_fast",
        "params": {"width": 32, "height": 32, "steps": 1, "guidance": 1.0}}
PREMIUM = {**GENERATE, "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0}}
SEGMENT = {"kind": "segment", "model": "u2net-tiny",
           "resources": {"num_cpus": 0.5, "batch_size": 16}}
LORA = {"kind": "lora", "model": "sd-tiny-brand",
        "params": {"lora": "tiny:sd-tiny-lora", "adapter_scale": 0.8, "strength": 0.4,
                   "steps": 2},
        "resources": {"num_cpus": 1, "batch_size": 8}}
RECOLOR = {"kind": "recolor", "model": "lab",
           "params": {"palette": ["#C8553D", "#F28F3B", "#FFD5C2", "#2D3047"], "strength": 0.8},
           "resources": {"num_cpus": 0.5, "batch_size": 16}}
UPSCALE = {"kind": "upscale", "model": "swin2sr-tiny-x2",
           "params": {"tile": 64, "overlap": 16, "min_tile": 32},
           "resources": {"num_cpus": 1, "batch_size": 8}}
#: the premium chain: what every row gets without routes
HERO_CHAIN = [PREMIUM, SEGMENT, LORA, RECOLOR, UPSCALE]
ROUTES = {"column": "tier", "default": "thumbnail",
          "chains": {"thumbnail": ["generate_fast", "segment", "recolor"],
                     "hero": ["generate", "segment", "lora", "recolor", "upscale"]}}


def tiered(path: Path, hero_every: int) -> tuple[Path, int]:
    """The catalog with a ``tier`` column: every ``hero_every``-th row a hero."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    out = path.with_name("tiered.csv")
    heroes = 0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(rows[0] + ["tier"])
        for i, row in enumerate(rows[1:]):
            hero = i % hero_every == 0
            heroes += hero
            writer.writerow(row + ["hero" if hero else "thumbnail"])
    return out, heroes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--hero-every", type=int, default=20)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    from factory.core import settings
    from stages.tiny.models import make_all

    make_all(settings.models_dir())
    directory = workdir("routing")
    manifest, heroes = tiered(catalog(directory, args.rows), args.hero_every)
    routed = job(directory / "routed", manifest, [FAST, PREMIUM, SEGMENT, LORA, RECOLOR, UPSCALE],
                 routes=ROUTES)
    premium = job(directory / "premium", manifest, HERO_CHAIN)
    start_ray(routed)
    from factory.run.pipeline import run_job

    results = {"routed by tier": run_job(routed), "all premium": run_job(premium)}
    print(f"cost routing, tiny-model chain, local Ray on this machine: {args.rows} rows, "
          f"{heroes} hero ({heroes / args.rows:.0%}), {args.rows - heroes} thumbnail")
    print(f"  {'':16} {'assets':>7} {'wall s':>8} {'dollars':>12} {'$/asset':>12}")
    for name, result in results.items():
        usd = result.cost["usd"]
        print(f"  {name:16} {result.counts.assets:7d} {result.wall_s:8.1f} {usd:12.6f} "
              f"{usd / max(result.counts.assets, 1):12.9f}")
    for route, line in results["routed by tier"].summary().get("routes", {}).items():
        print(f"    route {route:10} {line['assets']:5d} assets ${line['usd']:.6f} "
              f"(${line['usd'] / max(line['assets'], 1):.9f}/asset)")
    routed_usd = results["routed by tier"].cost["usd"]
    premium_usd = results["all premium"].cost["usd"]
    saving = (1 - routed_usd / premium_usd) * 100 if premium_usd else 0.0
    print(f"  saving: {saving:.1f}% fewer dollars per catalog routed by tier "
          f"(goal >= 40%) at {results['all premium'].cost['gpu']} prices, "
          f"cpu ${results['all premium'].cost['usd_per_hour']['cpu']}/CPU-h")
    print(f"  load average (1 min) at start {load_start:.1f}, at the end "
          f"{os.getloadavg()[0]:.1f}, on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
