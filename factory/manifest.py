"""Manifests: CSV, Parquet and JSONL catalogs streamed as numbered records.

Rows are numbered from 1 (the first data record; a CSV header and blank lines are not rows).
``iter_records`` streams one file through a pyarrow filesystem and yields each row's fields as
strings, or the reason it could not be parsed (bad UTF-8, wrong field count, bad JSON). Nothing
here holds the whole manifest: ``scan`` keeps one hash per SKU to find duplicates, and
``ManifestDatasource`` hands Ray Data the same stream as Arrow tables.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Iterator

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from factory.s3 import S3Options, is_s3, pyarrow_filesystem

#: Rows per Arrow block from the reader. Small blocks spread work over a stage's actors and
#: fix each stage's batch composition by the manifest alone (deterministic bytes per run).
CHUNK_ROWS = 32
csv.field_size_limit(1 << 24)


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing, empty, no header)."""


@dataclass(frozen=True)
class Record:
    """One manifest row: its number, its fields, or why it could not be parsed."""

    row: int
    fields: dict[str, str | None]
    parse_field: str = ""
    parse_error: str = ""


@dataclass(frozen=True)
class ManifestInfo:
    """What one streaming pass over the manifest found, before any model runs.

    Attributes:
        rows: number of data rows.
        columns: field names in first-seen order.
        duplicate_rejects: row number -> reason, for duplicate SKU ids.
    """

    rows: int
    columns: tuple[str, ...]
    duplicate_rejects: dict[int, str]


def open_input(uri: str, s3_options: S3Options | None = None) -> Any:
    """Open a manifest for streaming reads through a pyarrow filesystem (local or S3)."""
    if is_s3(uri):
        filesystem, path = pyarrow_filesystem(s3_options or S3Options()), uri.removeprefix("s3://")
    else:
        filesystem, path = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return filesystem.open_input_stream(path)
    except (FileNotFoundError, OSError) as exc:
        raise ManifestError(f"manifest '{uri}': cannot open: {exc}") from exc


def iter_records(uri: str, fmt: str, s3_options: S3Options | None = None) -> Iterator[Record]:
    """Stream the manifest's rows in order."""
    readers = {"csv": _iter_csv, "parquet": _iter_parquet, "jsonl": _iter_jsonl}
    with open_input(uri, s3_options) as stream:
        yield from readers[fmt](uri, stream)


def _iter_csv(uri: str, stream: Any) -> Iterator[Record]:
    # surrogateescape keeps undecodable bytes so the row holding them can be rejected alone.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=False)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ManifestError(f"manifest '{uri}': empty file or no header row")
    header = [h.strip() for h in header]
    _check_header(uri, header)
    row = 0
    for values in reader:
        if not values or (len(values) == 1 and not values[0].strip()):
            continue  # a blank line is not a row
        row += 1
        if len(values) != len(header):
            yield Record(row, {}, "(row)", f"expected {len(header)} fields as in the header, "
                                           f"got {len(values)}")
            continue
        fields = dict(zip(header, values))
        bad = next((k for k, v in fields.items() if _has_surrogates(v)), None)
        if bad is not None:
            yield Record(row, {}, bad, "not valid UTF-8")
            continue
        yield Record(row, {k: (v if v != "" else None) for k, v in fields.items()})


def _iter_parquet(uri: str, stream: Any) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(pa.BufferReader(stream.read()) if not stream.seekable()
                                 else stream)
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"manifest '{uri}': not a Parquet file: {exc}") from exc
    _check_header(uri, parquet.schema_arrow.names)
    row = 0
    for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
        for values in batch.to_pylist():
            row += 1
            yield Record(row, {k: _as_text(v) for k, v in values.items()})


def _iter_jsonl(uri: str, stream: Any) -> Iterator[Record]:
    row = 0
    for line in io.BufferedReader(stream):
        if not line.strip():
            continue
        row += 1
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield Record(row, {}, "(row)", "not valid UTF-8")
            continue
        except json.JSONDecodeError as exc:
            yield Record(row, {}, "(row)", f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield Record(row, {}, "(row)", f"expected a JSON object, got {type(value).__name__}")
            continue
        yield Record(row, {str(k): _as_text(v) for k, v in value.items()})


def _check_header(uri: str, names: list[str]) -> None:
    if "sku" not in names:
        raise ManifestError(f"manifest '{uri}': no 'sku' column (columns: {', '.join(names)})")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ManifestError(f"manifest '{uri}': column '{name}' appears twice in the header")
        seen.add(name)


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    return str(value)


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def scan(uri: str, fmt: str, *, limit: int | None = None,
         s3_options: S3Options | None = None) -> ManifestInfo:
    """One streaming pass: count rows, collect columns, find duplicate SKU ids.

    A SKU seen twice with identical fields keeps its first row (later ones are rejected as
    duplicates); a SKU seen with conflicting fields is ambiguous, so all its rows are rejected.
    """
    first: dict[str, tuple[int, bytes]] = {}
    repeats: dict[str, list[tuple[int, bytes]]] = {}
    columns: dict[str, None] = {}
    rows = 0
    for record in iter_records(uri, fmt, s3_options):
        if limit is not None and record.row > limit:
            break
        rows = record.row
        columns.update(dict.fromkeys(record.fields))
        sku = (record.fields.get("sku") or "").strip()
        if record.parse_error or not sku:
            continue
        digest = hashlib.blake2b(json.dumps(record.fields, sort_keys=True).encode(
            "utf-8", errors="surrogateescape"), digest_size=16).digest()
        if sku in first:
            repeats.setdefault(sku, []).append((record.row, digest))
        else:
            first[sku] = (record.row, digest)
    if rows == 0:
        raise ManifestError(f"manifest '{uri}': no data rows")
    rejects: dict[int, str] = {}
    for sku, later in repeats.items():
        first_row, first_digest = first[sku]
        occurrences = [(first_row, first_digest), *later]
        if all(digest == first_digest for _, digest in later):
            for row, _ in later:
                rejects[row] = f"duplicate of row {first_row} (same sku, same fields)"
        else:
            where = ", ".join(str(row) for row, _ in occurrences)
            for row, _ in occurrences:
                rejects[row] = f"sku appears in rows {where} with conflicting fields"
    return ManifestInfo(rows=rows, columns=tuple(columns), duplicate_rejects=rejects)


_SCHEMA = pa.schema([("row", pa.int64()), ("fields", pa.string()),
                     ("parse_field", pa.string()), ("parse_error", pa.string())])


class ManifestDatasource(Datasource):
    """Ray Data source over one manifest file: numbered rows as Arrow chunks, in order.

    Fields travel as one JSON column so any column names (and any mix of columns across JSONL
    lines) give every block the same schema; the row validator decodes them.
    """

    def __init__(self, uri: str, fmt: str, *, limit: int | None = None,
                 s3_options: S3Options | None = None) -> None:
        self.uri, self.fmt, self.limit, self.s3_options = uri, fmt, limit, s3_options

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        uri, fmt, limit, s3_options = self.uri, self.fmt, self.limit, self.s3_options

        def read() -> Iterator[pa.Table]:
            chunk: list[Record] = []
            for record in iter_records(uri, fmt, s3_options):
                if limit is not None and record.row > limit:
                    break
                chunk.append(record)
                if len(chunk) >= CHUNK_ROWS:
                    yield _to_table(chunk)
                    chunk = []
            if chunk:
                yield _to_table(chunk)

        meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(uri,))
        return [ReadTask(read, meta, schema=_SCHEMA)]

    def get_name(self) -> str:
        return "ReadManifest"


def _to_table(records: list[Record]) -> pa.Table:
    return pa.table({
        "row": [r.row for r in records],
        "fields": [json.dumps(r.fields) if not r.parse_error else "{}" for r in records],
        "parse_field": [r.parse_field for r in records],
        "parse_error": [r.parse_error for r in records],
    }, schema=_SCHEMA)
