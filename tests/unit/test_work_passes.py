"""The work list's two passes, hermetically: settling the finished rows, counting fates, and
the row set a second read keeps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from factory.core.status import STATUS_EXISTS, STATUS_TO_RENDER
from factory.catalog.demo import write_catalog
from factory.catalog.manifest import plan_splits, read_split
from factory.catalog.row_set import RowSet
from factory.run.work import FirstPass
from factory.sink.assets import (
    NOTHING_LISTED, SinkConfig, mark_existing, settle_batch, write_assets,
)
from factory.store.storage import Store


def test_a_row_set_sends_the_shorter_list_and_holds_exactly_the_wanted_rows():
    wanted, others = np.array([9, 3, 3, 7]), np.arange(10, 30)
    kept = RowSet.of(wanted, others)
    assert kept is not None and kept.keep and kept.rows.tolist() == [3, 7, 9]
    dropped = RowSet.of(np.arange(10, 30), np.array([9, 3, 7]))
    assert dropped is not None and not dropped.keep and dropped.rows.tolist() == [3, 7, 9]
    assert [r for r in range(32) if r in kept] == [3, 7, 9]
    assert [r for r in range(32) if r in dropped] == [r for r in range(32) if r not in (3, 7, 9)]
    assert RowSet.of(np.arange(5), np.empty(0, np.int64)) is None  # every row: no filter


def test_a_read_with_a_row_set_yields_only_those_rows_in_every_split(tmp_path):
    path = write_catalog(tmp_path / "catalog.csv", 300)
    splits = plan_splits(str(path), "csv", rows_per_split=64)
    assert len(splits) > 3
    wanted = RowSet(np.array([1, 64, 65, 200, 300]))
    read = [row for split in splits
            for table in read_split(str(path), "csv", split, rows=wanted)
            for row in table["row"].to_pylist()]
    assert read == [1, 64, 65, 200, 300]
    every = [row for split in splits for table in read_split(str(path), "csv", split)
             for row in table["row"].to_pylist()]
    assert every == list(range(1, 301))


def _work(n: int = 4) -> dict[str, np.ndarray]:
    return {"sku": np.array([f"S{i}" for i in range(n)], object),
            "row": np.arange(1, n + 1),
            "status": np.array(["ok", STATUS_EXISTS, "rejected", "ok"][:n], object),
            "error": np.array(["", "", "bad colour", ""][:n], object),
            "failed_stage": np.full(n, "", object),
            "output_key": np.array([f"assets/k{i}/v.png" for i in range(n)], object),
            "sha256": np.full(n, "", object), "bytes": np.array([0, 5, 0, 0][:n])}


def test_settling_records_found_and_rejected_rows_and_marks_the_rest_without_writing(tmp_path):
    store = Store(str(tmp_path))
    config = SinkConfig(store=store, image_format="png", quality=90, png_compression=1,
                        chain_fingerprint="f")
    out = settle_batch(_work(), sink=write_assets, config=config)
    assert out["status"].tolist() == [STATUS_TO_RENDER, "ok", "rejected", STATUS_TO_RENDER]
    assert out["output_key"].tolist() == ["", "assets/k1/v.png", "", ""]
    assert out["bytes"].tolist() == [0, 5, 0, 0] and not out["written"].any()
    assert not any(tmp_path.rglob("*.png"))  # nothing rendered, nothing written


def test_the_first_pass_counts_fates_once_per_row_and_returns_only_settled_rows():
    first = FirstPass(channels=2)
    batch = pa.table({  # a channel sink's rows: a row found in the store once per channel
        "row": [1, 2, 2, 3, 4],
        "status": [STATUS_TO_RENDER, "ok", "ok", "rejected", STATUS_TO_RENDER],
        "output_key": ["", "a/square.png", "a/wide.png", "", ""]})
    settled = first.take(batch)
    assert settled["row"].to_pylist() == [2, 2, 3]
    assert (first.rejected, first.existing, first.to_render) == (1, 1, 2)
    rows = first.rows()
    assert rows is not None and rows.keep and rows.rows.tolist() == [1, 4]


def test_a_decided_row_is_never_looked_up_again(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.put_if_absent("assets/k0/v.png", b"12345")
    monkeypatch.setattr(Store, "head", lambda self, key: pytest.fail("looked up again"))
    out = mark_existing(_work(1), store=store, existing=NOTHING_LISTED)
    assert out["status"].tolist() == ["ok"] and out["bytes"].tolist() == [0]
