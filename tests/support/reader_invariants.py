"""The manifest readers' promise, as one check: run a file through them, as the run does, and
verify what came out.

``account`` runs a manifest file the way ``run_job`` does before any stage starts, without Ray:
``scan``, then the read tasks (``plan_splits`` and ``read_split``, cut small so splits happen),
then ``validate_batch``. It then checks that:

- no exception other than the file-level ``ManifestError`` escapes, and that one names the file;
- every record is numbered 1, 2, 3 ... in file order (skipped rows of an export included), the
  read tasks give the same rows as one pass, and ``scan`` counts exactly the non-skipped ones;
- every row comes out of validation exactly once, as ``ok`` or ``rejected``; a rejection has a
  row number, a field and a reason;
- every asset key stays under ``assets/``: no ``..`` or ``.`` segment, no empty segment, no
  absolute path, no backslash;
- every output column converts to Arrow (no lone surrogate reaches a string column).

Used by the property tests, the regression tests and ``benchmarks/fuzz_readers.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from factory.catalog.commerce_formats import CatalogOptions
from factory.catalog.manifest import (
    ManifestError, _to_table, iter_records, plan_splits, read_split, scan,
)
from factory.core.status import STATUS_OK, STATUS_REJECTED
from factory.run.rows import RowRules, validate_batch

#: A template over fields most generated manifests have, so that some rows render and some are
#: rejected for a missing field.
TEMPLATE = "a {{ title }}"


class InvariantBroken(AssertionError):
    """The readers broke their promise on this input."""


@dataclass(frozen=True)
class Accounting:
    """What one manifest became.

    Attributes:
        error: the file-level ``ManifestError`` text ("" when the file was read).
        records: every record the reader yielded (skipped export rows included).
        rows: manifest rows (``scan``'s count: records that are not skipped).
        ok: rows that became work, by row number -> asset key.
        rejected: rows rejected, by row number -> (field, reason).
    """

    error: str
    records: int
    rows: int
    ok: dict[int, str]
    rejected: dict[int, tuple[str, str]]


def account(path: Path, fmt: str, *, catalog: CatalogOptions | None = None,
            template: str = TEMPLATE, rows_per_split: int = 3) -> Accounting:
    """Run ``path`` through scan, read tasks and validation; raise ``InvariantBroken`` if the
    promise does not hold. A file-level ``ManifestError`` is returned as ``error``."""
    uri = str(path)
    try:
        info = scan(uri, fmt, default_variant="default", catalog=catalog)
    except ManifestError as exc:
        _check(uri in str(exc), f"file-level error does not name the file: {exc}")
        return Accounting(str(exc), 0, 0, {}, {})
    records = list(iter_records(uri, fmt, catalog=catalog))
    numbers = [r.row for r in records]
    _check(numbers == list(range(1, len(records) + 1)), f"rows not numbered 1..n: {numbers}")
    work = [r for r in records if not r.skip]
    _check(len(work) == info.rows, f"scan counted {info.rows} rows, the reader gave {len(work)}")
    for record in work:
        if record.parse_error:
            _check(bool(record.parse_field), f"row {record.row}: a reject without a field")
    _check_splits(uri, fmt, catalog, info.pin, work, rows_per_split)
    if not work:
        return Accounting("", len(records), 0, {}, {})
    table = _to_table(work)  # the Arrow conversion a read task makes
    batch = {name: column.to_numpy(zero_copy_only=False)
             for name, column in zip(table.column_names, table.columns)}
    rules = RowRules(seed=1, variant="default", prompt_template=template,
                     duplicate_rejects=info.duplicate_rejects, chain_fingerprint="f" * 64)
    out = validate_batch(batch, rules=rules)
    for name, values in out.items():  # the Arrow conversion Ray makes of the batch
        pa.array(list(values))
    ok: dict[int, str] = {}
    rejected: dict[int, tuple[str, str]] = {}
    for row, status, key, field, reason in zip(out["row"], out["status"], out["output_key"],
                                               out["reject_field"], out["error"]):
        row = int(row)
        _check(row not in ok and row not in rejected, f"row {row} came out twice")
        if status == STATUS_OK:
            _check_key(key)
            ok[row] = key
        else:
            _check(status == STATUS_REJECTED, f"row {row}: status {status!r}")
            _check(row >= 1 and bool(field) and bool(reason),
                   f"row {row}: rejection without a field or reason ({field!r}, {reason!r})")
            rejected[row] = (field, reason)
    _check(sorted([*ok, *rejected]) == sorted(r.row for r in work),
           "validated rows differ from the manifest's rows")
    return Accounting("", len(records), info.rows, ok, rejected)


def _check_splits(uri: str, fmt: str, catalog: CatalogOptions | None, pin: object,
                  work: list, rows_per_split: int) -> None:
    """The read tasks, together, give exactly the rows of one pass."""
    splits = plan_splits(uri, fmt, rows_per_split=rows_per_split)
    got = []
    for split in splits:
        for table in read_split(uri, fmt, split, catalog=catalog, pin=pin):
            got.extend(zip(table["row"].to_pylist(), table["fields"].to_pylist(),
                           table["parse_error"].to_pylist()))
    whole = [(r.row, json.dumps(r.fields) if not r.parse_error else "{}", r.parse_error)
             for r in work]
    _check(got == whole, f"{len(splits)} read tasks gave other rows than one pass")


def _check_key(key: str) -> None:
    parts = key.split("/")
    _check(key.startswith("assets/") and "\\" not in key and not key.startswith("/")
           and all(part not in ("", ".", "..") for part in parts) and len(parts) == 3,
           f"asset key leaves the output prefix: {key!r}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvariantBroken(message)
