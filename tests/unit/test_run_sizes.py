"""How a run sizes its Ray Data plan: actors per pool by the blocks there are to render
(``pool_size``)."""

from __future__ import annotations

from factory.run.pipeline import pool_size


def test_a_pool_starts_no_actor_without_a_block_to_take() -> None:
    assert pool_size(4, rows=3, block=8) == 1  # a refresh of three rows: one model load
    assert pool_size(4, rows=17, block=8) == 3
    assert pool_size(4, rows=1_000, block=8) == 4  # never more than the spec asks
    assert pool_size(2, rows=0, block=8) == 1
    assert pool_size(2, rows=None, block=8) == 2  # not known (the QA gate's passes): as asked
