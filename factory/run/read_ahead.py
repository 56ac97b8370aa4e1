"""How far a render's catalog read may run ahead of its first actor pool.

Ray Data lets a read run ahead of its consumers as far as its object store budget allows,
which is a share of the whole object store (gigabytes on a GPU node). At a render's start the
pools' actors are still importing and loading their models, so the render's read (a few
seconds of CPU) would put every row to render into the object store before the first pool
takes one: the object store's peak then grows with the catalog.

``ReadAhead`` is a Ray Data backpressure policy (the ``backpressure_policies.enabled`` setting
of the render dataset's own ``DataContext``; Ray's default policies stay on beside it). The
read, and each task operator between it and the first actor pool, starts another task only
while the bytes between the read and that pool (the blocks they have made and no pool task has
taken yet, their running tasks' outputs included, and what the next task is expected to add)
stay under ``READ_AHEAD_BYTES``, or under two of that operator's tasks' output where one is
larger than that, so the next split is always read while the pool works on the last. Every other operator
keeps Ray Data's own budgets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ray.data
from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES, ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, BackpressurePolicy,
)
from ray.data._internal.execution.operators.actor_pool_map_operator import (
    ActorPoolMapOperator,
)
from ray.data._internal.execution.operators.input_data_buffer import InputDataBuffer

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces.physical_operator import PhysicalOperator

#: The bytes a render's read may hold ahead of its first actor pool: about two read splits
#: of the demo catalog's rows (``factory.catalog.manifest.READ_TASK_ROWS``).
READ_AHEAD_BYTES = 4 * 1024 * 1024
#: The ``DataContext`` setting that overrides ``READ_AHEAD_BYTES`` for one dataset.
READ_AHEAD_CONFIG_KEY = "factory.read_ahead_bytes"


def _before_first_pool(read: "PhysicalOperator") -> list["PhysicalOperator"]:
    """The read and the task operators after it, up to the first actor pool."""
    chain, op = [read], read
    while len(op.output_dependencies) == 1:
        op = op.output_dependencies[0]
        if isinstance(op, ActorPoolMapOperator):
            return chain
        chain.append(op)
    return chain


class ReadAhead(BackpressurePolicy):
    """Holds a render's read to ``READ_AHEAD_BYTES`` ahead of its first actor pool."""

    @property
    def name(self) -> str:
        return "ReadAhead"

    def __init__(self, data_context, topology, resource_manager):
        super().__init__(data_context, topology, resource_manager)
        self._bound = int(data_context.get_config(READ_AHEAD_CONFIG_KEY, READ_AHEAD_BYTES))
        reads = [op for op in topology
                 if not isinstance(op, InputDataBuffer) and op.input_dependencies
                 and all(isinstance(d, InputDataBuffer) for d in op.input_dependencies)]
        #: each operator between a read and the first pool -> that stretch of the plan
        self._chains = {op: chain for chain in map(_before_first_pool, reads) for op in chain}

    def held_bytes(self, op: "PhysicalOperator") -> int:
        """Bytes between ``op``'s read and the first pool: blocks made and not yet taken by a
        pool task, and the outputs of the tasks running now."""
        manager = self._resource_manager
        return sum(manager.get_mem_op_outputs(o) + manager.get_mem_op_internal(o)
                   for o in self._chains[op])

    def can_add_input(self, op: "PhysicalOperator") -> bool:
        """Whether ``op``, the read or a task operator before the first pool, may start
        another task: every one of them makes blocks that wait for the pool."""
        if op not in self._chains:
            return True
        return may_start(self.held_bytes(op), op.metrics.num_tasks_running,
                         op.metrics.average_bytes_outputs_per_task, self._bound)


def may_start(held: float, running: int, per_task: float | None, bound: int) -> bool:
    """Whether an operator before the first pool may start another task, with ``held`` bytes
    waiting for the pool, ``running`` tasks of its own and ``per_task`` bytes out of each
    (None: none has finished)."""
    if held == 0 and running == 0:
        return True
    if per_task is None:  # nothing finished yet: one task at a time until one has
        return running == 0
    # tasks larger than the bound: one held and one running, so the pool never waits on them
    return held + (running + 1) * per_task <= max(bound, 2 * per_task)


def hold_read_ahead(ds: ray.data.Dataset, bound: int | None = None) -> ray.data.Dataset:
    """``ds`` with ``ReadAhead`` beside Ray Data's own backpressure policies (its own
    ``DataContext``, no other dataset's)."""
    context = ds.context
    policies = context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                                  ENABLED_BACKPRESSURE_POLICIES)
    if ReadAhead not in policies:
        context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, ReadAhead])
    if bound is not None:
        context.set_config(READ_AHEAD_CONFIG_KEY, bound)
    return ds
