"""The work list: every manifest row's fate, decided once, in two streaming passes.

The first pass reads the manifest, validates each row (``factory.run.rows``), looks its asset
key up in the store (``mark_existing``) and settles the rows that need no stage: rows found
in the store and rejected rows become the sink's lineage rows in the same task
(``settle_batch``), and each row to render comes back as one marker row. The driver records
the settled rows as they arrive, counts every fate and keeps the row numbers to render
(``FirstPass``); nothing of the list is held in the object store beyond the blocks in flight.

The second pass reads again only the rows the first left to render (``RowSet``: the read tasks
drop a split's other rows as they parse them, before any is decoded or validated), validates
them with the same rules (the same keys) and looks nothing up: their fate was decided by the
first pass. The manifest's pin (``factory.catalog.manifest_pin``) stops a run whose file changed
between the two reads.

A job that fetches product photos (the photo's hash is part of each key, and the photos are
an input of the run's identity) or has a QA gate (its retries render rows of the list again)
materialises its list once instead, and both passes read that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from factory.catalog.manifest import ManifestDatasource, ManifestInfo
from factory.catalog.row_set import RowSet
from factory.core.status import STATUS_OK, STATUS_REJECTED, STATUS_TO_RENDER
from factory.run.placement import driver_node_label
from factory.run.rows import RowRules, key_room, validate_batch
from factory.run.sources import SourceConfig, fetch_sources, manifest_folder
from factory.sink.assets import NOTHING_LISTED, list_existing, mark_existing, settle_batch
from factory.spec.job import Job
from factory.store.s3 import is_s3
from factory.store.storage import Store
from stages.base import StagePlan

#: Rows per block for photo fetches: network waits, spread over many small tasks. Without
#: photos, a work-list block is a read split (``ManifestDatasource``) and the read, the row
#: validation, the existence check and the settling run as one task per split: Ray Data fuses
#: them, so no block crosses between tasks and nothing waits for an operator downstream (a
#: million-row CSV: 54.7 s with the blocks cut again into 64 before validating, 36.1 s fused).
SOURCE_BLOCK_ROWS = 256
#: A work-list task (validate, then the existence check) holds a whole logical CPU: it is
#: CPU-bound Python, and at a quarter CPU each, four times as many ran at once, each in a worker
#: process of its own, time-sharing the cores (a 200,000-row list: 20.9 s, 17.8 s at one CPU
#: each). Photo fetches wait on the network and keep a quarter.
PREPARE_TASK_CPUS = 1.0


def row_rules(job: Job, info: ManifestInfo) -> RowRules:
    """What every manifest row of this job must satisfy, and how its asset key is derived.

    With channels a row is looked up by its last channel's key (``factory.sink.channel_assets``);
    with routes, by its route's chain (``ChainKeys.lookup``)."""
    route_keys = {name: keys.lookup for name, keys in job.keys.routes.items()}
    chain, ext = job.keys.chain().lookup
    source = source_plan(job)
    return RowRules(key_room=key_room(job), seed=job.seed, variant=job.variant,
                    prompt_template=job.prompt_template,
                    negative_template=job.negative_template,
                    duplicate_rejects=info.duplicate_rejects, chain_fingerprint=chain,
                    image_ext=ext, routes=job.routes, route_keys=route_keys,
                    photo_column=source.params.column if source is not None else "")


def source_plan(job: Job) -> StagePlan | None:
    """The job's source stage (its first, ``stages.source_photo``), or None."""
    return job.stages[0] if job.stages and job.stages[0].card.kind == "source" else None


def materialised(job: Job) -> bool:
    """Whether the job's work list is materialised once (photos fetched once, QA retries),
    rather than read again for the rows to render."""
    return source_plan(job) is not None or job.qa is not None


def _read(job: Job, info: ManifestInfo, *, limit: int | None, nodes: int,
          rows: RowSet | None = None) -> ray.data.Dataset:
    """The manifest's rows (``rows`` of them: ``RowSet``), one read task per split of the file
    (row groups, or runs of ~8k records): Ray's own block count would cut every task's output
    again into pieces, and a read whose output is cut is not fused with the tasks after it
    (``SOURCE_BLOCK_ROWS``)."""
    source = ManifestDatasource(job.manifest_uri, job.manifest_format, limit=limit,
                                s3_options=job.s3, catalog=job.catalog, pin=info.pin,
                                rows=rows)
    # A local manifest is where the driver is: on a multi-node Ray its read stays there.
    pinned = driver_node_label() if nodes > 1 and not is_s3(job.manifest_uri) else None
    return ray.data.read_datasource(source, override_num_blocks=source.num_read_tasks(),
                                    label_selector=pinned)


def work_list(job: Job, info: ManifestInfo, store: Store, *, limit: int | None,
              nodes: int = 1) -> ray.data.Dataset:
    """read → validate → mark existing work: a lazy plan, materialised for a job where
    ``materialised`` says so (rows of text, no pixels, in the object store, not the driver)."""
    rules = row_rules(job, info)
    ds = _read(job, info, limit=limit, nodes=nodes)
    ds = ds.map_batches(validate_batch, fn_kwargs={"rules": rules},
                        batch_size=None, batch_format="numpy", num_cpus=PREPARE_TASK_CPUS)
    source = source_plan(job)
    if source is not None:  # the photo's hash is part of the key: fetched before the lookup
        ds = ds.repartition(target_num_rows_per_block=SOURCE_BLOCK_ROWS)
        config = SourceConfig(store=store, params=source.params, s3=job.s3, rules=rules,
                              base_dir=manifest_folder(job.manifest_uri))
        ds = ds.map_batches(fetch_sources, fn_kwargs={"config": config}, batch_size=None,
                            batch_format="numpy", num_cpus=0.25)
    existing = list_existing(store, rows=info.rows)  # on S3, one LIST per 1,000 assets
    ds = ds.map_batches(mark_existing, fn_kwargs={"store": store, "existing": existing},
                        batch_size=None, batch_format="numpy", num_cpus=PREPARE_TASK_CPUS)
    return ds.materialize() if materialised(job) else ds


def settled(work: ray.data.Dataset, sink: Callable, config: object) -> ray.data.Dataset:
    """The first pass: the work list with its finished rows as lineage rows (``settle_batch``,
    fused into the work list's own tasks)."""
    return work.map_batches(settle_batch, fn_kwargs={"sink": sink, "config": config},
                            batch_size=None, batch_format="numpy", num_cpus=PREPARE_TASK_CPUS)


def render_list(job: Job, info: ManifestInfo, store: Store, rows: RowSet | None, *,
                limit: int | None, nodes: int = 1) -> ray.data.Dataset:
    """The second pass: the rows to render, read again (``rows``; None: every row), validated
    with the same rules, and marked with no lookup (``NOTHING_LISTED``)."""
    ds = _read(job, info, limit=limit, nodes=nodes, rows=rows)
    ds = ds.map_batches(validate_batch, fn_kwargs={"rules": row_rules(job, info)},
                        batch_size=None, batch_format="numpy", num_cpus=PREPARE_TASK_CPUS)
    return ds.map_batches(mark_existing, fn_kwargs={"store": store, "existing": NOTHING_LISTED},
                          batch_size=None, batch_format="numpy", num_cpus=PREPARE_TASK_CPUS)


@dataclass
class FirstPass:
    """What the driver gathers from the first pass: fates and the row numbers to render.

    ``channels``: lineage rows per manifest row found in the store (a channel sink writes one
    per channel)."""

    channels: int = 1
    rejected: int = 0
    to_render: int = 0
    _found: int = 0
    _todo: list[np.ndarray] = field(default_factory=list)
    _done: list[np.ndarray] = field(default_factory=list)

    def take(self, batch: pa.Table) -> pa.Table:
        """Count one batch of the first pass; return its settled rows, to be recorded."""
        todo = pc.fill_null(pc.equal(batch["status"], STATUS_TO_RENDER), False)
        rendered = batch.filter(todo)
        settled_rows = batch.filter(pc.invert(todo))
        self.to_render += rendered.num_rows
        self._todo.append(rendered["row"].to_numpy())
        self._done.append(settled_rows["row"].to_numpy())
        status = settled_rows["status"]
        self.rejected += pc.sum(pc.equal(status, STATUS_REJECTED)).as_py() or 0
        self._found += pc.sum(pc.equal(status, STATUS_OK)).as_py() or 0
        return settled_rows

    @property
    def existing(self) -> int:
        """Rows whose asset was found in the store."""
        return self._found // self.channels

    def rows(self) -> RowSet | None:
        """The rows to render, for ``render_list``."""
        def flat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0, np.int64)

        return RowSet.of(flat(self._todo), flat(self._done))
