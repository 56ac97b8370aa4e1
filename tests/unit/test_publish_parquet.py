"""``assets-parquet``: one row per asset in a hive-partitioned dataset, ``run_id=<run>``, that
pyarrow and pandas read as one table over every published run; the lineage's fidelity and QA
figures ride along where the run has them."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds

from factory.publish.publisher import publish_run
from factory.spec.publish import PublishConfig
from factory.store.storage import Store
from tests.support.published_runs import SHOPIFY_LEGACY, Row, write_run

CONFIG = PublishConfig(formats=("assets-parquet",), alt_text="{{ title }} ({{ sku }})")
FIGURES = {"fidelity_delta_e": pa.float64(), "qa": pa.string(), "qa_attempts": pa.int64(),
           "qa_reason": pa.string()}


def test_each_run_is_a_partition_of_one_dataset(tmp_path):
    store = Store(str(tmp_path))
    write_run(tmp_path, "r1", [Row(1, "TOTE-NAVY", figures={"fidelity_delta_e": 1.5,
                                                            "qa": "pass", "qa_attempts": 1}),
                               Row(2, "TOTE-SAND", figures={"qa": "review", "qa_attempts": 3,
                                                            "qa_reason": "too blue"})],
              catalog=SHOPIFY_LEGACY, figures=FIGURES)
    write_run(tmp_path, "r2", [Row(4, "SHIRT-S-WHT")], catalog=SHOPIFY_LEGACY,
              figures=FIGURES, committed_at="2026-05-02T00:00:00+00:00")
    for run in ("r1", "r2"):
        result = publish_run(store, run, CONFIG)
        assert result.paths == (store.path(f"publish/assets/run_id={run}/part-0.parquet"),)
    table = ds.dataset(tmp_path / "publish" / "assets", format="parquet",
                       partitioning="hive").to_table()
    rows = {r["sku"]: r for r in table.to_pylist()}
    assert {s: r["run_id"] for s, r in rows.items()} == {
        "TOTE-NAVY": "r1", "TOTE-SAND": "r1", "SHIRT-S-WHT": "r2"}
    navy = rows["TOTE-NAVY"]
    assert navy["url"] == (tmp_path / navy["key"]).as_uri()  # no base URL: the file's URI
    # a run without channels records no frame size: null, not a guess
    assert (navy["width"], navy["height"], navy["bytes"]) == (
        None, None, (tmp_path / navy["key"]).stat().st_size)
    assert navy["alt_text"] == "Canvas Tote (TOTE-NAVY)" and navy["channel"] is None
    assert (navy["fidelity_delta_e"], navy["qa"], navy["qa_attempts"]) == (1.5, "pass", 1)
    assert rows["TOTE-SAND"]["qa_reason"] == "too blue"
    # the run id is the partition's, not a column of the file
    part = tmp_path / "publish" / "assets" / "run_id=r1" / "part-0.parquet"
    assert "run_id" not in pa.parquet.read_schema(part).names


def test_the_dataset_reads_in_pandas_with_the_run_column(tmp_path):
    import pandas as pd

    write_run(tmp_path, "r1", [Row(1, "TOTE-NAVY", channel="google-shopping")],
              channels=("google-shopping",), catalog=SHOPIFY_LEGACY)
    publish_run(Store(str(tmp_path)), "r1", CONFIG)
    frame = pd.read_parquet(tmp_path / "publish" / "assets")
    assert list(frame["sku"]) == ["TOTE-NAVY"] and list(frame["run_id"].astype(str)) == ["r1"]
    assert list(frame["channel"]) == ["google-shopping"] and list(frame["width"]) == [24]
    assert "fidelity_delta_e" not in frame.columns  # the run's lineage has no such figure
