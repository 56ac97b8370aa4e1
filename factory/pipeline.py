"""The pipeline: read → validate → one actor pool per stage → sink → the run's tables.

``build_datasets`` turns a validated ``Job`` into lazy Ray Data plans; ``run_job`` executes them,
streaming the sink's rows into a ``RunRecorder`` and committing the run at the end. Ray does the
scheduling, backpressure and actor restarts; nothing here queues or retries on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import ray
import ray.data
from ray.data import ActorPoolStrategy

from factory.keys import chain_fingerprint, extension
from factory.manifest import ManifestDatasource, ManifestInfo, scan
from factory.rows import RowRules, validate_batch
from factory.runs import Counts, RunRecorder, is_committed, read_summary
from factory.sink import (IntermediateConfig, SinkConfig, mark_existing, select_rows,
                          write_assets, write_intermediates)
from factory.spec import Job
from factory.storage import Store

log = logging.getLogger(__name__)

#: Rows per sink task: encoding is the sink's real cost, so small batches spread it.
SINK_BATCH = 8
#: Rows per block while reading, validating and looking up existing work: cheap per row.
PREPARE_ROWS = 256
#: CPUs the read, validate, existence-check and sink tasks need besides the actor pools.
TASK_CPUS = 1.0


class ClusterTooSmall(RuntimeError):
    """The job's actor pools cannot all be placed, or would leave no CPU for its tasks."""


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports."""

    run_id: str
    manifest_rows: int
    counts: Counts
    wall_s: float
    output_uri: str
    lineage_path: str
    rejects_path: str

    @property
    def assets_per_s(self) -> float:
        return self.counts.assets / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        c = self.counts
        return {"run_id": self.run_id, "manifest_rows": self.manifest_rows, "assets": c.assets,
                "written": c.written, "failed": c.failed, "rejected": c.rejected,
                "failures_by_stage": c.failures_by_stage, "wall_s": round(self.wall_s, 3),
                "assets_per_s": round(self.assets_per_s, 3)}


def fingerprint(job: Job, upto: int | None = None) -> str:
    """The chain fingerprint of the job (or of its first ``upto`` stages, for intermediates)."""
    if upto is not None:
        return chain_fingerprint(job.stages[:upto], encoding="png")
    encoding = f"{job.output.image_format}:{job.output.quality}"
    return chain_fingerprint(job.stages, encoding=encoding)


def row_rules(job: Job, info: ManifestInfo) -> RowRules:
    """What every manifest row of this job must satisfy, and how its asset key is derived."""
    return RowRules(seed=job.seed, variant=job.variant, prompt_template=job.prompt_template,
                    negative_template=job.negative_template,
                    duplicate_rejects=info.duplicate_rejects, chain_fingerprint=fingerprint(job),
                    image_ext=extension(job.output.image_format))


def _work_list(job: Job, info: ManifestInfo, store: Store, *,
               limit: int | None) -> ray.data.Dataset:
    """read → validate → mark existing work, materialised once (rows of text, no pixels, in
    the object store, not the driver): each row's fate is decided exactly once, so no row can
    fall between the finished and the to-render plans, even while another run writes."""
    ds = ray.data.read_datasource(ManifestDatasource(job.manifest_uri, job.manifest_format,
                                                     limit=limit, s3_options=job.s3),
                                  override_num_blocks=1)
    ds = ds.repartition(target_num_rows_per_block=PREPARE_ROWS)
    ds = ds.map_batches(validate_batch, fn_kwargs={"rules": row_rules(job, info)},
                        batch_size=None, batch_format="numpy", num_cpus=0.25)
    ds = ds.map_batches(mark_existing, fn_kwargs={"store": store}, batch_size=None,
                        batch_format="numpy", num_cpus=0.25)
    return ds.materialize()


def build_datasets(job: Job, info: ManifestInfo, store: Store, *,
                   limit: int | None = None) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """Two lazy Ray Data plans over one work list: the rows whose assets already exist
    (straight to the sink's lineage, no stage touches them) and the rows to render.

    Splitting keeps a refresh or a resume from pushing thousands of finished rows through every
    actor pool.
    """
    work = _work_list(job, info, store, limit=limit)
    done = work.map_batches(select_rows, fn_kwargs={"existing": True}, batch_size=None,
                            batch_format="numpy", num_cpus=0.25)
    done = done.map_batches(write_assets, fn_kwargs={"config": sink_config(job, store)},
                            batch_size=None, batch_format="numpy", num_cpus=0.25)
    ds = work.map_batches(select_rows, fn_kwargs={"existing": False}, batch_size=None,
                          batch_format="numpy", num_cpus=0.25)
    # Blocks of one batch of the largest-batch stage: every actor of a pool gets work, and each
    # stage's batches depend on the manifest alone (same batches, same bytes, run after run).
    ds = ds.repartition(target_num_rows_per_block=block_rows(job))
    for index, plan in enumerate(job.stages):
        r = plan.resources
        ds = ds.map_batches(
            _named(plan.card.runtime, plan.name),
            fn_constructor_kwargs={"plan": plan},
            batch_size=r.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=r.concurrency),
            num_gpus=r.num_gpus,
            num_cpus=r.num_cpus,
        )
        if plan.name in job.keep_intermediates:
            config = IntermediateConfig(store=store, stage=plan.name,
                                        fingerprint=fingerprint(job, upto=index + 1))
            ds = ds.map_batches(write_intermediates, fn_kwargs={"config": config},
                                batch_size=None, batch_format="numpy", num_cpus=0.5)
    ds = ds.map_batches(write_assets, fn_kwargs={"config": sink_config(job, store)},
                        batch_size=SINK_BATCH, batch_format="numpy", num_cpus=0.5)
    return done, ds


def sink_config(job: Job, store: Store) -> SinkConfig:
    """The sink's frozen settings for a job."""
    return SinkConfig(store=store, image_format=job.output.image_format,
                      quality=job.output.quality, png_compression=job.output.png_compression,
                      chain_fingerprint=fingerprint(job))


def block_rows(job: Job) -> int:
    """Rows per block between stages: one batch of the stage with the largest batches."""
    return max(plan.resources.batch_size for plan in job.stages)


def _named(runtime: type, stage_name: str) -> type:
    """A subclass named after the stage, so the Ray dashboard shows one pool per stage."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in stage_name)
    return type(f"{runtime.__name__}_{safe}", (runtime,), {"__module__": runtime.__module__})


def run_job(job: Job, *, limit: int | None = None,
            on_progress: Callable[[Counts, int], None] | None = None) -> RunResult:
    """Run a validated job on the connected Ray and commit its run. Needs ``ray.init`` first.

    The manifest is scanned and the store probed before any model loads. A run whose lineage is
    already committed is reported and nothing is written.
    """
    started = time.perf_counter()
    # Ordered execution keeps each stage's batches the same from run to run: batched float
    # maths is then bit-identical too, so the same job yields the same bytes on the same machine.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    store = Store(job.output.uri, job.s3)
    info = scan(job.manifest_uri, job.manifest_format, limit=limit, s3_options=job.s3)
    paths = {"lineage_path": store.path(f"runs/{job.run_id}/lineage.parquet"),
             "rejects_path": store.path(f"runs/{job.run_id}/rejects.parquet")}
    if is_committed(store, job.run_id):
        return _committed_result(job, store, paths)
    check_resources(job)
    store = store.preflight(job.run_id)
    recorder = RunRecorder(store, job.run_id, job.stages, job.keep_intermediates)
    try:
        for ds in build_datasets(job, info, store, limit=limit):
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if batch.num_rows:
                    recorder.add(batch)
                if on_progress is not None:
                    on_progress(recorder.counts, info.rows)
        result = RunResult(run_id=job.run_id, manifest_rows=info.rows, counts=recorder.counts,
                           wall_s=time.perf_counter() - started, output_uri=job.output.uri,
                           **paths)
        if recorder.counts.total != info.rows:
            raise RuntimeError(f"SKU accounting broke: {info.rows} manifest rows but "
                               f"{recorder.counts.total} recorded; run not committed")
        recorder.commit({**result.summary(), "job": job.name, "spec_hash": job.spec_hash,
                         "season": job.season or "",
                         "committed_at": datetime.now(timezone.utc).isoformat()})
        return result
    except BaseException:
        recorder.abort()
        raise


def _committed_result(job: Job, store: Store, paths: dict[str, str]) -> RunResult:
    summary = read_summary(store, job.run_id)
    log.warning("run %s is already committed; nothing to do", job.run_id)
    counts = Counts(assets=summary.get("assets", 0), written=0,
                    failed=summary.get("failed", 0), rejected=summary.get("rejected", 0),
                    failures_by_stage=summary.get("failures_by_stage", {}))
    return RunResult(run_id=job.run_id, manifest_rows=summary.get("manifest_rows", 0),
                     counts=counts, wall_s=0.0, output_uri=job.output.uri, **paths)


def init_ray(address: str | None, *, logical_cpus: float | None = None) -> None:
    """Connect to a cluster, or start a local Ray of our own (no dashboard).

    A local Ray gets at least as many logical CPUs as the job's actor pools ask for, plus one
    for the read, validate and sink tasks; they time-share the real cores.
    """
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    import os

    cpus = max(os.cpu_count() or 1, int(logical_cpus or 0) + int(TASK_CPUS) + 1)
    # address="local": always a new Ray of our own, never one found on the machine
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True,
             configure_logging=True, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False


def check_resources(job: Job) -> None:
    """Fail fast where Ray would wait forever: actor pools that hold every CPU starve the
    read and sink tasks, and a pool asking for more GPUs than exist never starts."""
    total = ray.cluster_resources()
    cpus_needed = logical_cpus_needed(job) + TASK_CPUS
    gpus_needed = sum(p.resources.num_gpus * p.resources.concurrency for p in job.stages)
    problems = []
    if total.get("CPU", 0.0) < cpus_needed:
        problems.append(f"{cpus_needed:g} CPUs (actor pools {cpus_needed - TASK_CPUS:g} + "
                        f"{TASK_CPUS:g} for read/validate/sink tasks), the cluster has "
                        f"{total.get('CPU', 0.0):g}; lower the stages' num_cpus")
    if total.get("GPU", 0.0) < gpus_needed:
        problems.append(f"{gpus_needed:g} GPUs, the cluster has {total.get('GPU', 0.0):g}")
    if problems:
        raise ClusterTooSmall(f"job '{job.name}' needs " + "; and ".join(problems))


def logical_cpus_needed(job: Job) -> float:
    """Logical CPUs the job's actor pools hold."""
    return sum(p.resources.num_cpus * p.resources.concurrency for p in job.stages)
