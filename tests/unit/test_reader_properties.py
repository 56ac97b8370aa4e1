"""Property-based tests: every manifest reader survives hostile rows and arbitrary bytes.

Each test writes a manifest of generated rows (odd Unicode, control characters, lone
surrogates, huge and empty values, missing and extra columns, duplicate SKUs, BOMs, embedded
newlines and quotes) or of raw bytes, and runs it as a run does before any stage starts
(``tests/support/reader_invariants.py``: scan, read tasks, validation, the Arrow conversions).
The invariants: no exception escapes for a row's problem; every row written comes out exactly
once, as ``ok`` or ``rejected`` with a row number, a field and a reason; no asset key leaves
``assets/``; a file-level problem is a ``ManifestError`` naming the file.

The budget is the registered hypothesis profile's (``tests/conftest.py``): ``default`` is small
and derandomised; ``--hypothesis-profile=long`` searches much longer.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from factory.catalog.bounded_text import safe_text  # noqa: E402
from tests.support.reader_invariants import Accounting, account  # noqa: E402

HOSTILE = ["", " ", ".", "..", "../x", "a/../../b", "/abs", "a\\b", "\ufeff", "\ufeffsku",
           "\x00", "\x07", "\x1b[31m", "\ud800", "\udcff", "a\r\nb", "a\rb", "a\nb", '"',
           '""', 'x"y', ",", "\t", "e\u0301", "\u202e", "\u200b", "🙂", "Ω", "x" * 3000,
           "9" * 5000, "-8", "8.0", "abc", "#GGG", "#ff0000", "{{ 7*7 }}", "NaN", "hero", "A1"]
text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=12),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zs", "Zl", "Zp", "Mn"]), max_size=6),
)
#: SKUs: a few repeat (duplicates with equal and with conflicting fields), some are hostile.
sku = st.one_of(st.sampled_from(["A1", "A2", "B-3", "c.4"]), text)
COLUMNS = ["title", "color", "seed", "width", "height", "palette", "variant", "tags"]
column = st.one_of(st.sampled_from(COLUMNS), text)


def run(data: bytes, suffix: str, fmt: str) -> Accounting:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"manifest{suffix}"
        path.write_bytes(data)
        return account(path, fmt)


def exactly_once(result: Accounting, rows: int) -> None:
    assert not result.error, result.error
    assert result.rows == rows
    assert len(result.ok) + len(result.rejected) == rows


def utf8(text_: str) -> bytes:
    return text_.encode("utf-8", "surrogatepass")  # a lone surrogate: bytes that are not UTF-8


def normal(name: str) -> str:
    return safe_text(" ".join(name.split()))


# --- CSV --------------------------------------------------------------------------------

@given(columns=st.lists(column, max_size=5), rows=st.lists(
    st.tuples(sku, st.lists(text, max_size=7)), max_size=8),
    bom=st.booleans(), crlf=st.booleans())
def test_csv_rows_each_end_once(columns, rows, bom, crlf):
    header = ["sku", *columns]
    buffer = io.StringIO()
    # csv.writer quotes a bare "\r" only when it is in the line terminator: with "\n" lines,
    # every field is quoted so that the file holds the rows written
    writer = (csv.writer(buffer, lineterminator="\r\n") if crlf
              else csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL))
    writer.writerow(header)
    for sku_, values in rows:  # missing and extra columns as they come
        writer.writerow([sku_, *values])
    # a record of one blank field is a blank line, not a row
    written = sum(1 for sku_, values in rows if values or sku_.strip())
    result = run((b"\xef\xbb\xbf" if bom else b"") + utf8(buffer.getvalue()), ".csv", "csv")
    names = [safe_text(h.strip()) for h in header]
    if len(set(names)) < len(names):
        assert "appears twice in the header" in result.error
        return
    if written == 0:
        assert "no data rows" in result.error
        return
    exactly_once(result, written)


# --- JSONL, plain and gzipped ------------------------------------------------------------

json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(text, inner, max_size=3)), max_leaves=6)
SPECIAL_LINES = [b'{"sku": "A1", "seed": ' + b"9" * 5000 + b"}",
                 b'{"sku": "A1", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                 b'{"sku": "A1", "seed": "\\ud800"}', b"[1, 2]", b'"sku"', b"{", b"\xff\xfe",
                 b"\xef\xbb\xbf{\"sku\": \"A1\"}", b"null", b"{\"sku\": \"A1\"}\r"]
jsonl_line = st.one_of(
    st.fixed_dictionaries({"sku": sku}, optional={c: json_value for c in COLUMNS}).map(
        lambda d: json.dumps(d).encode()),
    st.dictionaries(text, json_value, max_size=4).map(
        lambda d: utf8(json.dumps(d, ensure_ascii=False))),
    st.sampled_from(SPECIAL_LINES),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"", b"   ", b"\t\r"]),  # blank: not rows
)


@pytest.mark.parametrize("gzipped", [False, True], ids=["jsonl", "jsonl.gz"])
@given(lines=st.lists(jsonl_line, max_size=10), final_newline=st.booleans())
def test_jsonl_rows_each_end_once(gzipped, lines, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    written = sum(1 for line in lines if line.strip())
    if gzipped:
        result = run(gzip.compress(data, mtime=0), ".jsonl.gz", "jsonl")
    else:
        result = run(data, ".jsonl", "jsonl")
    if written == 0:
        assert "no data rows" in result.error
        return
    exactly_once(result, written)


# --- Parquet ----------------------------------------------------------------------------

@given(rows=st.lists(st.tuples(sku, st.none() | text, st.none() | st.binary(max_size=12),
                               st.none() | st.integers(-2**63, 2**63 - 1),
                               st.lists(text, max_size=3)), min_size=1, max_size=8),
       group=st.integers(1, 4))
def test_parquet_rows_each_end_once(rows, group):
    skus, titles, blobs, seeds, tags = zip(*rows)
    table = pa.table({
        "sku": [safe_text(s) for s in skus],  # Arrow strings are valid UTF-8 by definition
        "title": [None if t is None else safe_text(t) for t in titles],
        "blob": pa.array(blobs, pa.binary()),  # bytes: may not be UTF-8
        "seed": pa.array(seeds, pa.int64()),
        "tags": [[safe_text(t) for t in ts] for ts in tags],
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=group)
    exactly_once(run(buffer.getvalue(), ".parquet", "parquet"), len(rows))


# --- Shopify, both header styles ------------------------------------------------------------

LEGACY = ["Handle", "Title", "Body (HTML)", "Vendor", "Type", "Tags", "Status", "Option1 Name",
          "Option1 Value", "Option2 Name", "Option2 Value", "Variant SKU", "Image Src",
          "Variant Image"]
CURRENT = ["Title", "URL handle", "Description", "Vendor", "Product category", "Type", "Tags",
           "SKU", "Status", "Option1 name", "Option1 value", "Product image URL",
           "Variant image URL"]
html_text = st.one_of(text, st.sampled_from(["<p>soft <b>cotton</b></p>", "<![foo[ x",
                                             "<script>x</script>y", "&#xd800;", "<!x", "<"]))
shopify_cell = st.one_of(st.sampled_from(["tee", "mug", "Tee", "active", "draft", "Color",
                                          "Red", "Default Title", "Title", ""]), html_text)


@pytest.mark.parametrize("header", [LEGACY, CURRENT], ids=["legacy", "current"])
@given(rows=st.lists(st.lists(shopify_cell, min_size=13, max_size=15), max_size=8))
def test_shopify_rows_each_end_once(header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    result = run(utf8(buffer.getvalue()), ".csv", "shopify")
    if not result.error:
        assert result.records == len(rows)  # work, rejected or skipped: each row once
        assert len(result.ok) + len(result.rejected) == result.rows
    else:
        assert "no data rows" in result.error


# --- Merchant Center TSV and XML ----------------------------------------------------------------

MERCHANT = ["id", "title", "description", "brand", "color", "size", "item_group_id",
            "image_link", "g:google_product_category"]


@given(rows=st.lists(st.lists(st.one_of(sku, html_text), min_size=8, max_size=10), max_size=8))
def test_merchant_tsv_rows_each_end_once(rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t")
    writer.writerow(MERCHANT)
    writer.writerows(rows)
    result = run(utf8(buffer.getvalue()), ".tsv", "merchant-tsv")
    if not rows:
        assert "no data rows" in result.error
        return
    exactly_once(result, len(rows))


def xml_safe(value: str) -> str:
    return "".join(c for c in value if c in "\t\n\r" or "\x20" <= c <= "\ud7ff"
                   or "\ue000" <= c <= "\ufffd" or c > "\uffff")


@given(items=st.lists(st.dictionaries(st.sampled_from(["g:id", "title", "description",
                                                       "g:color", "g:size", "link"]),
                                      st.one_of(sku, html_text), max_size=6), max_size=8))
def test_merchant_xml_items_each_end_once(items):
    body = "".join("<item>" + "".join(f"<{k}>{escape(xml_safe(v))}</{k}>" for k, v in it.items())
                   + "</item>" for it in items)
    data = ('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0" '
            'xmlns:g="http://base.google.com/ns/1.0"><channel>' + body + "</channel></rss>")
    result = run(data.encode(), ".xml", "merchant-xml")
    if not items:
        assert "no data rows" in result.error
        return
    exactly_once(result, len(items))


# --- raw bytes, every format ----------------------------------------------------------------

FORMATS = [("csv", ".csv"), ("jsonl", ".jsonl"), ("jsonl", ".jsonl.gz"),
           ("parquet", ".parquet"), ("shopify", ".csv"), ("merchant-tsv", ".tsv"),
           ("merchant-xml", ".xml")]
SEEDS = {"csv": b"sku,title\n", "jsonl": b'{"sku": "A1"}\n', "parquet": b"PAR1",
         "shopify": b"Handle,Title,Variant SKU\n", "merchant-tsv": b"id\ttitle\n",
         "merchant-xml": b'<rss xmlns:g="http://base.google.com/ns/1.0"><channel><item>'}


@pytest.mark.parametrize("fmt,suffix", FORMATS, ids=[s for _, s in FORMATS])
@given(data=st.binary(max_size=400), prefixed=st.booleans())
def test_any_bytes_are_rows_or_the_files_clear_error(fmt, suffix, data, prefixed):
    if prefixed:  # past the header check, so the rows' code runs too
        data = SEEDS[fmt] + data
    if suffix == ".jsonl.gz" and prefixed:
        data = gzip.compress(data, mtime=0)
    run(data, suffix, fmt)  # ``account`` checks every invariant


@pytest.mark.parametrize("fmt,suffix", FORMATS, ids=[s for _, s in FORMATS])
def test_an_empty_file_is_the_files_error_naming_it(fmt, suffix):
    data = gzip.compress(b"") if suffix.endswith(".gz") else b""
    result = run(data, suffix, fmt)
    assert "manifest" in result.error and suffix in result.error
