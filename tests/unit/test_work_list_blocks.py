"""How many rows each block of the work list holds, by catalog size (``prepare_rows``)."""

from __future__ import annotations

from factory.run.pipeline import PREPARE_BLOCKS, PREPARE_MAX_ROWS, PREPARE_ROWS, prepare_rows


def test_a_small_catalog_keeps_small_blocks() -> None:
    assert prepare_rows(24) == PREPARE_ROWS
    assert prepare_rows(PREPARE_ROWS * PREPARE_BLOCKS) == PREPARE_ROWS


def test_a_large_catalog_makes_at_most_the_block_count() -> None:
    assert prepare_rows(1_000_000) == 15_625  # 64 blocks, not 3,907 tasks of 256 rows
    assert -(-1_000_001 // prepare_rows(1_000_001)) <= PREPARE_BLOCKS


def test_blocks_are_capped_and_photo_fetches_stay_small() -> None:
    assert prepare_rows(100_000_000) == PREPARE_MAX_ROWS
    assert prepare_rows(1_000_000, sources=True) == PREPARE_ROWS  # network waits: spread them
