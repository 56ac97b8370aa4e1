"""A million rows: manifests read in bounded memory by several read tasks, lineage tables in
large row groups, run summaries from the footer alone, existing work found without reading it.

Hermetic: files in tmp_path, no Ray, no network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.catalog import manifest
from factory.run import recorder as runs
from factory.catalog.manifest import Split, iter_records, plan_splits, read_split
from factory.store.run_tables import list_runs, read_summary
from factory.run.recorder import RunRecorder
from factory.sink.assets import STATUS_EXISTS, ExistingAssets, list_existing, mark_existing
from factory.store.storage import Store


class CountingFile:
    """A file-like wrapper that records every read's size."""

    def __init__(self, inner, reads: list[int]) -> None:
        self._inner, self._reads = inner, reads
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        data = self._inner.read(n) if n is not None and n >= 0 else self._inner.read()
        self._reads.append(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def seekable(self) -> bool:
        return self._inner.seekable()

    def readable(self) -> bool:
        return True

    def size(self) -> int:
        return self._inner.size()

    def close(self) -> None:
        self.closed = True
        self._inner.close()

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def records(uri: str, fmt: str) -> list[manifest.Record]:
    return list(iter_records(uri, fmt))


def read_in_splits(uri: str, fmt: str, rows_per_split: int, limit: int | None = None
                   ) -> tuple[list[Split], list[dict]]:
    splits = plan_splits(uri, fmt, rows_per_split=rows_per_split, limit=limit)
    tables = [t for s in splits for t in read_split(uri, fmt, s, limit=limit)]
    return splits, pa.concat_tables(tables).to_pylist()


def one_task(uri: str, fmt: str, limit: int | None = None) -> list[dict]:
    return pa.concat_tables(list(read_split(uri, fmt, Split(), limit=limit))).to_pylist()


# --- Parquet: by row group, bounded memory ----------------------------------------------------

def test_parquet_manifest_is_read_by_row_group_in_bounded_memory(tmp_path, monkeypatch):
    rng = random.Random(7)
    path = tmp_path / "big.parquet"
    groups, per_group = 40, 1000
    table = pa.table({"sku": [f"S{i:06d}" for i in range(groups * per_group)],
                      "title": ["".join(rng.choices("0123456789abcdef", k=60))
                                for _ in range(groups * per_group)]})
    pq.write_table(table, path, row_group_size=per_group, compression="none")
    size = path.stat().st_size
    assert size > 2_000_000

    reads: list[int] = []
    real_open = manifest.open_input
    monkeypatch.setattr(manifest, "READ_BUFFER", 64 * 1024)
    monkeypatch.setattr(manifest, "open_input", lambda *a, **k: CountingFile(real_open(*a, **k),
                                                                            reads))
    peak, count = 0, 0
    baseline = pa.total_allocated_bytes()
    for record in iter_records(str(path), "parquet"):
        count += 1
        assert record.row == count  # numbered from 1 across all row groups
        if count % 250 == 0:
            peak = max(peak, pa.total_allocated_bytes() - baseline)
    assert count == groups * per_group
    assert record.fields["sku"] == f"S{count - 1:06d}"
    assert reads and max(reads) <= 128 * 1024, max(reads)  # never the whole file at once
    assert sum(reads) < 1.5 * size  # and each byte about once
    assert peak < size / 8, (peak, size)  # about one row group decoded at a time


def test_parquet_rows_are_numbered_across_uneven_row_groups(tmp_path):
    path = tmp_path / "m.parquet"
    with pq.ParquetWriter(path, pa.schema([("sku", pa.string()), ("seed", pa.int64())])) as w:
        start = 0
        for n in (3, 1, 5, 2):  # four row groups of uneven size
            w.write_table(pa.table({"sku": [f"P{start + i}" for i in range(n)],
                                    "seed": list(range(start, start + n))}))
            start += n
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    got = records(str(path), "parquet")
    assert [r.row for r in got] == list(range(1, 12))
    assert [r.fields["sku"] for r in got] == [f"P{i}" for i in range(11)]
    splits = plan_splits(str(path), "parquet", rows_per_split=4)
    assert [(s.first_row, s.rows, s.row_groups) for s in splits] == [
        (1, 4, (0, 1)), (5, 5, (2,)), (10, 2, (3,))]
    assert [r for s in splits for r in iter_records(str(path), "parquet", split=s)] == got


# --- several read tasks give exactly the rows of one ------------------------------------------

def awkward_csv(path: Path, rows: int, newline: str = "\r\n") -> Path:
    """BOM, quoted fields with commas, quotes and newlines, blank lines, short rows, bad UTF-8."""
    rng = random.Random(3)
    lines = [b"\xef\xbb\xbfsku,title,color"]
    for i in range(rows):
        kind = rng.random()
        if kind < 0.05:
            lines.append(b"")
        if kind < 0.08:
            lines.append(f"B{i},too,many,fields".encode())
        elif kind < 0.10:
            lines.append(f"U{i},caf".encode() + b"\xe9" + b",red")
        elif kind < 0.40:
            title = rng.choice(['a "quoted"\nmulti-line mug', "x, y", 'inch 12" mug', ""])
            lines.append(f'Q{i},"{title.replace(chr(34), chr(34) * 2)}",blue'.encode())
        else:
            lines.append(f"S{i},mug {i},red".encode())
    path.write_bytes(newline.encode().join(lines) + newline.encode())
    return path


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_csv_read_in_splits_gives_the_rows_of_one_read(tmp_path, newline):
    path = str(awkward_csv(tmp_path / "m.csv", 600, newline))
    whole = one_task(path, "csv")
    assert [r["row"] for r in whole] == list(range(1, len(whole) + 1))
    assert any("\n" in (json.loads(r["fields"]).get("title") or "") for r in whole)
    for every in (1, 7, 64, 250):
        splits, got = read_in_splits(path, "csv", every)
        assert len(splits) == -(-len(whole) // every), every  # several tasks, not one
        assert got == whole, every
    splits, got = read_in_splits(path, "csv", 50, limit=333)
    assert len(splits) == 7 and got == whole[:333]


def test_csv_with_bare_carriage_returns_stays_one_split(tmp_path):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"sku,title\r" + b"".join(f"S{i},mug\r".encode() for i in range(200)))
    splits = plan_splits(str(path), "csv", rows_per_split=10)
    assert splits == [Split()]  # the cut cannot be made exactly: one read task
    assert [r["row"] for r in one_task(str(path), "csv")] == list(range(1, 201))


def test_jsonl_read_in_splits_gives_the_rows_of_one_read(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = []
    for i in range(500):
        lines.append(json.dumps({"sku": f"J{i}", "title": "mug\nwith newline"}))
        if i % 13 == 0:
            lines.append("   ")
        if i % 29 == 0:
            lines.append("{not json")
    path.write_text("\n".join(lines))  # no final newline
    whole = one_task(str(path), "jsonl")
    splits, got = read_in_splits(str(path), "jsonl", 40)
    assert len(splits) == -(-len(whole) // 40) and got == whole
    assert sum(1 for r in got if r["parse_error"]) == 18


def test_a_small_manifest_is_one_read_task_without_a_pass(tmp_path, monkeypatch):
    path = awkward_csv(tmp_path / "m.csv", 30)
    monkeypatch.setattr(manifest, "_csv_marks", lambda *a: pytest.fail("no pass needed"))
    assert plan_splits(str(path), "csv") == [Split()]


def test_datasource_plans_its_splits_once(tmp_path, monkeypatch):
    path = awkward_csv(tmp_path / "m.csv", 300, "\n")
    calls = []
    real = manifest.plan_splits
    monkeypatch.setattr(manifest, "plan_splits", lambda *a, **k: calls.append(1) or real(*a, **k))
    source = manifest.ManifestDatasource(str(path), "csv", rows_per_task=50)
    n = source.num_read_tasks()
    tasks = source.get_read_tasks(1)
    assert n == len(tasks) == len(source.get_read_tasks(200)) > 1 and len(calls) == 1
    rows = pa.concat_tables([t for task in tasks for t in task()]).to_pylist()
    assert rows == one_task(str(path), "csv")


# --- lineage: large row groups; the summary from the footer -----------------------------------

def sink_batch(start: int, n: int, rejected_every: int = 0) -> pa.Table:
    status = ["rejected" if rejected_every and (start + i) % rejected_every == 0 else "ok"
              for i in range(n)]
    return pa.table({
        "row": list(range(start, start + n)), "sku": [f"S{start + i}" for i in range(n)],
        "status": status, "error": ["bad" if s == "rejected" else "" for s in status],
        "reject_field": ["sku" if s == "rejected" else "" for s in status],
        "failed_stage": [""] * n, "written": [True] * n, "output_key": ["k"] * n,
        "sha256": ["0" * 64] * n, "bytes": [10] * n,
    })


def test_lineage_is_written_in_large_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "ROW_GROUP_ROWS", 100)
    store = Store(str(tmp_path / "out"))
    recorder = RunRecorder(store, "r1", ())
    for start in range(1, 361, 8):  # 45 sink batches of 8 rows
        recorder.add(sink_batch(start, 8, rejected_every=9))
    recorder.commit({"assets": recorder.counts.assets})
    lineage = pq.ParquetFile(tmp_path / "out/runs/r1/lineage.parquet")
    rejects = pq.ParquetFile(tmp_path / "out/runs/r1/rejects.parquet")
    assert lineage.metadata.num_rows == 320 and rejects.metadata.num_rows == 40
    groups = [lineage.metadata.row_group(i).num_rows for i in range(lineage.num_row_groups)]
    assert len(groups) == 4 and all(100 <= g < 108 for g in groups[:-1]), groups
    assert rejects.metadata.num_row_groups == 1  # not one per batch
    rows = lineage.read().to_pylist()
    assert [r["row"] for r in rows] == [i for i in range(1, 361) if i % 9]  # order kept


def test_lineage_row_groups_are_bounded_in_bytes_too(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "ROW_GROUP_BYTES", 40_000)  # the driver's buffer stays small
    store = Store(str(tmp_path / "out"))
    recorder = RunRecorder(store, "r1", ())
    for start in range(1, 5_001, 8):
        recorder.add(sink_batch(start, 8))
    recorder.commit({})
    lineage = pq.ParquetFile(tmp_path / "out/runs/r1/lineage.parquet")
    assert lineage.metadata.num_rows == 5_000 and 5 < lineage.num_row_groups < 40
    assert lineage.read()["row"].to_pylist() == list(range(1, 5_001))


def test_summary_is_read_from_the_footer_alone(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "out"))
    recorder = RunRecorder(store, "big", ())
    for start in range(1, 200_001, 5_000):
        recorder.add(sink_batch(start, 5_000))
    recorder.commit({"assets": 200_000, "job": "j"})
    (tmp_path / "out/runs/uncommitted").mkdir()  # a run without a lineage table
    size = (tmp_path / "out/runs/big/lineage.parquet").stat().st_size
    assert size > 1_000_000

    reads: list[int] = []
    real_open = Store.open_input_file
    monkeypatch.setattr(Store, "open_input_file",
                        lambda self, key: CountingFile(real_open(self, key), reads))
    monkeypatch.setattr(Store, "read_bytes", lambda self, key: pytest.fail("whole-file read"))
    assert read_summary(store, "big") == {"assets": 200_000, "job": "j"}
    assert list_runs(store) == [("big", {"assets": 200_000, "job": "j"})]
    assert 0 < sum(reads) < size / 10 and max(reads) <= 64 * 1024, (reads, size)  # the tail


# --- existing work: no re-read, no re-hash; one listing on S3 ---------------------------------

def work_batch(keys: list[str]) -> dict[str, np.ndarray]:
    n = len(keys)
    return {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
            "status": np.array(["ok"] * (n - 1) + ["rejected"], dtype=object),
            "output_key": np.array(keys, dtype=object)}


def test_existing_local_assets_are_found_by_stat_not_read(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    store.put_if_absent("assets/a/x.png", b"12345")
    monkeypatch.setattr(Store, "read_bytes", lambda self, key: pytest.fail("re-read"))
    out = mark_existing(work_batch(["assets/a/x.png", "assets/b/y.png", "assets/a/x.png"]),
                        store=store)
    assert list(out["status"]) == [STATUS_EXISTS, "ok", "rejected"]
    assert list(out["bytes"]) == [5, 0, 0] and list(out["sha256"]) == ["", "", ""]


class ListingStore(Store):
    """A store that answers like S3 from a fixed listing, counting its LIST pages."""

    @property
    def is_s3(self) -> bool:
        return True

    def list_sizes(self, prefix: str):
        keys = [f"assets/k{i:05d}/v.png" for i in range(int(self.uri.rsplit("/", 1)[1]))]
        for i in range(0, len(keys), 1000):
            PAGES.append(i)
            yield [(k, 7) for k in keys[i:i + 1000]]

    def head(self, key: str):
        pytest.fail("a HEAD where the listing answers")


PAGES: list[int] = []


def test_a_listing_answers_for_every_row_when_it_is_cheaper(monkeypatch):
    PAGES.clear()
    store = ListingStore("s3://bucket/2500")
    existing = list_existing(store, rows=2000)
    assert existing is not None and len(PAGES) == 3  # one LIST per 1,000 keys
    out = mark_existing(work_batch(["assets/k00010/v.png", "assets/k02499/v.png",
                                    "assets/k02500/v.png", "assets/nope/v.png", "x"]),
                        store=store, existing=existing)
    assert list(out["status"]) == [STATUS_EXISTS, STATUS_EXISTS, "ok", "ok", "rejected"]
    assert list(out["bytes"]) == [7, 7, 0, 0, 0]
    assert isinstance(existing, ExistingAssets)


def test_listing_stops_where_a_head_per_row_is_cheaper():
    PAGES.clear()
    assert list_existing(ListingStore("s3://bucket/50000"), rows=300) is None
    assert len(PAGES) == 2  # gave up past 1,000 keys (4 per row, at least one page)
    PAGES.clear()
    assert list_existing(ListingStore("s3://bucket/5000"), rows=10) is None  # few rows: HEADs
    assert PAGES == []
    assert list_existing(Store("/tmp/local"), rows=10_000) is None  # local: a stat per row
