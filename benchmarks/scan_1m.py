"""A million-row manifest (CSV and Parquet) scanned, validated and planned, nothing rendered.

Writes a catalog of ``--rows`` rows in both formats (quoted titles with commas and quotes, a
palette on some rows), then in a fresh process per format: ``scan`` (one streaming pass: row
count, duplicates, fingerprint), the read split planning, and the work list's first pass (read
by several tasks → validate → look up existing assets → settle, streamed to the driver) with the
fate of every row counted, as ``run_job`` does before any stage starts. Prints the times and the
driver's peak RSS (goal: under 1 GiB) and the Ray object store's peak in use.

    python benchmarks/scan_1m.py [--rows 1000000] [--formats csv parquet]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _memory import MemorySampler, mib, report, run_child

TITLES = ["mug", "lamp", 'vase, 12" tall', "chair", 'the "classic" tote', "desk organiser"]
COLOURS = ["red", "teal", "ochre", "navy", "sage", "plum"]


def write_manifests(directory: Path, rows: int) -> dict[str, Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    index = np.arange(rows)
    palette = np.where(index % 25 == 3, "#1B3A5C #F2E8D5", None)
    table = pa.table({
        "sku": pa.array([f"SKU-{i:07d}" for i in range(rows)]),
        "title": pa.array(np.array(TITLES, dtype=object)[rng.integers(0, len(TITLES), rows)]),
        "color": pa.array(np.array(COLOURS, dtype=object)[rng.integers(0, len(COLOURS), rows)]),
        "seed": pa.array([str(i) if i % 7 == 0 else None for i in range(rows)]),
        "palette": pa.array(palette, type=pa.string()),
    })
    paths = {"csv": directory / "catalog.csv", "parquet": directory / "catalog.parquet"}
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"], row_group_size=65_536)
    return paths


def child(manifest: Path) -> None:
    from _common import job, start_ray, workdir

    directory = workdir("scan")
    stages = [{"kind": "generate", "model": "synthetic", "params": {"width": 16, "height": 16}},
              {"kind": "identity", "model": "passthrough"}]
    the_job = job(directory, manifest, stages)
    times: dict[str, float] = {}
    with MemorySampler() as peaks:
        from factory.catalog.manifest import ManifestDatasource, scan
        from factory.run.pipeline import sink_task
        from factory.run.work import FirstPass, settled, work_list
        from factory.store.storage import Store

        started = time.perf_counter()
        info = scan(the_job.manifest_uri, the_job.manifest_format, s3_options=the_job.s3,
                    default_variant=the_job.variant)
        times["scan_s"] = time.perf_counter() - started
        start_ray(the_job)
        started = time.perf_counter()
        tasks = ManifestDatasource(the_job.manifest_uri, the_job.manifest_format).num_read_tasks()
        times["split_s"] = time.perf_counter() - started
        started = time.perf_counter()
        store = Store(the_job.output.uri)
        work = work_list(the_job, info, store, limit=None)
        first = FirstPass()  # the run's first pass: every fate counted, nothing rendered
        for batch in settled(work, *sink_task(the_job, store)).iter_batches(
                batch_size=None, batch_format="pyarrow"):
            first.take(batch)
        fates = {"rejected": first.rejected, "exists": first.existing,
                 "to render": first.to_render}
        times["work_list_s"] = time.perf_counter() - started
    assert sum(fates.values()) == info.rows, (fates, info.rows)
    report(peaks, rows=info.rows, read_tasks=tasks, fates=fates,
           **{k: round(v, 1) for k, v in times.items()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        child(args.child)
        return
    from _common import workdir

    started = time.perf_counter()
    paths = write_manifests(workdir("scan-manifest"), args.rows)
    print(f"scan/validate/plan, {args.rows:,} rows, no rendering; manifests written in "
          f"{time.perf_counter() - started:.0f} s")
    for fmt in args.formats:
        path = paths[fmt]
        r = run_child(Path(__file__), [str(path)])
        print(f"  {fmt:8} {path.stat().st_size / (1 << 20):6.0f} MiB: scan {r['scan_s']} s, "
              f"split planning {r['split_s']} s ({r['read_tasks']} read tasks), first pass "
              f"(read+validate+existence check+settle) {r['work_list_s']} s; driver peak RSS "
              f"{mib(r['driver_rss'])} (goal < 1 GiB), object store peak {mib(r['object_store'])}"
              f" (spilled {mib(r['spilled'])}); fates {r['fates']}")


if __name__ == "__main__":
    main()
