"""When an operator before a render's first actor pool may start another task (``may_start``)."""

from __future__ import annotations

from factory.run.read_ahead import READ_AHEAD_BYTES, may_start

MIB = 1024 * 1024


def test_the_first_task_always_starts():
    assert may_start(0, 0, None, bound=1)


def test_one_task_at_a_time_until_one_has_finished():
    assert not may_start(0, 1, None, bound=READ_AHEAD_BYTES)
    assert may_start(MIB, 0, None, bound=READ_AHEAD_BYTES)


def test_tasks_start_while_what_they_add_stays_under_the_bound():
    # 1 MiB per task under a 4 MiB bound: held + running + the next one
    assert may_start(2 * MIB, 1, MIB, bound=4 * MIB)
    assert not may_start(3 * MIB, 1, MIB, bound=4 * MIB)
    assert not may_start(4 * MIB, 0, MIB, bound=4 * MIB)


def test_tasks_larger_than_the_bound_run_one_ahead_of_the_pool():
    big = 10 * MIB
    assert may_start(big, 0, big, bound=4 * MIB)  # one held, the next one read
    assert not may_start(big, 1, big, bound=4 * MIB)
    assert not may_start(2 * big, 0, big, bound=4 * MIB)
