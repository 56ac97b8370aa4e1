"""The work list a run decides every row's fate on: a first pass of one fused task per read
split that settles the finished rows, and a second that reads only the rows to render."""

from __future__ import annotations

import numpy as np
import pytest

from factory.catalog.demo import write_catalog
from factory.catalog.manifest import ManifestDatasource, scan
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration


SYNTHETIC = {"kind": "generate", "model": "synthetic", "params": {"width": 16, "height": 16}}


def _job(tmp_path, *, stages=(SYNTHETIC,), **extra):
    catalog = write_catalog(tmp_path / "catalog.csv", 600)  # rows 11, 21, 31 are bad
    return parse_job({
        "name": "fused", "manifest": {"uri": str(catalog)},
        "output": {"uri": str(tmp_path / "out")},
        "prompt": {"template": "a {{ color }} {{ title }}"},
        "stages": list(stages), **extra})


def _first_pass(job, info, store):
    from factory.run.pipeline import sink_task
    from factory.run.work import FirstPass, settled, work_list

    work = work_list(job, info, store, limit=None)
    first = FirstPass()
    done = settled(work, *sink_task(job, store)).materialize()
    for batch in done.iter_batches(batch_size=None, batch_format="pyarrow"):
        first.take(batch)
    return work, done, first


def test_the_first_pass_runs_as_one_task_per_split_and_counts_every_fate(tmp_path, local_ray):
    from ray.data.dataset import MaterializedDataset

    job = _job(tmp_path)
    info = scan(job.manifest_uri, job.manifest_format, default_variant=job.variant)
    work, done, first = _first_pass(job, info, Store(job.output.uri))
    assert not isinstance(work, MaterializedDataset)  # streamed, never held whole
    splits = ManifestDatasource(job.manifest_uri, job.manifest_format).num_read_tasks()
    assert splits == 1 and done.num_blocks() == splits  # blocks are never cut again
    assert ("ReadReadManifest->MapBatches(validate_batch)->MapBatches(mark_existing)"
            "->MapBatches(settle_batch)" in done.stats())
    assert (first.rejected, first.existing, first.to_render) == (3, 0, 597)
    rows = first.rows()  # the second read drops the rejected rows, the shorter list
    assert rows is not None and not rows.keep and rows.rows.tolist() == [11, 21, 31]


def test_the_second_pass_reads_only_the_rows_left_to_render_with_the_same_keys(
        tmp_path, local_ray):
    from factory.run.work import render_list

    job = _job(tmp_path)
    store = Store(job.output.uri)
    info = scan(job.manifest_uri, job.manifest_format, default_variant=job.variant)
    every = render_list(job, info, store, None, limit=None).to_pandas()
    valid = every[every["status"] == "ok"]
    assert len(valid) == 597
    found = valid.iloc[[0, 5, 100, 596]]  # their assets are in the store already
    for key in found["output_key"]:
        store.put_if_absent(key, b"asset", content_type="image/png")

    _, _, first = _first_pass(job, info, store)
    assert (first.rejected, first.existing, first.to_render) == (3, 4, 593)
    rows = first.rows()
    assert rows is not None and not rows.keep and len(rows.rows) == 7  # the shorter list
    todo = render_list(job, info, store, rows, limit=None)
    again = todo.to_pandas()
    expected = valid[~valid["row"].isin(found["row"])]
    assert list(again["row"]) == list(expected["row"])
    assert list(again["output_key"]) == list(expected["output_key"])
    assert set(again["status"]) == {"ok"} and not again["bytes"].any()
    assert "ReadReadManifest->MapBatches(validate_batch)->MapBatches(mark_existing)" in todo.stats()


def test_a_job_with_a_qa_gate_materialises_its_work_list_once(tmp_path, local_ray):
    from ray.data.dataset import MaterializedDataset

    from factory.run.work import work_list

    recolor = {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}}
    job = _job(tmp_path, stages=(SYNTHETIC, recolor),
               qa={"thresholds": {"delta_e_after": {"max": 12}}})
    info = scan(job.manifest_uri, job.manifest_format, default_variant=job.variant)
    work = work_list(job, info, Store(job.output.uri), limit=None)
    assert isinstance(work, MaterializedDataset)
    assert np.unique(work.to_pandas()["status"]).tolist() == ["ok", "rejected"]


def test_a_manifest_changed_between_the_two_passes_stops_the_run_uncommitted(
        tmp_path, local_ray):
    import os

    from factory.run.pipeline import run_job

    job = _job(tmp_path)
    manifest = tmp_path / "catalog.csv"

    def edit(counted) -> None:  # after the first pass, before the second reads
        assert counted.to_render == 597
        text = manifest.read_text(encoding="utf-8")
        manifest.write_text(text.replace("mug", "cup", 1), encoding="utf-8")
        stat = manifest.stat()
        os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))

    with pytest.raises(Exception, match=r"catalog\.csv' changed after the run scanned it"):
        run_job(job, on_count=edit)
    assert not list((tmp_path / "out").glob("runs/*/lineage.parquet"))  # not committed
    assert not list((tmp_path / "out").glob("assets/**/*.png"))  # nothing rendered from it


def test_task_workers_outnumbering_the_logical_cpus_stay_between_two_passes(local_ray):
    """A run's fractional-CPU tasks (the sink's, the render's reads) run more task workers at
    once than a local Ray has logical CPUs. Ray's default kills the idle ones above that
    count a second later, so the next pass starts processes again; a local Ray of the
    factory keeps them (``LOCAL_RAY_CONFIG``) and the next pass starts no process."""
    import os
    import time
    from pathlib import Path

    ray = local_ray
    logical = int(ray.cluster_resources()["CPU"])
    at_once = logical + 2  # all running together, each on a share of a logical CPU

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self) -> None:
            self.arrived = 0

        def arrive(self) -> None:
            self.arrived += 1

        def all_in(self) -> bool:
            return self.arrived >= at_once

    @ray.remote(num_cpus=round(logical / at_once - 0.00005, 4))
    def pid(barrier) -> int:
        ray.get(barrier.arrive.remote())
        deadline = time.monotonic() + 60
        while not ray.get(barrier.all_in.remote()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return os.getpid()

    def pass_pids() -> set[int]:
        barrier = Barrier.remote()
        pids = set(ray.get([pid.remote(barrier) for _ in range(at_once)]))
        ray.kill(barrier)
        return pids

    def started(pid: int) -> float:
        """When the process started, in clock ticks since boot (``/proc``)."""
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])

    first = pass_pids()
    assert len(first) == at_once  # more task workers than logical CPUs, all at once
    time.sleep(3.0)  # Ray's default kills an idle worker above the logical CPUs after 1 s
    second_began = float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")
    second = pass_pids()
    new = {pid for pid in second if started(pid) >= second_began}
    assert not new, (first, second)  # the second pass started no worker process


def test_a_run_gives_its_freed_heap_back_while_it_streams(tmp_path, local_ray, monkeypatch):
    from factory.core.heap import HeapTrimmer
    from factory.run import pipeline

    made: list[HeapTrimmer] = []

    class Recorded(HeapTrimmer):
        def __init__(self) -> None:
            super().__init__(interval=0.05)
            made.append(self)

    monkeypatch.setattr(pipeline, "HeapTrimmer", Recorded)
    result = pipeline.run_job(_job(tmp_path))
    assert result.counts.assets == 597
    assert len(made) == 1 and made[0].trims >= 1  # trimmed while the run streamed
    assert made[0]._thread is None or not made[0]._thread.is_alive()  # and stopped with it
