"""A run of consecutive CPU stages in one actor: the loop a user would write, as one Ray pool.

On a GPU cluster each stage has its own pool, pinned to its share of a GPU, and Ray Data
pipelines batches between them. Where the stages share the same CPUs, separate pools buy no
overlap that one process cannot have too (every stage's maths is already multi-threaded), and
cost a great deal: five Python processes each importing torch and diffusers (~5 CPU s each on
start), every image copied through the object store between stages, and intra-op threads of
busy pools oversubscribing the cores. ``StageChain`` loads each stage's model once in one actor
and runs the stages in order on each block, each in its own batch size; the pool (its
``concurrency`` actors) spreads blocks over the cores instead.

Each stage keeps its own contract: its ``__call__`` checks columns, times itself
(``ms_<stage>``), records its metrics and turns row faults into ``status``/``error``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from factory.core import images
from factory.core.metrics import RunLabels
from stages.base import Resources, Stage, StagePlan, use_cores

log = logging.getLogger(__name__)


def pools(plans: Sequence[StagePlan], *, fuse: bool = True,
          keep: Sequence[str] = ()) -> list[tuple[StagePlan, ...]]:
    """The job's actor pools, in order: with ``fuse``, each run of consecutive CPU stages is one
    pool (a ``StageChain``); a GPU stage is a pool of its own, and a stage whose intermediates
    are kept (``keep``) ends its run, so they are written between pools."""
    groups: list[tuple[StagePlan, ...]] = []
    run: list[StagePlan] = []
    for plan in plans:
        if fuse and plan.resources.num_gpus == 0:
            run.append(plan)
            if plan.name in keep:
                groups.append(tuple(run))
                run = []
            continue
        if run:
            groups.append(tuple(run))
            run = []
        groups.append((plan,))
    if run:
        groups.append(tuple(run))
    return groups


def pool_resources(plans: Sequence[StagePlan]) -> Resources:
    """What one actor of a pool asks Ray for: a one-stage pool, its stage's resources; a chain
    runs one stage at a time, so the most any member asks (CPUs, batch rows, actors)."""
    if len(plans) == 1:
        return plans[0].resources
    return Resources(num_gpus=0.0,
                     num_cpus=max(p.resources.num_cpus for p in plans),
                     batch_size=max(p.resources.batch_size for p in plans),
                     concurrency=max(p.resources.concurrency for p in plans))


@dataclass(frozen=True)
class Pool:
    """One actor pool of a job: its stages, in chain order, and what each actor asks Ray for.

    Attributes:
        plans: one GPU stage, or a run of consecutive CPU stages (a ``StageChain``).
        resources: ``pool_resources(plans)``.
    """

    plans: tuple[StagePlan, ...]
    resources: Resources

    @property
    def name(self) -> str:
        """``a+b+c``: its stages' names, as the Ray dashboard and ``factory validate`` show it."""
        return "+".join(p.name for p in self.plans)


def pool_layout(plans: Sequence[StagePlan], *, fuse: bool = True,
                keep: Sequence[str] = ()) -> tuple[Pool, ...]:
    """The job's actor pools (``pools``), each with its resources: computed once per job
    (``factory.spec.job.Job.pools``) and read by the pipeline, placement, prices and forecast."""
    return tuple(Pool(group, pool_resources(group)) for group in pools(plans, fuse=fuse, keep=keep))


class StageChain:
    """Ray Data callable class: the stages of ``plans`` in order, in one actor.

    Args:
        plans: consecutive CPU stages of a job (``num_gpus == 0``).
        labels: the run's metric labels.
    """

    def __init__(self, *, plans: Sequence[StagePlan], labels: RunLabels = RunLabels()) -> None:
        if any(p.resources.num_gpus > 0 for p in plans):
            raise ValueError("a stage chain runs CPU stages only; "
                             f"{[p.name for p in plans if p.resources.num_gpus > 0]} hold GPUs")
        # threads from the pool's shape, set before any model (and torch) loads
        threads = use_cores(pool_resources(plans))
        self.stages: list[Stage] = [p.card.runtime(plan=p, labels=labels, threads=threads)
                                    for p in plans]
        log.info("stage chain %s: %d stages in one actor, %s CPU threads",
                 "+".join(p.name for p in plans), len(plans), threads or "default")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for stage in self.stages:
            size = stage.plan.resources.batch_size
            n = len(batch["sku"])
            if n <= size:
                batch = stage(batch)
                continue
            parts = [stage({k: v[i:i + size] for k, v in batch.items()})
                     for i in range(0, n, size)]
            batch = concat(parts)
        return batch


def concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch from consecutive batches of the same columns (as a stage returns them).

    An image column may be one ``N x H x W x C`` array in one part and an array of arrays in
    another (its rows' shapes differ): those are joined row by row through ``images.store``,
    as the stage itself would have stored them in one batch.
    """
    out: dict[str, np.ndarray] = {}
    for column in parts[0]:
        values = [p[column] for p in parts]
        if len({(v.dtype, v.shape[1:]) for v in values}) == 1:
            out[column] = np.concatenate(values)
            continue
        rows = [row for v in values for row in v]
        if all(isinstance(r, np.ndarray) and r.dtype == np.uint8 and r.ndim == 3 for r in rows):
            out.update(images.store(column, rows))
            continue
        joined = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):
            joined[i] = row
        out[column] = joined
    return out
