"""How many intra-op threads a CPU actor's maths gets (``stages.base.intra_op_threads``)."""

from __future__ import annotations

import pytest

from stages.base import Resources, intra_op_threads, use_cores


@pytest.mark.parametrize("num_cpus", [0.25, 0.5, 1, 2])
def test_time_shared_node_uses_every_core(num_cpus: float) -> None:
    # the factory's local Ray: 7 logical CPUs on 2 cores, every actor time-shares both
    assert intra_op_threads(Resources(num_cpus=num_cpus), cores=2, node_cpus=7) == 2


@pytest.mark.parametrize(("concurrency", "cores", "expected"),
                         [(2, 2, 1), (3, 2, 1), (2, 8, 4), (3, 8, 2), (16, 8, 1)])
def test_time_shared_pool_splits_the_cores_between_its_actors(concurrency: int, cores: int,
                                                               expected: int) -> None:
    # two actors of 2 threads each on 2 cores would spin against each other at every barrier
    resources = Resources(num_cpus=1, concurrency=concurrency)
    assert intra_op_threads(resources, cores=cores, node_cpus=cores + 5) == expected


@pytest.mark.parametrize(("num_cpus", "expected"), [(0.25, 1), (0.5, 1), (1, 1), (2.5, 2),
                                                    (4, 4), (32, 16)])
def test_reserved_node_keeps_the_actors_share(num_cpus: float, expected: int) -> None:
    # logical CPUs are the cores: Ray holds num_cpus for the actor, and it keeps to them
    assert intra_op_threads(Resources(num_cpus=num_cpus), cores=16, node_cpus=16) == expected


def test_outside_ray_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert use_cores(Resources(num_cpus=1)) == 0
    assert use_cores(Resources(num_gpus=1, num_cpus=1)) == 0
    import os

    assert "OMP_NUM_THREADS" not in os.environ
