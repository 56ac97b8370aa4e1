"""How a run sizes its Ray Data plan: rows per work-list block by catalog size
(``prepare_rows``), and actors per pool by the blocks there are to render (``pool_size``)."""

from __future__ import annotations

from factory.run.pipeline import (PREPARE_BLOCKS, PREPARE_MAX_ROWS, PREPARE_ROWS, pool_size,
                                  prepare_rows)


def test_a_small_catalog_keeps_small_blocks() -> None:
    assert prepare_rows(24) == PREPARE_ROWS
    assert prepare_rows(PREPARE_ROWS * PREPARE_BLOCKS) == PREPARE_ROWS


def test_a_large_catalog_makes_at_most_the_block_count() -> None:
    assert prepare_rows(1_000_000) == 15_625  # 64 blocks, not 3,907 tasks of 256 rows
    assert -(-1_000_001 // prepare_rows(1_000_001)) <= PREPARE_BLOCKS


def test_blocks_are_capped_and_photo_fetches_stay_small() -> None:
    assert prepare_rows(100_000_000) == PREPARE_MAX_ROWS
    assert prepare_rows(1_000_000, sources=True) == PREPARE_ROWS  # network waits: spread them


def test_a_pool_starts_no_actor_without_a_block_to_take() -> None:
    assert pool_size(4, rows=3, block=8) == 1  # a refresh of three rows: one model load
    assert pool_size(4, rows=17, block=8) == 3
    assert pool_size(4, rows=1_000, block=8) == 4  # never more than the spec asks
    assert pool_size(2, rows=0, block=8) == 1
    assert pool_size(2, rows=None, block=8) == 2  # not known (the QA gate's passes): as asked
