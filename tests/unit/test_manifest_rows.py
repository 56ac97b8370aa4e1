"""Manifest reading and row validation: every bad-row kind is rejected with row and reason.

Runs the same functions the Ray pipeline runs (record stream → Arrow chunk → validate_batch),
without starting Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.catalog.manifest import ManifestError, _to_table, iter_records, scan
from factory.run.rows import RowRules, derive_seed, validate_batch

TEMPLATE = "a {{ color }} {{ title }}"
HEADER = "sku,title,color,seed,width,height,palette\n"


def run_rows(path: Path, fmt: str = "csv", template: str = TEMPLATE) -> list[dict]:
    info = scan(str(path), fmt, default_variant="default")
    rules = RowRules(seed=1, variant="default", prompt_template=template,
                     duplicate_rejects=info.duplicate_rejects)
    records = list(iter_records(str(path), fmt))
    batch = {k: v.to_numpy(zero_copy_only=False)
             for k, v in zip(_to_table(records).column_names, _to_table(records).columns)}
    out = validate_batch(batch, rules=rules)
    rows = [dict(zip(out, values)) for values in zip(*out.values())]
    assert len(rows) == info.rows == len(records)  # every row accounted for
    return rows


def write(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def only_reject(rows: list[dict], row: int) -> dict:
    bad = [r for r in rows if r["status"] == "rejected"]
    assert [r["row"] for r in bad] == [row], bad
    assert all(r["status"] == "ok" for r in rows if r["row"] != row)
    return bad[0]


def test_good_rows_become_work_items(tmp_path):
    rows = run_rows(write(tmp_path, HEADER + "A1,mug,red,,,,\nA2,lamp,blue,42,64,128,#fff #000\n"))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["prompt"] == "a red mug"
    assert rows[0]["seed"] == derive_seed(1, "A1", "default")
    assert rows[1]["seed"] == 42 and rows[1]["width"] == 64 and rows[1]["height"] == 128
    assert rows[1]["palette"] == "#fff #000"


@pytest.mark.parametrize("line, field, reason", [
    (",mug,red,,,,", "sku", "missing or empty"),
    ("   ,mug,red,,,,", "sku", "missing or empty"),
    ("../etc,mug,red,,,,", "sku", "'/'"),
    ("a/b,mug,red,,,,", "sku", "'/'"),
    ("a..b,mug,red,,,,", "sku", "'..'"),
    ("a\x01b,mug,red,,,,", "sku", "control characters"),
    ("x" * 600 + ",mug,red,,,,", "sku", "a local store allows 255"),
    ("B1,mug,red,abc,,,", "seed", "'abc' is not an integer"),
    ("B1,mug,red,-5,,,", "seed", "outside"),
    ("B1,mug,red,,-64,,", "width", "positive multiple of 8"),
    ("B1,mug,red,,,12.5,", "height", "not an integer"),
    ("B1,mug,red,,,,#GGG", "palette", "invalid colour '#GGG'"),
    ("B1,mug,,,,,", "color", "missing value for prompt field 'color'"),
    ("B1,mug,red,1,2,3,4,5", "(row)", "expected 7 fields as in the header, got 8"),
    ("B1,mug,red", "(row)", "expected 7 fields as in the header, got 3"),
])
def test_each_bad_row_kind_is_rejected_with_field_and_reason(tmp_path, line, field, reason):
    rows = run_rows(write(tmp_path, HEADER + "G1,cup,red,,,,\n" + line + "\nG2,cup,red,,,,\n"))
    bad = only_reject(rows, 2)
    assert bad["reject_field"] == field
    assert reason in bad["error"]


def test_non_utf8_bytes_reject_only_their_row(tmp_path):
    data = (HEADER + "G1,cup,red,,,,\nB1,caf").encode() + b"\xe9" + ",red,,,,\nG2,cup,red,,,,\n".encode()
    bad = only_reject(run_rows(write(tmp_path, data)), 2)
    assert bad["reject_field"] == "title" and bad["error"] == "not valid UTF-8"


def test_bom_embedded_newlines_and_quotes_are_read(tmp_path):
    text = "\ufeff" + HEADER + 'Q1,"a ""quoted""\nmulti-line mug",red,,,,\nQ2,cup,red,,,,\n'
    rows = run_rows(write(tmp_path, text))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["sku"] == "Q1"  # the BOM did not stick to the first header name
    assert rows[0]["prompt"] == 'a red a "quoted" multi-line mug'
    assert rows[1]["row"] == 2  # a record spanning two lines is one row


def test_blank_lines_are_not_rows(tmp_path):
    rows = run_rows(write(tmp_path, HEADER + "G1,cup,red,,,,\n\n\nG2,cup,red,,,,\n"))
    assert [r["row"] for r in rows] == [1, 2]


def test_identical_duplicate_keeps_the_first(tmp_path):
    rows = run_rows(write(tmp_path, HEADER + "D1,cup,red,,,,\nD2,cup,red,,,,\nD1,cup,red,,,,\n"))
    bad = only_reject(rows, 3)
    assert bad["error"] == "duplicate of row 1 (same sku and variant 'default', same fields)"


def test_conflicting_duplicates_are_all_rejected(tmp_path):
    rows = run_rows(write(tmp_path, HEADER + "D1,cup,red,,,,\nD2,cup,red,,,,\nD1,cup,blue,,,,\n"))
    bad = [r for r in rows if r["status"] == "rejected"]
    assert [r["row"] for r in bad] == [1, 3]
    assert all("rows 1, 3 with conflicting fields" in r["error"] for r in bad)


def test_variants_of_one_sku_are_separate_rows(tmp_path):
    text = ("sku,variant,title,color\nV1,hero,cup,red\nV1,thumb,cup,red\nV1,lifestyle,cup,red\n"
            "V1,,cup,red\nV1,thumb,cup,blue\n")
    rows = run_rows(write(tmp_path, text))
    ok = [(r["sku"], r["variant"]) for r in rows if r["status"] == "ok"]
    assert ok == [("V1", "hero"), ("V1", "lifestyle"), ("V1", "default")]
    bad = {r["row"]: r["error"] for r in rows if r["status"] == "rejected"}
    assert set(bad) == {2, 5} and "variant 'thumb'" in bad[2]  # thumb conflicts with itself
    keys = [r["output_key"] for r in rows if r["status"] == "ok"]
    assert len(set(keys)) == 3 and all(k.startswith("assets/V1/") for k in keys)


def test_the_scan_fingerprints_content_not_formatting(tmp_path):
    a = scan(str(write(tmp_path, "sku,title\nA,mug\nB,cup\n", "a.csv")), "csv")
    quoted = scan(str(write(tmp_path, 'sku,title\r\n"A","mug"\r\n\r\nB,cup\r\n', "b.csv")), "csv")
    edited = scan(str(write(tmp_path, "sku,title\nA,mug\nB,bowl\n", "c.csv")), "csv")
    assert a.sha256 == quoted.sha256  # same records, other bytes
    assert a.sha256 != edited.sha256 and len(a.sha256) == 64
    assert scan(str(tmp_path / "c.csv"), "csv", limit=1).sha256 == scan(
        str(tmp_path / "a.csv"), "csv", limit=1).sha256  # only the rows the run covers


def test_missing_template_column_rejects_every_row(tmp_path):
    rows = run_rows(write(tmp_path, "sku,title\nA,cup\nB,mug\n"))
    assert [(r["status"], r["reject_field"]) for r in rows] == [("rejected", "color")] * 2


@pytest.mark.parametrize("text, message", [
    ("", "empty file or no header"),
    ("sku,title\n", "no data rows"),
    ("\n\n", "empty file or no header"),
    ("title,color\nmug,red\n", "no 'sku' column"),
    ("sku,sku\nA,B\n", "appears twice"),
])
def test_unreadable_manifests_are_clear_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ManifestError, match=message) as err:
        scan(str(path), "csv")
    assert str(path) in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="cannot open"):
        scan(str(tmp_path / "nope.csv"), "csv")


def test_jsonl_bad_lines_are_rows_with_reasons(tmp_path):
    lines = [json.dumps({"sku": "J1", "title": "cup", "color": "red"}), "{not json", "[1, 2]",
             json.dumps({"sku": "J2", "title": "mug", "color": "teal", "seed": 9})]
    rows = run_rows(write(tmp_path, "\n".join(lines) + "\n", "m.jsonl"), "jsonl")
    assert [r["status"] for r in rows] == ["ok", "rejected", "rejected", "ok"]
    assert "not valid JSON" in rows[1]["error"] and "expected a JSON object" in rows[2]["error"]
    assert rows[3]["seed"] == 9 and rows[3]["prompt"] == "a teal mug"


def test_parquet_typed_columns_are_read_as_text(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"sku": ["P1", "P2"], "title": ["cup", "mug"],
                             "color": ["red", None], "seed": [5, None]}), path)
    rows = run_rows(path, "parquet")
    assert rows[0]["status"] == "ok" and rows[0]["seed"] == 5
    assert rows[1]["status"] == "rejected" and rows[1]["reject_field"] == "color"


def test_unicode_sku_is_kept_and_key_encoded(tmp_path):
    from factory.spec.keys import key_safe

    rows = run_rows(write(tmp_path, HEADER + "Kaffeetasse Ü 1,cup,red,,,,\n"))
    assert rows[0]["status"] == "ok" and rows[0]["sku"] == "Kaffeetasse Ü 1"
    assert key_safe(rows[0]["sku"]) == "Kaffeetasse%20%C3%9C%201"
