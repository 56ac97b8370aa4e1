"""The pipeline: read → validate → actor pools (one per GPU stage, one per run of consecutive
CPU stages: ``stages.chain``) → sink → the run's tables.

``run_job`` scans the manifest (its fingerprint is part of the run's identity,
``factory.run.identity``), streams the work list's first pass (every row's fate; the rows found
in the store and the rejected ones recorded as they arrive: ``factory.run.work``), then executes
the lazy Ray Data plan of ``build_datasets`` over the rows to render, streaming the sink's rows
into a ``RunRecorder`` and committing the run at the end. Ray does the scheduling, backpressure
and actor restarts; nothing here queues or retries on its own. Asset keys and the pool layout
come from the validated job (``Job.keys``, ``Job.pools``), never derived here again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import ray
import ray.data
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from factory.sink.channel_assets import ChannelSinkConfig, write_channel_assets
from factory.cost.budget import Budget
from factory.run.identity import RunInputs, budget_text
from factory.spec.keys import asset_key
from factory.core.heap import HeapTrimmer
from factory.core.metrics import RunLabels
from factory.spec.prices import CostModel, CostTotals, StageShare, stage_shares
from factory.catalog.manifest import scan
from factory.run.placement import (
    TASK_CPUS, alive_nodes, check_output_reach, check_resources,
)
from factory.core.provenance import ModelUse, Provenance
from factory.spec.qa import QaRetries, check_batch
from factory.spec.routes import route_stages
from factory.run.result import RunResult, WorkCount, committed_result
from factory.store.run_tables import LINEAGE, REJECTS, is_committed
from factory.run.recorder import Counts, RunRecorder
from factory.run.sources import sources_digest
from factory.run.work import FirstPass, materialised, render_list, settled, source_plan, work_list
from factory.sink.assets import (
    IntermediateConfig, SinkConfig, select_rows, write_assets, write_intermediates,
)
from factory.spec.job import Job
from factory.store.storage import Store
from factory.publish.catalog import catalog_entry
from stages.base import StagePlan
from stages.device_faults import DeviceFault
from stages.chain import StageChain

log = logging.getLogger(__name__)

#: Rows per sink task: encoding is the sink's real cost, so small batches spread it.
SINK_BATCH = 8


def fingerprint(job: Job, *, route: str | None = None) -> str:
    """The chain fingerprint of the job's assets, or of ``route``'s (``Job.keys``)."""
    return job.keys.chain(route).fingerprint


def chain_of(job: Job, route: str | None = None) -> tuple[StagePlan, ...]:
    """The stages a row goes through: the job's, or its route's."""
    return job.stages if route is None else route_stages(job.stages, job.routes.get(route))


def pool_size(concurrency: int, rows: int | None, block: int) -> int:
    """Actors a pool starts: its ``concurrency``, or fewer when the run has fewer blocks of
    ``block`` rows to render than that (``rows``; None: not known). Every actor loads its
    model before its first batch; one with no block to take would load it for nothing."""
    if rows is None:
        return concurrency
    return max(1, min(concurrency, -(-rows // block)))


def build_datasets(job: Job, work: ray.data.Dataset, store: Store, *,
                   labels: RunLabels = RunLabels(), budget: Budget | None = None,
                   admitted: bool = False, rows: int | None = None) -> ray.data.Dataset:
    """The lazy Ray Data plan that renders the work list's rows to render through the stages'
    actor pools (``stages.chain.pools``) into the sink.

    The rows found in the store or rejected never reach a pool: the work list's first pass
    settled them (``factory.run.work``). With a ``budget``, its gate admits each block's rows
    before the first pool (``factory.cost.budget``), unless they are ``admitted`` already (QA
    re-renders, admitted by the QA check), and the QA check asks it before it sends a row back
    for another render. ``rows``, the rows to render where known, caps each pool at the blocks
    there are (``pool_size``).
    """
    sink, sink_settings = sink_task(job, store, labels)
    ds = work.map_batches(select_rows, fn_kwargs={"render": True}, batch_size=None,
                          batch_format="numpy", num_cpus=0.25)
    # Blocks of one batch of the largest-batch stage: every actor of a pool gets work, and each
    # stage's batches depend on the manifest alone (same batches, same bytes, run after run).
    # With a budget, blocks are exactly that size (the last excepted): while the gate holds
    # the next block, the one in flight must fill every pool's batch and reach the driver.
    gated = budget is not None and not admitted
    ds = ds.repartition(target_num_rows_per_block=block_rows(job), strict=gated)
    if gated:  # one block at a time, in manifest order; no CPU held while it waits
        gate, config = budget.gate()
        ds = ds.map_batches(gate, fn_kwargs={"config": config}, batch_size=None,
                            batch_format="numpy", num_cpus=0,
                            compute=TaskPoolStrategy(size=1))
    for pool in job.pools:
        r = pool.resources
        # a hosted stage keeps the requests it made in the run's store (``stages.hosted``)
        plans = tuple(replace(p, requests_uri=store.uri) if p.card.hosted is not None else p
                      for p in pool.plans)
        if len(plans) == 1:
            fn, kwargs = _named(plans[0].card.runtime, plans[0].name), {"plan": plans[0]}
        else:  # consecutive CPU stages: one actor loads them all and runs them in order
            fn, kwargs = _named(StageChain, pool.name), {"plans": plans}
        ds = ds.map_batches(
            fn,
            fn_constructor_kwargs={**kwargs, "labels": labels},
            batch_size=r.batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(
                size=pool_size(r.concurrency, rows, block_rows(job)),
                max_tasks_in_flight_per_actor=GPU_TASKS_IN_FLIGHT if r.num_gpus > 0 else None),
            num_gpus=r.num_gpus,
            num_cpus=r.num_cpus,
        )
        last = plans[-1].name  # a kept stage ends its pool (``stages.chain.pools``)
        if last in job.keys.intermediates:
            config = IntermediateConfig(store=store, stage=last,
                                        fingerprint=job.keys.intermediates[last])
            ds = ds.map_batches(write_intermediates, fn_kwargs={"config": config},
                                batch_size=None, batch_format="numpy", num_cpus=0.5)
    if job.qa is not None:  # the brand QA gate: rows outside it are rendered again (factory.spec.qa)
        retry_gate = budget.retry_gate() if budget is not None else None
        ds = ds.map_batches(check_batch, fn_kwargs={"config": job.qa, "budget": retry_gate},
                            batch_size=None, batch_format="numpy", num_cpus=0.25)
    ds = ds.map_batches(sink, fn_kwargs={"config": sink_settings},
                        batch_size=SINK_BATCH if budget is None else min(SINK_BATCH,
                                                                         block_rows(job)),
                        batch_format="numpy", num_cpus=0.5)
    return ds


def sink_config(job: Job, store: Store, labels: RunLabels = RunLabels()) -> SinkConfig:
    """The sink's frozen settings for a job."""
    return SinkConfig(store=store, image_format=job.output.image_format,
                      quality=job.output.quality, png_compression=job.output.png_compression,
                      chain_fingerprint=job.keys.chain().fingerprint, labels=labels,
                      route_fingerprints={name: keys.fingerprint
                                          for name, keys in job.keys.routes.items()})


def sink_task(job: Job, store: Store, labels: RunLabels = RunLabels()) -> tuple[Callable, Any]:
    """The task at the end of the chain and its config: ``write_assets``, or with channels
    ``write_channel_assets`` (one asset per channel, each with the generated-image XMP)."""
    if not job.channels:
        return write_assets, sink_config(job, store, labels)

    def provenance(route: str | None) -> Provenance:
        return Provenance(run_id=labels.run_id, job=job.name, models=tuple(
            ModelUse(p.name, p.card.name, p.source_ref, p.revision)
            for p in chain_of(job, route)))

    routes = job.keys.routes
    return write_channel_assets, ChannelSinkConfig(
        sink=sink_config(job, store, labels), channels=job.channels,
        prints=job.keys.chain().channels, provenance=provenance(None),
        route_prints={name: keys.channels for name, keys in routes.items()},
        route_provenance={name: provenance(name) for name in routes})


#: Tasks queued at each actor of a pool that holds a GPU. Ray Data's default (2) lets the first
#: actor ready take two blocks while the others still start, and with ordered output the blocks
#: the others finish wait behind its second: on the simulated 4-GPU cluster
#: (``benchmarks/cluster_sim.py``) one task per actor brought the first asset 24 s sooner and
#: the run's end 7 s (5%) sooner, the steady rate unchanged. A GPU batch runs for seconds, so
#: the next block is at hand when it ends. CPU pools keep Ray Data's default.
GPU_TASKS_IN_FLIGHT = 1


def block_rows(job: Job) -> int:
    """Rows per block between stages: one batch of the stage with the largest batches."""
    return max(plan.resources.batch_size for plan in job.stages)


def _named(runtime: type, stage_name: str) -> type:
    """A subclass named after the stage(s), so the Ray dashboard names each pool."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in stage_name)
    return type(f"{runtime.__name__}_{safe}", (runtime,), {"__module__": runtime.__module__})


def run_job(job: Job, *, limit: int | None = None,
            on_progress: Callable[[Counts, int], None] | None = None,
            on_count: Callable[[WorkCount], None] | None = None,
            previous_run: str | None = None) -> RunResult:
    """Run a validated job on the connected Ray and commit its run. Needs ``ray.init`` first.

    The manifest is scanned (and fingerprinted) and the store probed before any model loads;
    ``on_count`` hears what the run will do before the stages start. A run id that is already
    committed from the same inputs is reported and nothing is written; from other inputs it
    raises ``RunInputsMismatch``. A store that fails for good (after botocore's retries) stops
    the run uncommitted with ``StorageError``, and a device fault in a stage (a CUDA error,
    out of memory: ``stages.device_faults.is_device_fault``) with ``DeviceFault``, naming the stage,
    model and device; running the same run id again resumes it.

    With ``notify:``, the run's end is announced to the job's webhooks after its commit (a
    failure after it raised), and the result records each delivery (``factory.run.notified``).

    ``previous_run``: an earlier committed run of the job in the same store (a refresh's); the
    report links its thumbnails of the assets both runs hold (``factory.run.report``).
    """
    if job.notify is not None:  # this same run, announced once it ends
        from factory.run.notified import run_notified

        return run_notified(job, lambda: run_job(replace(job, notify=None), limit=limit,
                                                 on_progress=on_progress, on_count=on_count,
                                                 previous_run=previous_run))
    # what the driver frees while the run streams goes back to the system (factory.core.heap)
    with HeapTrimmer():
        return _run(job, limit=limit, on_progress=on_progress, on_count=on_count,
                    previous_run=previous_run)


def _run(job: Job, *, limit: int | None,
         on_progress: Callable[[Counts, int], None] | None,
         on_count: Callable[[WorkCount], None] | None,
         previous_run: str | None) -> RunResult:
    """``run_job`` without its announcement."""
    started = time.perf_counter()
    # Ordered execution keeps each stage's batches the same from run to run: batched float
    # maths is then bit-identical too, so the same job yields the same bytes on the same machine.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    store = Store(job.output.uri, job.s3)
    info = scan(job.manifest_uri, job.manifest_format, limit=limit, s3_options=job.s3,
                default_variant=job.variant, catalog=job.catalog)
    inputs = RunInputs(spec_hash=job.spec_hash, manifest_sha256=info.sha256,
                       manifest_rows=info.rows, limit=limit, season=job.season,
                       budget_usd=budget_text(job.budget_usd))
    run_id = job.run_id or inputs.derived_run_id(job.name)
    work = None
    if source_plan(job) is not None:
        # the photos are inputs too: fetched (conditional GETs where they were fetched
        # before) and hashed before the run knows which run it is
        nodes = len(alive_nodes())
        check_output_reach(job, nodes)
        check_resources(job)
        store = store.preflight(run_id)
        work = work_list(job, info, store, limit=limit, nodes=nodes)
        inputs = replace(inputs, sources_sha256=sources_digest(work))
        run_id = job.run_id or inputs.derived_run_id(job.name)
    paths = {"lineage_path": store.path(f"runs/{run_id}/{LINEAGE}"),
             "rejects_path": store.path(f"runs/{run_id}/{REJECTS}")}
    if is_committed(store, run_id):
        return committed_result(job, run_id, inputs, store, paths)
    if work is None:
        nodes = len(alive_nodes())
        check_output_reach(job, nodes)
        check_resources(job)
        store = store.preflight(run_id)
    log.debug("run %s: writes to %s are create-only by %s", run_id, store.uri, store.write_mode)
    labels = RunLabels(job=job.name, run_id=run_id)
    shares = stage_shares(job.pools)
    recorder = RunRecorder(store, run_id, job.stages, job.keep_intermediates,
                           channels=len(job.channels),
                           costs=CostModel(job.prices, shares, channels=max(len(job.channels), 1)),
                           on_cost=_cost_metrics(labels, shares), routes=job.routes,
                           qa=job.qa is not None)
    budget = Budget.start(job, store) if job.budget_usd is not None else None
    try:
        if work is None:
            work = work_list(job, info, store, limit=limit, nodes=nodes)
        stage_names = [p.name for p in job.stages]
        qa = qa_retries(job, recorder, work)

        def record(batch, progress: bool = True) -> None:
            if batch.num_rows:
                kept = qa.take(batch) if qa is not None else batch  # rows to render again: held
                recorder.add(kept)
                _add_stage_ms(recorder.counts, kept, stage_names)
                if budget is not None:
                    budget.record(qa.settled(batch) if qa is not None else batch,
                                  recorder.counts.cost.total_usd)
            if progress and on_progress is not None:
                on_progress(recorder.counts, info.rows)

        # the first pass: every row's fate, the finished rows recorded as they arrive
        first = FirstPass(channels=max(len(job.channels), 1))
        settling = settled(work, *sink_task(job, store, labels))
        settling.set_name(f"{run_id}:work-list")  # the dashboard's Ray Data table names plans
        for batch in settling.iter_batches(batch_size=None, batch_format="pyarrow",
                                           prefetch_batches=0 if budget else 1):
            record(first.take(batch), progress=False)
        counted = WorkCount(run_id=run_id, inputs=inputs, rows=inputs.manifest_rows,
                            rejected=first.rejected, existing=first.existing,
                            to_render=first.to_render, skipped=dict(info.skipped))
        if on_count is not None:
            on_count(counted)
        if on_progress is not None and recorder.counts.outcomes:
            on_progress(recorder.counts, info.rows)
        if counted.to_render:  # the second pass: the rows to render, through the pools
            todo = work if materialised(job) else render_list(job, info, store, first.rows(),
                                                              limit=limit, nodes=nodes)
            ds = build_datasets(job, todo, store, labels=labels, budget=budget,
                                rows=counted.to_render)
            ds.set_name(f"{run_id}:render")
            # with a budget each batch is handed over as it arrives (Ray's prefetch would hold
            # it until the next one is in): the gate waits on what the driver records
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow",
                                         prefetch_batches=0 if budget else 1):
                record(batch)
        if qa is not None:  # the QA gate's retries: the same pools again, a pass per attempt
            qa.run(lambda rows: build_datasets(job, rows, store, labels=labels, budget=budget,
                                               admitted=True), record, name=run_id)
        result = RunResult(run_id=run_id, manifest_rows=info.rows, counts=recorder.counts,
                           wall_s=time.perf_counter() - started, output_uri=job.output.uri,
                           write_mode=store.write_mode,
                           cost=recorder.counts.cost.summary(job.prices), **paths,
                           budget=budget.summary(recorder.counts.cost.total_usd) if budget
                           else {}, qa=qa.summary() if qa is not None else {})
        # every manifest row ends once per channel (once, without channels): asset, failure,
        # rejection or deferral
        expected = info.rows * recorder.counts.channels
        if recorder.counts.outcomes != expected:
            raise RuntimeError(f"SKU accounting broke: {info.rows} manifest rows x "
                               f"{recorder.counts.channels} channel(s) but "
                               f"{recorder.counts.outcomes} recorded; run not committed")
        committed = recorder.commit({**result.summary(), "job": job.name,
                                     "spec_hash": job.spec_hash, "season": job.season or "",
                                     **({"skipped": info.skipped} if info.skipped else {}),
                                     **({"channels": [c.name for c in job.channels]}
                                        if job.channels else {}),
                                     "inputs": inputs.as_dict(),
                                     "catalog": catalog_entry(job),  # what a publish reads
                                     "committed_at": datetime.now(timezone.utc).isoformat()})
    except BaseException as exc:
        recorder.abort()
        fault = device_fault(exc)
        if fault is not None:  # the stage's own words, out of Ray's wrapping
            raise DeviceFault(f"{fault} (run {run_id} was not committed)") from exc
        raise
    finally:
        if budget is not None:
            budget.close()
    if not committed:  # a concurrent run of this id committed first: report its result
        log.warning("run %s was committed by a concurrent run first; reporting its result",
                    run_id)
        return committed_result(job, run_id, inputs, store, paths)
    result = replace(result, report_path=_write_report(store, run_id, previous_run))
    if job.publish is not None:  # the committed run in its catalog's formats (factory.publish)
        from factory.run.published import publish_committed

        result = publish_committed(job, store, result)
    return result


def device_fault(exc: BaseException) -> str | None:
    """The message of a stage's ``DeviceFault`` inside ``exc``, or None.

    Ray hands a failed task's exception to the driver as a ``RayTaskError`` around Ray Data's
    ``UserCodeException``, which keeps the stage's exception only as text (its traceback): the
    fault is found as an object where there is one, else by its line in that text (the
    message is one line, ``Stage._device_fault``).
    """
    marker = f"{DeviceFault.__module__}.{DeviceFault.__name__}: "
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current) is DeviceFault:
            return str(current)
        for line in str(current).splitlines():
            if line.startswith(marker):
                return line.removeprefix(marker).strip()
        cause = getattr(current, "cause", None)
        todo += [cause if isinstance(cause, BaseException) else None,
                 current.__cause__, current.__context__]
    return None


def qa_retries(job: Job, recorder: RunRecorder, work: ray.data.Dataset) -> QaRetries | None:
    """The driver's side of the job's QA gate (``factory.spec.qa``), or None without ``qa:``: a
    row rendered again gets its route's asset key for its new seed, as ``row_rules`` derives."""
    if job.qa is None:
        return None
    routed = job.routes is not None

    def key_of(item: dict) -> str:
        return asset_key(*job.keys.chain(item["route"] if routed else None).lookup, item)

    return QaRetries(costs=recorder.costs, totals=recorder.counts.cost, key_of=key_of,
                     columns=work.schema().names, on_cost=recorder.on_cost)


def _write_report(store: Store, run_id: str, earlier: str | None = None) -> str:
    """The committed run's HTML report; a report that cannot be written is logged, never
    a reason to call the committed run failed (``factory runs open`` writes it later)."""
    from factory.run.report import write_report

    try:
        return write_report(store, run_id, earlier=earlier)
    except Exception as exc:  # noqa: BLE001 - the run is committed either way
        log.warning("run %s: the report could not be written (%s); `factory runs open %s` "
                    "tries again", run_id, exc, run_id)
        return ""


def _cost_metrics(labels: RunLabels, shares: tuple[StageShare, ...]
                  ) -> Callable[[CostTotals], None]:
    """Exports each recorded batch's dollars per stage (``factory_stage_cost_usd``)."""
    from factory.core import metrics

    by_name = {s.name: s for s in shares}

    def record(batch: CostTotals) -> None:
        for stage, usd in batch.usd.items():
            share = by_name[stage]
            metrics.inc("factory_stage_cost_usd", float(usd), labels.tags(
                stage=stage, model=share.model, device="cuda" if share.gpus else "cpu"))

    return record


def _add_stage_ms(counts: Counts, batch, stages: list[str]) -> None:
    """Per-stage milliseconds and rows rendered so far (for the progress display)."""
    import pyarrow.compute as pc

    for stage in stages:
        column = f"ms_{stage}"
        if column in batch.column_names:
            column = batch[column]
            done = pc.filter(column, pc.greater(pc.fill_null(column, 0.0), 0.0))
            total = pc.sum(done).as_py() or 0.0
            if total:
                counts.stage_ms[stage] = counts.stage_ms.get(stage, 0.0) + total
                counts.stage_rows[stage] = counts.stage_rows.get(stage, 0) + len(done)


def local_cpus(logical_cpus: float | None) -> int:
    """Logical CPUs of the factory's own local Ray: at least the cores, and enough for the
    job's actor pools plus the read, validate and sink tasks (they time-share the cores)."""
    return max(os.cpu_count() or 1, int(logical_cpus or 0) + int(TASK_CPUS) + 1)


#: How long a local Ray keeps an idle task worker: 30 minutes (``LOCAL_RAY_CONFIG``).
IDLE_WORKER_KEEP_MS = 30 * 60 * 1000

#: A local Ray's settings.
#:
#: - ``prestart_worker_first_driver``: Ray prestarts idle workers when the first driver
#:   connects, with no runtime env; every task and actor of a run has one (``init_ray``), so
#:   none of them could take such a worker, and each one's start cost about a CPU second while
#:   the run's actors import their libraries (a four-row local run: 21.7 -> 19.5 CPU s in all
#:   processes, medians of three).
#: - ``idle_worker_killing_time_threshold_ms``: Ray kills a task worker idle for a second while
#:   its node has more of them than logical CPUs, which a run's tasks of a fraction of a CPU
#:   (the sink's, the row selection's) make it have. The work list's tasks, the render's
#:   reads and the sink's tasks then start fresh worker processes again (about a CPU second
#:   each), while the pools' actors are starting. A local Ray lives as long as its run, so its
#:   task workers stay until the run ends (no more than the tasks that ran at once: 7 after a
#:   200-row demo run, 5 with Ray's default). A 50,000-row refresh after a full run in the
#:   same process took 12.3-18.9 s with Ray's default (seven refreshes), 10.5-12.1 s with the
#:   workers kept (three), its first pass 3-5 s against about 2 s (``benchmarks/p3_refresh.py``
#:   has its set-up).
LOCAL_RAY_CONFIG = {"prestart_worker_first_driver": False,
                    "idle_worker_killing_time_threshold_ms": IDLE_WORKER_KEEP_MS}


def init_ray(address: str | None, *, logical_cpus: float | None = None,
             dashboard: bool = True, env_vars: Mapping[str, str] | None = None) -> str | None:
    """Connect to a cluster, or start a local Ray of our own; return the dashboard's URL.

    A local Ray gets at least as many logical CPUs as the job's actor pools ask for, plus one
    for the read, validate and sink tasks; they time-share the real cores. Its dashboard
    (``dashboard``) listens on 127.0.0.1 only, behind Ray's token authentication. The terminal
    gets the factory's lines and the warnings and errors of Ray and the stages; Ray's INFO
    chatter stays in the session's logs (``factory.core.console``). ``env_vars``: variables
    this driver's workers get on top of the environment their node started with (Ray's
    runtime env; with ``address``).
    """
    from factory.core.console import quiet_ray, quiet_ray_data, spend_restart_advisory

    if ray.is_initialized():
        return None
    quiet_ray()
    # Every worker runs quiet_ray_worker first: Ray Data's console there as on this driver.
    runtime_env = {"worker_process_setup_hook": "factory.core.console.quiet_ray_worker"}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    if address:
        context = ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        cpus = local_cpus(logical_cpus)
        # address="local": always a new Ray of our own, never one found on the machine
        context = ray.init(address="local", num_cpus=cpus, include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", log_to_driver=True,
                           configure_logging=True, logging_level=logging.WARNING,
                           runtime_env=runtime_env, _system_config=LOCAL_RAY_CONFIG)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one progress display per run: the factory's own
    quiet_ray_data()
    if not (address or "").startswith("ray://"):  # a Ray Client's core worker is remote
        spend_restart_advisory(context.address_info.get("session_dir"))
    return getattr(context, "dashboard_url", None) or None
