"""Manifests: CSV, Parquet and JSONL catalogs, and commerce exports, streamed as numbered records.

Rows are numbered from 1 (the first data record; a CSV header and blank lines are not rows).
``iter_records`` streams one file through a pyarrow filesystem and yields each row's fields as
strings, or the reason it could not be parsed (bad UTF-8, wrong field count, bad JSON). Nothing
here holds the whole manifest: ``scan`` keeps one hash per SKU to find duplicates, and
``ManifestDatasource`` hands Ray Data the same stream as Arrow tables. Shopify and Merchant
Center exports are read by ``factory.catalog.commerce_formats`` into the same records; a CSV whose
header has no ``sku`` column but is a Shopify export's is read as one.

Any bytes give rows or the file's ``ManifestError`` (naming it), never another exception: a
line over ``MAX_LINE``, a CSV field over the csv module's limit, JSON the parser refuses (a
number over Python's 4,300 digits, nesting too deep) and text that would hold a lone surrogate
(bad UTF-8, a JSON ``"\\ud800"``) are each that row's reject (``factory.catalog.bounded_text``).
The scan pins the file (``factory.catalog.manifest_pin``); every read task checks the pin.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from factory.catalog.commerce_formats import (
    COMMERCE_FORMATS, READERS, CatalogOptions, csv_reader, csv_rows, is_shopify_header,
    read_header, shopify_records,
)
from factory.catalog.bounded_text import (
    MAX_LINE, CsvFault, Overlong, bounded_lines, field_label, has_surrogate, safe_text,
)
from factory.catalog.manifest_pin import ManifestPin, check_pin, pin_manifest
from factory.spec.keys import normal_form
from factory.catalog.records import ManifestError, Record
from factory.catalog.row_set import RowSet
from factory.store.s3 import S3Options, is_s3, pyarrow_filesystem

#: Rows per Arrow block from the reader. Small blocks spread work over a stage's actors and
#: fix each stage's batch composition by the manifest alone (deterministic bytes per run).
CHUNK_ROWS = 32
#: Rows per read task (about): a large manifest is read by several tasks, a small one by one.
#: Each task's output is one block, so this also bounds what a read holds in the object store
#: (a 100,000-row CSV: 13 tasks; both cores validate from the first, where 64k-row splits left
#: a 50,000-row catalog to one task).
READ_TASK_ROWS = 8_192
#: Bytes per read from a manifest file (on S3, one ranged GET).
READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class ManifestInfo:
    """What one streaming pass over the manifest found, before any model runs.

    Attributes:
        rows: number of manifest rows (each becomes an asset, a failure or a reject).
        columns: field names in first-seen order.
        duplicate_rejects: row number -> reason, for rows that repeat a (sku, variant).
        sha256: fingerprint of every record the scan read (row numbers, fields, parse
            errors, skip reasons): any change to a row's content changes it.
        skipped: reason -> count of a catalog export's rows that are not manifest rows
            (image-only rows, products filtered out by status); not in ``rows``.
        pin: the file the scan read (``ManifestDatasource`` checks it in every read task).
    """

    rows: int
    columns: tuple[str, ...]
    duplicate_rejects: dict[int, str]
    sha256: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    pin: ManifestPin | None = None


@dataclass(frozen=True)
class Split:
    """One read task's share of a manifest: a run of consecutive rows.

    Attributes:
        first_row: the number of its first row.
        rows: how many rows it holds; None to the end of the file.
        offset: CSV/JSONL: the byte offset of its first record (just after a newline).
        header_end: CSV: the header's length in bytes; the header is re-read before ``offset``.
        row_groups: Parquet: the row groups it reads.
    """

    first_row: int = 1
    rows: int | None = None
    offset: int = 0
    header_end: int = 0
    row_groups: tuple[int, ...] | None = None


def _filesystem(uri: str, s3_options: S3Options | None) -> tuple[Any, str]:
    if is_s3(uri):
        return pyarrow_filesystem(s3_options or S3Options()), uri.removeprefix("s3://")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def open_input(uri: str, s3_options: S3Options | None = None, *,
               random_access: bool = False) -> Any:
    """Open a manifest through a pyarrow filesystem (local or S3).

    A stream reads ahead in 1 MiB pieces (on S3, one ranged GET each, not one per line);
    ``random_access`` gives a seekable file, which Parquet and split reads need.
    """
    filesystem, path = _filesystem(uri, s3_options)
    try:
        if random_access:
            return filesystem.open_input_file(path)
        return filesystem.open_input_stream(path, buffer_size=READ_BUFFER)
    except (FileNotFoundError, OSError) as exc:
        raise ManifestError(f"manifest '{uri}': cannot open: {exc}") from exc


def iter_records(uri: str, fmt: str, s3_options: S3Options | None = None, *,
                 split: Split | None = None, catalog: CatalogOptions | None = None
                 ) -> Iterator[Record]:
    """Stream the manifest's rows in order: all of them, or one ``Split``'s.

    A commerce export (``COMMERCE_FORMATS``) is one split; its skipped rows are yielded too,
    with ``skip`` set (``scan`` counts them, ``read_split`` drops them). Bytes that cannot be
    read on (a corrupt compressed stream) are a ``ManifestError`` naming the last row read.
    """
    row = split.first_row - 1 if split else 0
    try:
        for record in _records(uri, fmt, s3_options, split, catalog or CatalogOptions()):
            row = record.row
            yield record
    except OSError as exc:
        if is_s3(uri) and not any(word in str(exc).lower() for word in _CODEC_WORDS):
            raise  # the store's fault, not the manifest's: ``StorageError`` territory
        raise ManifestError(f"manifest '{uri}': cannot read on after row {row}: "
                            f"{safe_text(str(exc))[:300]}") from exc


#: Words in a decompressor's error: a corrupt manifest, wherever it is stored.
_CODEC_WORDS = ("zlib", "gzip", "inflate", "bz2", "zstd", "lz4", "brotli", "decompress")


def _records(uri: str, fmt: str, s3_options: S3Options | None, split: Split | None,
             catalog: CatalogOptions) -> Iterator[Record]:
    if fmt in COMMERCE_FORMATS:
        with open_input(uri, s3_options) as stream:
            yield from READERS[fmt](uri, stream, catalog)
        return
    if fmt == "parquet":
        with open_input(uri, s3_options, random_access=True) as file:
            records = _iter_parquet(uri, file, split.row_groups if split else None)
            yield from _renumbered(records, split)
        return
    readers = {"csv": functools.partial(_iter_csv, catalog=catalog), "jsonl": _iter_jsonl}
    if split is None or split.offset == 0:
        with open_input(uri, s3_options) as stream:
            yield from _renumbered(readers[fmt](uri, stream), split)
        return
    with open_input(uri, s3_options, random_access=True) as file:
        # The same reader as a whole-file pass, over the header's bytes and then the split's
        # bytes: a split starts just after a record ends, so it parses exactly as it would
        # have in one pass.
        header = file.read_at(split.header_end, 0) if split.header_end else b""
        file.seek(split.offset)
        stream = io.BufferedReader(_Joined(header, file), READ_BUFFER)
        yield from _renumbered(readers[fmt](uri, stream), split)


def _renumbered(records: Iterator[Record], split: Split | None) -> Iterator[Record]:
    """A split's records, numbered from its first row, stopping after its last."""
    if split is None:
        yield from records
        return
    shift, last = split.first_row - 1, None
    if split.rows is not None:
        last = split.rows
    for record in records:
        if last is not None and record.row > last:
            return
        yield Record(record.row + shift, record.fields, record.parse_field,
                     record.parse_error, record.skip) if shift else record


class _Joined(io.RawIOBase):
    """A byte stream: ``head`` then the rest of ``file`` from where it stands."""

    def __init__(self, head: bytes, file: Any) -> None:
        self._head, self._file = memoryview(head), file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._file.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _iter_csv(uri: str, stream: Any, *, catalog: CatalogOptions) -> Iterator[Record]:
    reader = csv_reader(stream)
    header = [h.strip() for h in read_header(uri, reader)]
    if "sku" not in header and is_shopify_header(header):
        yield from shopify_records(uri, header, reader, catalog)
        return
    _check_header(uri, header)
    for row, fields, reject in csv_rows(header, reader):
        yield reject or Record(row, {k: (v if v != "" else None)
                                     for k, v in (fields or {}).items()})


def _parquet_file(uri: str, file: Any) -> Any:
    import pyarrow.parquet as pq

    try:
        # No pre-buffering and a bounded read buffer: column chunks stream page by page, so
        # memory stays bounded even for a file written as one huge row group.
        return pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER)
    except pa.ArrowInvalid as exc:
        raise ManifestError(f"manifest '{uri}': not a Parquet file: {exc}") from exc


def _iter_parquet(uri: str, file: Any, row_groups: tuple[int, ...] | None = None
                  ) -> Iterator[Record]:
    """The rows of ``row_groups`` (default all), numbered from 1, one row group at a time.

    A value that cannot be had as text (a binary or string cell that is not UTF-8, a
    timestamp out of Python's range) is its row's reject naming the column; pages that cannot
    be decoded at all are the file's ``ManifestError``, naming the row group.
    """
    parquet = _parquet_file(uri, file)
    _check_header(uri, parquet.schema_arrow.names)
    groups = range(parquet.num_row_groups) if row_groups is None else row_groups
    row = 0
    for group in groups:
        batches = parquet.iter_batches(batch_size=CHUNK_ROWS, row_groups=[group],
                                       use_threads=False)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
                raise ManifestError(f"manifest '{uri}': row group {group} (after row {row}) "
                                    f"cannot be decoded: {safe_text(str(exc))[:300]}") from exc
            if batch is None:
                break
            for record in _parquet_records(batch, row):
                row += 1
                yield record


def _parquet_records(batch: pa.RecordBatch, before: int) -> list[Record]:
    """One batch's rows, numbered after ``before``: text fields, or the reject of a row
    holding a value that cannot be text."""
    texts: dict[str, list[str | None]] = {}
    faults: dict[int, tuple[str, str]] = {}
    for position, (name, column) in enumerate(zip(batch.schema.names, batch.columns)):
        try:
            values = [_as_text(v) for v in column.to_pylist()]
        except (UnicodeDecodeError, ValueError, OverflowError, pa.ArrowException):
            values = []
            for index in range(len(column)):
                try:
                    values.append(_as_text(column[index].as_py()))
                except (UnicodeDecodeError, ValueError, OverflowError, pa.ArrowException) as exc:
                    values.append(None)
                    faults.setdefault(index, (field_label(name, position), _unreadable(exc)))
        texts[name] = values
    records = []
    for index in range(batch.num_rows):
        row = before + index + 1
        if index in faults:
            records.append(Record(row, {}, *faults[index]))
            continue
        fields = {name: values[index] for name, values in texts.items()}
        bad = next((i for i, v in enumerate(fields.values())
                    if v is not None and has_surrogate(v)), None)
        records.append(Record(row, {}, field_label(batch.schema.names[bad], bad),
                              "not valid Unicode") if bad is not None else Record(row, fields))
    return records


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not valid UTF-8"
    return f"value cannot be read as text: {safe_text(str(exc))[:200]}"


def _iter_jsonl(uri: str, stream: Any) -> Iterator[Record]:
    """One JSON object per line. A line that is not one (bad UTF-8 or JSON, a number over
    Python's 4,300-digit limit, nesting too deep to parse, a line over ``MAX_LINE`` bytes,
    text holding a lone surrogate such as ``"\\ud800"``) is its row's reject, with the field
    at fault where there is one; the rows after it are read as ever."""
    row = 0
    for line in bounded_lines(stream):
        if isinstance(line, Overlong):
            row += 1
            yield Record(row, {}, "(row)", f"a line of {line.size} bytes, over the "
                                           f"{MAX_LINE}-byte limit")
            continue
        if not line.strip():
            continue
        row += 1
        yield _jsonl_record(row, line)


def _jsonl_record(row: int, line: bytes) -> Record:
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return Record(row, {}, "(row)", "not valid UTF-8")
    except json.JSONDecodeError as exc:
        return Record(row, {}, "(row)", f"not valid JSON: {exc.msg} at column {exc.colno}")
    except ValueError as exc:  # an integer over the int-string conversion limit
        return Record(row, {}, "(row)", f"not readable JSON: {safe_text(str(exc))[:200]}")
    except RecursionError:
        return Record(row, {}, "(row)", "not readable JSON: nested too deeply")
    if not isinstance(value, dict):
        return Record(row, {}, "(row)", f"expected a JSON object, got {type(value).__name__}")
    fields: dict[str, str | None] = {}
    for index, (key, item) in enumerate(value.items()):
        try:
            text = _as_text(item)
        except (ValueError, RecursionError) as exc:
            reason = ("nested too deeply" if isinstance(exc, RecursionError)
                      else safe_text(str(exc))[:200])
            return Record(row, {}, field_label(key, index),
                          f"value cannot be read as text: {reason}")
        if has_surrogate(key) or (text is not None and has_surrogate(text)):
            return Record(row, {}, field_label(key, index),
                          "not valid Unicode (a lone surrogate)")
        fields[key] = text
    return Record(row, fields)


def _check_header(uri: str, names: list[str]) -> None:
    if "sku" not in names:
        raise ManifestError(f"manifest '{uri}': no 'sku' column (columns: {', '.join(names)})")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ManifestError(f"manifest '{uri}': column '{name}' appears twice in the header")
        seen.add(name)


def _as_text(value: Any) -> str | None:
    """A value as manifest text; may hold a lone surrogate (callers reject the row then)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8")  # UnicodeDecodeError: the row's reject
    return str(value)


def scan(uri: str, fmt: str, *, limit: int | None = None, default_variant: str = "",
         s3_options: S3Options | None = None, catalog: CatalogOptions | None = None
         ) -> ManifestInfo:
    """One streaming pass: count rows, collect columns, find duplicates, fingerprint content.

    The unit of work is ``(sku, variant)``: one SKU may have ``hero``, ``thumb`` and
    ``lifestyle`` rows (a row without a ``variant`` has ``default_variant``). A pair seen twice
    with identical fields keeps its first row (later ones are rejected as duplicates); a pair
    seen with conflicting fields is ambiguous, so all its rows are rejected. A commerce
    export's skipped rows are counted by reason, not as rows; ``limit`` counts the file's rows.
    """
    pin = pin_manifest(uri, s3_options)
    first: dict[tuple[str, str], tuple[int, bytes]] = {}
    repeats: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
    columns: dict[str, None] = {}
    content = hashlib.sha256()
    rows, skipped = 0, {}
    for record in iter_records(uri, fmt, s3_options, catalog=catalog):
        if limit is not None and record.row > limit:
            break
        encoded = json.dumps(record.fields, sort_keys=True).encode("utf-8",
                                                                   errors="surrogateescape")
        # A skip reason joins the parts only where there is one: plain manifests keep the
        # fingerprint (and so the derived run ids) they had before skipped rows existed.
        parts = (str(record.row), record.parse_field, record.parse_error) + (
            (record.skip,) if record.skip else ())
        content.update(b"\x00".join([p.encode("utf-8", "surrogateescape") for p in parts]
                                    + [encoded]) + b"\n")
        if record.skip:
            skipped[record.skip] = skipped.get(record.skip, 0) + 1
            continue
        rows += 1
        columns.update(dict.fromkeys(record.fields))
        sku = normal_form(record.fields.get("sku"))  # one SKU, whichever Unicode spelling
        if record.parse_error or not sku:
            continue
        unit = (sku, normal_form(record.fields.get("variant")) or default_variant)
        digest = hashlib.blake2b(encoded, digest_size=16).digest()
        if unit in first:
            repeats.setdefault(unit, []).append((record.row, digest))
        else:
            first[unit] = (record.row, digest)
    check_pin(uri, pin, s3_options)  # the bytes hashed are the bytes pinned
    if rows == 0:
        why = "; ".join(f"{n} skipped: {reason}" for reason, n in sorted(skipped.items()))
        raise ManifestError(f"manifest '{uri}': no data rows" + (f" ({why})" if why else ""))
    rejects: dict[int, str] = {}
    for (sku, variant), later in repeats.items():
        first_row, first_digest = first[(sku, variant)]
        occurrences = [(first_row, first_digest), *later]
        if all(digest == first_digest for _, digest in later):
            for row, _ in later:
                rejects[row] = (f"duplicate of row {first_row} (same sku and variant "
                                f"'{variant}', same fields)")
        else:
            where = ", ".join(str(row) for row, _ in occurrences)
            for row, _ in occurrences:
                rejects[row] = (f"sku with variant '{variant}' appears in rows {where} with "
                                "conflicting fields")
    return ManifestInfo(rows=rows, columns=tuple(columns), duplicate_rejects=rejects,
                        sha256=content.hexdigest(), skipped=skipped, pin=pin)


_SCHEMA = pa.schema([("row", pa.int64()), ("fields", pa.string()),
                     ("parse_field", pa.string()), ("parse_error", pa.string())])
_COMPRESSED = (".gz", ".bz2", ".zst", ".zstd", ".lz4", ".br")


def plan_splits(uri: str, fmt: str, *, rows_per_split: int = READ_TASK_ROWS,
                limit: int | None = None, s3_options: S3Options | None = None) -> list[Split]:
    """Cut a manifest into runs of about ``rows_per_split`` consecutive rows, in order.

    Parquet splits at row groups (read from the footer). CSV and JSONL split at record
    boundaries found by one pass of the same CSV parser (a quoted field may hold newlines, so
    a byte offset alone cannot say where a record starts); a file too small to hold more than
    one split's rows, a compressed one, or a CSV the pass cannot cut exactly (a bare ``\\r``
    line ending) is one split. So is a commerce export (a Shopify product's rows continue its
    first row) and a CSV without a ``sku`` column (a Shopify export read as one).
    """
    if fmt in COMMERCE_FORMATS:
        return [Split()]
    if fmt == "parquet":
        with open_input(uri, s3_options, random_access=True) as file:
            metadata = _parquet_file(uri, file).metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        return _group_splits(sizes, rows_per_split, limit)
    filesystem, path = _filesystem(uri, s3_options)
    if path.lower().endswith(_COMPRESSED):
        return [Split()]
    try:
        size = filesystem.get_file_info(path).size or 0
    except OSError as exc:
        raise ManifestError(f"manifest '{uri}': cannot open: {exc}") from exc
    if size < 2 * rows_per_split:  # every row takes two bytes at least
        return [Split()]
    with open_input(uri, s3_options) as stream:
        marks = (_csv_marks if fmt == "csv" else _jsonl_marks)(stream, rows_per_split, limit)
    if marks is None:
        return [Split()]
    header_end, cuts = marks
    starts = [(0, 0), *cuts]
    return [Split(first_row=before + 1, offset=offset, header_end=header_end if offset else 0,
                  rows=(starts[i + 1][1] - before) if i + 1 < len(starts) else None)
            for i, (offset, before) in enumerate(starts)]


def _group_splits(sizes: list[int], rows_per_split: int, limit: int | None) -> list[Split]:
    splits, groups, first, count = [], [], 1, 0
    for index, rows in enumerate(sizes):
        if limit is not None and first + count > limit:
            break
        groups.append(index)
        count += rows
        if count >= rows_per_split:
            splits.append(Split(first_row=first, rows=count, row_groups=tuple(groups)))
            groups, first, count = [], first + count, 0
    if groups:
        splits.append(Split(first_row=first, rows=count, row_groups=tuple(groups)))
    return splits or [Split(row_groups=())]


def _csv_marks(stream: Any, every: int, limit: int | None
               ) -> tuple[int, list[tuple[int, int]]] | None:
    """(header length, [(byte offset, rows before it)]) every ``every`` rows, or None.

    The same record reader as the whole-file pass pulls exactly the lines of one record, so
    after each record ``position`` is where the next one starts. A record the csv module
    cannot read (``CsvFault``), or a line ending at a bare ``\\r``, keeps the file one split
    rather than risk a row number.
    """
    reader = csv_reader(stream)
    cuts: list[tuple[int, int]] = []
    header = next(reader, None)
    if (not isinstance(header, list) or reader.bare_cr
            or "sku" not in (h.strip() for h in header)):
        return None
    header_end = start = reader.position
    row = 0
    for values in reader:
        if isinstance(values, CsvFault) or reader.bare_cr:
            return None
        if values and not (len(values) == 1 and not values[0].strip()):  # not blank
            if row and row % every == 0:
                cuts.append((start, row))  # the next split starts with this record
            row += 1
            if limit is not None and row >= limit:
                break
        start = reader.position
    return header_end, cuts


def _jsonl_marks(stream: Any, every: int, limit: int | None
                 ) -> tuple[int, list[tuple[int, int]]]:
    position, row, cuts = 0, 0, []
    for line in bounded_lines(stream):
        overlong = isinstance(line, Overlong)
        if overlong or line.strip():  # as the reader: a blank line is not a row
            if row and row % every == 0:
                cuts.append((position, row))
            row += 1
            if limit is not None and row >= limit:
                break
        position += line.size if overlong else len(line)
    return 0, cuts


def read_split(uri: str, fmt: str, split: Split, *, limit: int | None = None,
               s3_options: S3Options | None = None, catalog: CatalogOptions | None = None,
               pin: ManifestPin | None = None, rows: RowSet | None = None
               ) -> Iterator[pa.Table]:
    """One split's rows as Arrow tables of ``CHUNK_ROWS`` rows; with ``rows``, only those
    (the others are parsed to find where each row starts, and go no further).

    With a ``pin`` the manifest is checked against it before the first row and after the last
    (``check_pin``): a manifest changed since the scan is a ``ManifestError``, never rows the
    scan did not count.
    """
    if pin is not None:
        check_pin(uri, pin, s3_options)
    yield from _split_tables(uri, fmt, split, limit, s3_options, catalog, rows)
    if pin is not None:
        check_pin(uri, pin, s3_options)


def _split_tables(uri: str, fmt: str, split: Split, limit: int | None,
                  s3_options: S3Options | None, catalog: CatalogOptions | None,
                  rows: RowSet | None = None) -> Iterator[pa.Table]:
    chunk: list[Record] = []
    for record in iter_records(uri, fmt, s3_options, split=split, catalog=catalog):
        if limit is not None and record.row > limit:
            break
        if record.skip:
            continue  # not a manifest row (``ManifestInfo.skipped``)
        if rows is not None and record.row not in rows:
            continue
        chunk.append(record)
        if len(chunk) >= CHUNK_ROWS:
            yield _to_table(chunk)
            chunk = []
    if chunk:
        yield _to_table(chunk)


class ManifestDatasource(Datasource):
    """Ray Data source over one manifest file: numbered rows as Arrow chunks, in order.

    Fields travel as one JSON column so any column names (and any mix of columns across JSONL
    lines) give every block the same schema; the row validator decodes them. A large manifest
    is read by several tasks, one per ``Split`` (``plan_splits``); the file decides how many,
    not Ray's requested parallelism, so pass ``override_num_blocks=num_read_tasks()``.

    Every read task checks the manifest against ``pin`` (pass the scan's, ``ManifestInfo.pin``;
    without one the source pins the file when it plans its splits). With ``rows``, the tasks
    yield only those rows (``RowSet``).
    """

    def __init__(self, uri: str, fmt: str, *, limit: int | None = None,
                 s3_options: S3Options | None = None,
                 rows_per_task: int = READ_TASK_ROWS,
                 catalog: CatalogOptions | None = None,
                 pin: ManifestPin | None = None, rows: RowSet | None = None) -> None:
        self.uri, self.fmt, self.limit, self.s3_options = uri, fmt, limit, s3_options
        self.rows = rows
        self.catalog = catalog
        self.rows_per_task = rows_per_task
        self.pin = pin
        self._splits: list[Split] | None = None

    def splits(self) -> list[Split]:
        """The read tasks' splits, planned once (Ray asks for the read tasks several times)."""
        if self._splits is None:
            if self.pin is None:
                self.pin = pin_manifest(self.uri, self.s3_options)
            self._splits = plan_splits(self.uri, self.fmt, rows_per_split=self.rows_per_task,
                                       limit=self.limit, s3_options=self.s3_options)
        return self._splits

    def num_read_tasks(self) -> int:
        return len(self.splits())

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for split in self.splits():
            read = functools.partial(read_split, self.uri, self.fmt, split, limit=self.limit,
                                     s3_options=self.s3_options, catalog=self.catalog,
                                     pin=self.pin, rows=self.rows)
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                 input_files=(self.uri,))
            tasks.append(ReadTask(read, meta, schema=_SCHEMA))
        return tasks

    def get_name(self) -> str:
        return "ReadManifest"


def _to_table(records: list[Record]) -> pa.Table:
    return pa.table({
        "row": [r.row for r in records],
        "fields": [json.dumps(r.fields) if not r.parse_error else "{}" for r in records],
        "parse_field": [r.parse_field for r in records],
        "parse_error": [r.parse_error for r in records],
    }, schema=_SCHEMA)
