"""Inputs that once broke a manifest reader: each is now a row's reject or the file's clear error.

Every test runs the file the way a run does before any stage starts (scan, read tasks,
validation, the Arrow conversions; ``tests/support/reader_invariants.py``), without Ray.
"""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.catalog.commerce_formats import html_to_text
from factory.catalog.manifest import (
    ManifestDatasource, ManifestError, iter_records, plan_splits, read_split, scan,
)
from factory.catalog.bounded_text import MAX_LINE
from tests.support.reader_invariants import account


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- lone surrogates and bad UTF-8 never reach an Arrow string ----------------------------

def test_a_json_lone_surrogate_rejects_its_row_naming_the_field(tmp_path):
    path = write(tmp_path, "m.jsonl", b'{"sku": "A1", "seed": "\\ud800"}\n'
                                      b'{"sku": "A2", "title": "mug"}\n')
    result = account(path, "jsonl")
    assert result.rejected == {1: ("seed", "not valid Unicode (a lone surrogate)")}
    assert list(result.ok) == [2]


def test_a_json_lone_surrogate_in_a_key_or_a_list_rejects_its_row(tmp_path):
    path = write(tmp_path, "m.jsonl", b'{"sku": "A1", "t\\udfff": "x"}\n'
                                      b'{"sku": "A2", "tags": ["a", "\\udc80"]}\n')
    result = account(path, "jsonl")
    assert result.rejected[1] == ("t\ufffd", "not valid Unicode (a lone surrogate)")
    assert result.rejected[2][0] == "tags"


def test_a_parquet_binary_cell_that_is_not_utf8_rejects_its_row(tmp_path):
    table = pa.table({"sku": ["P1", "P2"], "title": ["mug", "tee"],
                      "blob": pa.array([b"\xff\xfe", b"fine"], pa.binary())})
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    result = account(path, "parquet")
    assert result.rejected == {1: ("blob", "not valid UTF-8")}
    assert list(result.ok) == [2]


def test_a_csv_header_with_bad_utf8_is_read_with_replacement_characters(tmp_path):
    path = write(tmp_path, "m.csv", b"sku,ti\xfftle\nC1,mug\n")
    assert scan(str(path), "csv").columns == ("sku", "ti\ufffdtle")
    assert account(path, "csv").rows == 1


# --- JSON the parser refuses is the row's reject ------------------------------------------

def test_a_json_number_over_the_digit_limit_rejects_its_row(tmp_path):
    path = write(tmp_path, "m.jsonl", b'{"sku": "A1", "seed": ' + b"9" * 5000 + b"}\n"
                                      b'{"sku": "A2", "title": "mug"}\n')
    result = account(path, "jsonl")
    assert result.rejected[1][0] == "(row)" and "limit" in result.rejected[1][1]
    assert list(result.ok) == [2]


def test_json_nested_too_deeply_rejects_its_row(tmp_path):
    deep = b'{"sku": "A1", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    path = write(tmp_path, "m.jsonl", deep + b'{"sku": "A2", "title": "mug"}\n')
    result = account(path, "jsonl")
    assert result.rejected[1] == ("(row)", "not readable JSON: nested too deeply")
    assert list(result.ok) == [2]


# --- bounded records: a huge field or line is one row's reject ----------------------------

def test_a_csv_field_over_the_limit_rejects_its_row_and_reading_goes_on(tmp_path):
    # a quoted field of many short lines: no line is long, the field is
    field = b'"' + b"x" * 1000 + (b"\n" + b"y" * 1000) * (MAX_LINE // 1000 + 10) + b'"'
    path = write(tmp_path, "m.csv", b"sku,title\nA1," + field + b"\nA2,mug\n")
    records = list(iter_records(str(path), "csv"))
    assert [(r.row, r.parse_field) for r in records] == [(1, "(row)"), (2, "")]
    assert "field larger than field limit" in records[0].parse_error
    assert records[1].fields == {"sku": "A2", "title": "mug"}


def test_a_csv_line_over_the_limit_rejects_its_row_and_reading_goes_on(tmp_path):
    path = write(tmp_path, "m.tsv", b"id\ttitle\nM1\t" + b"z" * (MAX_LINE + 5) + b"\nM2\tmug\n")
    records = list(iter_records(str(path), "merchant-tsv"))
    assert [r.row for r in records] == [1, 2]
    assert "over the 16777216-byte limit" in records[0].parse_error
    assert records[1].fields["sku"] == "M2"


def test_one_huge_gzipped_jsonl_line_is_a_reject_read_in_bounded_memory(tmp_path):
    huge = 4 * MAX_LINE  # 64 MiB, about 64 KiB once gzipped
    with gzip.open(tmp_path / "m.jsonl.gz", "wb", compresslevel=1) as file:
        file.write(b'{"sku": "A1", "title": "')
        for _ in range(huge // (1 << 20)):
            file.write(b"a" * (1 << 20))
        file.write(b'"}\n{"sku": "A2", "title": "mug"}\n')
    tracemalloc.start()
    records = list(iter_records(str(tmp_path / "m.jsonl.gz"), "jsonl"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r.row for r in records] == [1, 2]
    assert "over the 16777216-byte limit" in records[0].parse_error
    assert records[1].fields == {"sku": "A2", "title": "mug"}
    assert peak < 2 * MAX_LINE + (8 << 20), peak  # one line's worth, not the 64 MiB line


# --- file-level problems are a ManifestError naming the file ------------------------------

def test_a_corrupt_gzip_stream_names_the_file_and_the_last_row(tmp_path):
    good = gzip.compress(b"".join(b'{"sku": "S%d"}\n' % i for i in range(5000)))
    path = write(tmp_path, "m.jsonl.gz", good[:len(good) // 2] + b"\x00garbage" * 64)
    with pytest.raises(ManifestError, match=r"m\.jsonl\.gz.*after row \d+"):
        scan(str(path), "jsonl")


def test_html_with_a_marked_section_does_not_stop_the_reader(tmp_path):
    assert html_to_text("<p>soft <![foo[ <b>cotton</b></p>") == "soft <![foo[ cotton"
    path = write(tmp_path, "s.csv", b"Handle,Title,Body (HTML),Variant SKU\n"
                                    b"tee,Tee,<![if x[ <b>soft</b>,T1\n")
    result = account(path, "shopify")
    assert list(result.ok) == [1]


# --- the manifest is pinned between the scan and the read tasks ---------------------------

def test_a_manifest_changed_after_the_scan_stops_the_read_tasks(tmp_path):
    path = write(tmp_path, "m.csv", b"sku,title\nA1,mug\nA2,tee\n")
    info = scan(str(path), "csv")
    (split,) = plan_splits(str(path), "csv")
    assert len(list(read_split(str(path), "csv", split, pin=info.pin))) == 1
    path.write_bytes(b"sku,title\nA1,mug\nA2,cap\n")  # same size, new content
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, info.pin.mtime_ns + 1_000_000))
    with pytest.raises(ManifestError, match=r"m\.csv' changed after the run scanned it"):
        list(read_split(str(path), "csv", split, pin=info.pin))


def test_the_datasource_pins_the_manifest_for_its_read_tasks(tmp_path):
    path = write(tmp_path, "m.jsonl", b'{"sku": "A1"}\n')
    source = ManifestDatasource(str(path), "jsonl")
    (task,) = source.get_read_tasks(1)
    path.write_bytes(b'{"sku": "A1"}\n{"sku": "A2"}\n')
    with pytest.raises(ManifestError, match="changed after the run scanned it"):
        list(task())


def test_an_s3_manifest_replaced_after_the_scan_stops_the_read_tasks(tmp_path):
    moto = pytest.importorskip("moto")
    from factory.catalog.manifest import check_pin, pin_manifest
    from factory.store.s3 import S3Options

    options = S3Options(region="us-east-1", max_attempts=2)
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}
    previous = {name: os.environ.get(name) for name in keys}
    os.environ.update(keys)
    try:
        with moto.mock_aws():
            import boto3

            s3 = boto3.client("s3", region_name="us-east-1")
            s3.create_bucket(Bucket="cat")
            s3.put_object(Bucket="cat", Key="m.csv", Body=b"sku\nA1\n")
            pin = pin_manifest("s3://cat/m.csv", options)
            assert pin.etag and pin.size == 7
            check_pin("s3://cat/m.csv", pin, options)  # unchanged: no error
            s3.put_object(Bucket="cat", Key="m.csv", Body=b"sku\nB1\n")
            with pytest.raises(ManifestError, match=r"s3://cat/m\.csv' changed.*etag"):
                check_pin("s3://cat/m.csv", pin, options)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_rows_reach_validation_as_json_the_arrow_table_accepts(tmp_path):
    path = write(tmp_path, "m.jsonl", json.dumps({"sku": "A1", "title": "\x00\u202e\ufeff"})
                 .encode() + b"\n")
    assert list(account(path, "jsonl").ok) == [1]


# --- found by benchmarks/fuzz_readers.py ---------------------------------------------------

def test_a_reject_in_a_column_without_a_name_names_its_position(tmp_path):
    path = write(tmp_path, "m.csv", b"sku,\nC0,\xff\xfe\n")
    assert account(path, "csv").rejected == {1: ("(column 2)", "not valid UTF-8")}
    path = write(tmp_path, "m.jsonl", b'{"sku": "J1", "": "\\ud800"}\n')
    assert account(path, "jsonl").rejected[1][0] == "(column 2)"
