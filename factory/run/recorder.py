"""Recording a run's tables: ``runs/<run id>/rejects.parquet`` then ``lineage.parquet``, the commit.

The driver streams sink rows in as they arrive (never the whole run in memory) into local spool
files. Rejections go to the rejects table; assets and failures to the lineage table. Both are
published only when the run finishes: rejects first, lineage last, so a run is committed exactly
when its lineage table exists. The run summary rides in the lineage file's footer metadata.

Both tables are create-only, so a run that loses the commit replaces nothing the winner wrote.
Each footer carries the attempt's identity (its inputs, or without them a digest of its
rejected rows): rejects already in place from an attempt of the same inputs (a concurrent run,
or one that stopped before its lineage) are this run's rejects too; from other inputs they are
another attempt's, and this attempt does not commit beside them. User text reaches the tables
through ``arrow_text``: a lone surrogate or undecodable bytes never stop a commit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from factory.spec.keys import params_hash
from factory.spec.prices import CostModel, CostTotals, usd_type
from factory.spec.routes import Routes
from factory.core.status import STATUS_DEFERRED, STATUS_FAILED, STATUS_OK, STATUS_REJECTED
from factory.store.run_tables import (ATTEMPT_KEY, LINEAGE, REJECTS, SUMMARY_KEY, is_committed,
                                      read_footer)
from factory.store.s3 import StorageError
from factory.store.storage import Store
from stages.base import StagePlan
from stages.hosted import provider_column, request_column, units_column


#: Rows per row group of the lineage and rejects tables, unless ``ROW_GROUP_BYTES`` of Arrow
#: data come first (a lineage row is ~0.5 kB: a 1M-row run has ~60 row groups). The bytes
#: bound the driver's buffer: P4's memory ratio counts it.
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 8 << 20
#: Small sink tables gathered before they are compacted into one.
_COMPACT_TABLES = 64

REJECT_SCHEMA = pa.schema([("run_id", pa.string()), ("row", pa.int64()), ("sku", pa.string()),
                           ("field", pa.string()), ("reason", pa.string())])


class RunAttemptConflict(StorageError):
    """A run id's rejects table was written by an attempt from other inputs that has not
    committed (still running, or stopped before its commit)."""


def arrow_text(value: Any) -> Any:
    """``value`` as text an Arrow string column accepts: a lone surrogate (a byte that was not
    UTF-8, decoded with ``surrogateescape``) or undecodable bytes become backslash escapes
    (``\\udc80``, ``\\xff``); None, valid text and anything else are returned as they are."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _text_table(columns: dict[str, list[Any]], schema: pa.Schema) -> pa.Table:
    """``pa.table(columns, schema)``; if user text will not convert, again through
    ``arrow_text`` (valid text, the common case, costs no extra pass)."""
    try:
        return pa.table(columns, schema=schema)
    except (UnicodeError, pa.ArrowInvalid, pa.ArrowTypeError):
        text = {f.name for f in schema if pa.types.is_string(f.type)
                or pa.types.is_large_string(f.type)}
        return pa.table({name: [arrow_text(v) for v in values] if name in text else values
                         for name, values in columns.items()}, schema=schema)


def lineage_schema(plans: tuple[StagePlan, ...], keep: tuple[str, ...] = (), *,
                   channels: bool = False, costs: CostModel | None = None,
                   routes: bool = False, qa: bool = False) -> pa.Schema:
    """Columns of the lineage table for this chain (and, with ``channels``, each asset's
    channel and what it measured: ``factory.sink.channel_assets.CHANNEL_COLUMNS``; with ``costs``,
    each asset's device seconds and dollars per stage and ``cost_usd``; with ``routes``, the
    ``route`` each row took, ``factory.spec.routes``; with ``qa``, the QA gate's verdict, renders and
    the dollars of retried renders, ``factory.spec.qa``)."""
    fields = [("run_id", pa.string()), ("row", pa.int64()), ("sku", pa.string()),
              ("variant", pa.string()), *([("route", pa.string())] if routes else []),
              ("seed", pa.int64()), ("prompt", pa.string()),
              ("status", pa.string()), ("error", pa.string()), ("failed_stage", pa.string()),
              ("output_key", pa.string()), ("sha256", pa.string()), ("bytes", pa.int64()),
              ("written", pa.bool_())]
    if any(plan.card.kind == "source" for plan in plans):  # the photo each asset came from
        fields += [("photo", pa.string()), ("source_sha256", pa.string()),
                   ("fetch_ms", pa.float64())]
    for plan in plans:
        fields += [(f"{plan.name}_model", pa.string()), (f"{plan.name}_revision", pa.string()),
                   (f"{plan.name}_params_hash", pa.string()), (f"ms_{plan.name}", pa.float64()),
                   (f"{plan.name}_placement", pa.string())]
        # a metric is one column however many stages record it (two segment cards on two
        # routes: each row's from the stage of its route)
        named = {name for name, _ in fields}
        fields += [(name, pa.type_for_alias(kind)) for name, kind in plan.card.metrics
                   if name not in named]
        if plan.card.hosted is not None:  # who ran it, which request, what it billed
            fields += [(provider_column(plan.name), pa.string()),
                       (request_column(plan.name), pa.string()),
                       (units_column(plan.name), pa.float64())]
        if _adapter(plan) is not None:
            fields.append((f"{plan.name}_adapter", pa.string()))
        if plan.name in keep:
            fields.append((f"{plan.name}_key", pa.string()))
    if channels:
        from factory.sink.channel_assets import CHANNEL_COLUMNS

        fields += [(name, pa.type_for_alias(kind)) for name, kind in CHANNEL_COLUMNS]
    if costs is not None:
        fields += [(name, usd_type() if kind == "usd" else pa.float64())
                   for name, kind in costs.columns()]
    if qa:
        from factory.spec.qa import QA_COLUMNS, RETRY_USD

        fields += [(name, pa.type_for_alias(kind)) for name, kind in QA_COLUMNS]
        fields.append((RETRY_USD, usd_type()))
    return pa.schema(fields)


@dataclass
class Counts:
    """Running totals while the run streams.

    With channels, ``assets`` and ``failed`` count (manifest row, channel) pairs, ``rejected``
    and ``deferred`` manifest rows (a rejection or a deferral is the row's, in every channel):
    every row ends as ``channels`` outcomes, so ``outcomes == manifest rows * channels`` is
    the accounting identity.
    """

    assets: int = 0
    written: int = 0
    failed: int = 0
    rejected: int = 0
    #: rows the budget left for a later run (``factory.cost.budget``): no stage ran them
    deferred: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    #: milliseconds and rows per stage among the rows recorded so far (rendered rows only)
    stage_ms: dict[str, float] = field(default_factory=dict)
    stage_rows: dict[str, int] = field(default_factory=dict)
    #: assets each rendered manifest row becomes: the job's channels, or 1
    channels: int = 1
    #: device seconds and dollars per stage, over the assets recorded so far
    cost: CostTotals = field(default_factory=CostTotals)
    #: in a job with routes: assets, and their dollars, per route
    route_assets: dict[str, int] = field(default_factory=dict)
    route_usd: dict[str, Decimal] = field(default_factory=dict)

    def routes_summary(self) -> dict[str, dict[str, Any]]:
        """The run summary's ``routes``: assets and dollars per route (empty without)."""
        return {route: {"assets": n, "usd": float(self.route_usd.get(route, Decimal(0)))}
                for route, n in sorted(self.route_assets.items())}

    @property
    def outcomes(self) -> int:
        """(row, channel) pairs accounted for: assets, failures, and the channels of rejected
        and deferred rows."""
        return self.assets + self.failed + (self.rejected + self.deferred) * self.channels

    @property
    def total(self) -> int:
        """Manifest rows accounted for (a row's channels arrive together)."""
        return self.rejected + self.deferred + (self.assets + self.failed) // self.channels


class _GroupedWriter:
    """A Parquet writer that gathers small tables into row groups of ``ROW_GROUP_ROWS`` rows
    (or ``ROW_GROUP_BYTES``, whichever comes first).

    The sink hands over one small batch at a time; a row group each would give a 1M-row run
    ~100k row groups (a footer of tens of MB, slow to read). Small tables are compacted into
    one as they arrive: thousands of tiny Arrow tables cost far more memory than their rows.
    ``close`` writes what is left.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(path, schema)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write_table(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if len(self._pending) >= _COMPACT_TABLES:
            self._pending = [pa.concat_tables(self._pending).combine_chunks()]
            if self._pending[0].nbytes >= ROW_GROUP_BYTES:
                self._flush()
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending_rows:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._pending, self._pending_rows = [], 0

    def add_key_value_metadata(self, metadata: dict[bytes, str]) -> None:
        self._writer.add_key_value_metadata(metadata)

    def close(self) -> None:
        try:
            self._flush()
        finally:
            self._writer.close()


class RunRecorder:
    """Streams sink rows into the run's tables; ``commit`` publishes them."""

    def __init__(self, store: Store, run_id: str, plans: tuple[StagePlan, ...],
                 keep: tuple[str, ...] = (), *, channels: int = 0,
                 costs: CostModel | None = None,
                 on_cost: Callable[[CostTotals], None] | None = None,
                 routes: Routes | None = None, qa: bool = False) -> None:
        self.store, self.run_id, self.plans = store, run_id, plans
        self.costs, self.on_cost = costs, on_cost
        self.routes = routes
        self.schema = lineage_schema(plans, keep, channels=channels > 0, costs=costs,
                                     routes=routes is not None, qa=qa)
        self.counts = Counts(channels=max(channels, 1))
        self._measured = {"width", "height", "fill_ratio", "background_purity"} if channels \
            else set()
        self._constants = {}
        self._stage_of: dict[str, StagePlan] = {}  # constant column -> its stage
        for plan in plans:
            self._constants[f"{plan.name}_model"] = plan.card.name
            self._constants[f"{plan.name}_revision"] = plan.revision
            self._constants[f"{plan.name}_params_hash"] = params_hash(plan)
            if (adapter := _adapter(plan)) is not None:
                self._constants[f"{plan.name}_adapter"] = adapter
            if plan.card.hosted is not None:
                self._constants[provider_column(plan.name)] = plan.card.hosted.provider
            for name in ("model", "revision", "params_hash", "adapter", "provider"):
                self._stage_of[f"{plan.name}_{name}"] = plan
        self._spool = Path(tempfile.mkdtemp(prefix=f"factory-{run_id}-"))
        self._rejected_digest = 0  # order-free: the sum of the rejected rows' hashes
        self._rejects = _GroupedWriter(self._spool / REJECTS, REJECT_SCHEMA)
        self._lineage = _GroupedWriter(self._spool / LINEAGE, self.schema)

    def add(self, batch: pa.Table) -> None:
        """Record one batch of sink rows."""
        rows = batch.to_pydict()
        n = batch.num_rows
        status = rows["status"]
        rejected = [i for i in range(n) if status[i] == STATUS_REJECTED]
        kept = [i for i in range(n) if status[i] != STATUS_REJECTED]
        if rejected:
            table = _text_table({
                "run_id": [self.run_id] * len(rejected),
                "row": [rows["row"][i] for i in rejected],
                "sku": [rows["sku"][i] for i in rejected],
                "field": [rows["reject_field"][i] for i in rejected],
                "reason": [rows["error"][i] for i in rejected],
            }, REJECT_SCHEMA)
            for row in zip(*(table[name].to_pylist() for name in ("row", "sku", "field",
                                                                   "reason"))):
                digest = hashlib.sha256(json.dumps(row).encode()).digest()
                self._rejected_digest += int.from_bytes(digest, "big")
            self._rejects.write_table(table)
        if kept and self.costs is not None:
            self._add_costs(rows, kept)
        if kept:
            columns: dict[str, list[Any]] = {}
            for name in self.schema.names:
                if name == "run_id":
                    columns[name] = [self.run_id] * len(kept)
                elif name in self._constants and self.routes is not None:
                    # a stage off a row's route did not make its asset: no model recorded
                    stage = self._stage_of[name]
                    columns[name] = [self._constants[name]
                                     if rows["route"][i] in stage.routes else None for i in kept]
                elif name in self._constants:
                    columns[name] = [self._constants[name]] * len(kept)
                elif name in self._measured and name in rows:
                    columns[name] = [_measured(rows[name][i], self.schema.field(name).type)
                                     for i in kept]
                elif name in rows:
                    columns[name] = [rows[name][i] for i in kept]
                else:
                    columns[name] = [None] * len(kept)
            self._lineage.write_table(_text_table(columns, self.schema))
        self.counts.rejected += len(rejected)
        for i in kept:
            if status[i] == STATUS_OK:
                self.counts.assets += 1
                self.counts.written += bool(rows["written"][i])
                if self.routes is not None:
                    route = rows["route"][i]
                    self.counts.route_assets[route] = self.counts.route_assets.get(route, 0) + 1
                    if "cost_usd" in rows:
                        self.counts.route_usd[route] = (self.counts.route_usd.get(route, Decimal(0))
                                                        + rows["cost_usd"][i])
            elif status[i] == STATUS_DEFERRED:
                self.counts.deferred += 1
            elif status[i] == STATUS_FAILED:
                self.counts.failed += 1
                stage = rows["failed_stage"][i] or "?"
                self.counts.failures_by_stage[stage] = self.counts.failures_by_stage.get(stage, 0) + 1

    def _add_costs(self, rows: dict[str, list[Any]], kept: list[int]) -> None:
        """The kept rows' cost columns (into ``rows``) and the run's totals
        (``factory.spec.prices``): a rejected row costs nothing and is not priced."""
        costs, n = self.costs, len(rows["status"])
        names = [s.name for s in costs.shares]
        ms = {name: rows.get(f"ms_{name}") or [None] * n for name in names}
        units = {s.name: rows.get(units_column(s.name)) or [None] * n
                 for s in costs.shares if s.hosted}
        priced = {i: costs.row({name: ms[name][i] for name in names},
                               {name: values[i] for name, values in units.items()})
                  for i in kept}
        batch = CostTotals()
        for i in kept:
            batch.add_row(priced[i], names)
        for column, _ in costs.columns():
            rows[column] = [priced[i][column] if i in priced else None for i in range(n)]
        for name in batch.usd:
            self.counts.cost.add(name, batch.gpu_s[name], batch.cpu_s[name], batch.usd[name])
        if self.on_cost is not None:
            self.on_cost(batch)

    def commit(self, summary: dict[str, Any]) -> bool:
        """Publish rejects, then the lineage table (the commit point) with the summary.

        Both writes are create-only. True when this call committed the run; False when
        another attempt of the same run id committed it first (its tables stay, untouched).
        On a store without conditional writes the two writes happen under the run's commit
        claim (``Store.commit_claim``): two drivers never both commit one run id there.

        Raises:
            RunAttemptConflict: the run's rejects were written by an attempt from other inputs
                that has not committed; nothing is published.
            factory.store.storage.ConcurrentCommitError: on a store without conditional
                writes, another driver held the run's commit claim through every try.
            StorageError: the store failed; the run is not committed.
        """
        try:
            attempt = _attempt(summary, self._rejected_digest)
            self._rejects.add_key_value_metadata({ATTEMPT_KEY: attempt})
            self._rejects.close()
            self._lineage.add_key_value_metadata({
                SUMMARY_KEY: json.dumps(summary, sort_keys=True), ATTEMPT_KEY: attempt})
            self._lineage.close()
            prefix = f"runs/{self.run_id}"
            if is_committed(self.store, self.run_id):
                return False  # lost the race before publishing anything
            with self.store.commit_claim(prefix):
                if is_committed(self.store, self.run_id):
                    return False
                if not self._publish_rejects(f"{prefix}/{REJECTS}", attempt):
                    return False
                return self.store.publish_file(self._spool / LINEAGE, f"{prefix}/{LINEAGE}",
                                               create_only=True)
        finally:
            shutil.rmtree(self._spool, ignore_errors=True)

    def _publish_rejects(self, key: str, attempt: str) -> bool:
        """Publish the rejects create-only; True if the rejects at ``key`` are this attempt's
        (written now, or by an attempt of the same inputs), False if the run was committed
        meanwhile by another attempt."""
        if self.store.publish_file(self._spool / REJECTS, key, create_only=True):
            return True
        theirs = read_footer(self.store, key).get(ATTEMPT_KEY, b"").decode()
        if theirs == attempt:
            return True
        if is_committed(self.store, self.run_id):
            return False
        raise RunAttemptConflict(
            f"run '{self.run_id}': {self.store.path(key)} was written by another attempt of "
            "this run id from other inputs, which has not committed (it is still running, or "
            "stopped before its commit); nothing was committed. Give a new run id, or, if no "
            "other run of this id is going on, delete that file and run again.")

    def abort(self) -> None:
        """Publish nothing: the run stays uncommitted."""
        for writer in (self._rejects, self._lineage):
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the spool is discarded either way
                pass
        shutil.rmtree(self._spool, ignore_errors=True)


def _attempt(summary: dict[str, Any], rejected_digest: int) -> str:
    """Which attempt's tables these are: its inputs (``factory.run.identity``) where the summary
    records them, else the digest of its rejected rows."""
    if summary.get("inputs") is not None:
        return "inputs:" + hashlib.sha256(
            json.dumps(summary["inputs"], sort_keys=True).encode()).hexdigest()
    return f"rejects:{rejected_digest % (1 << 256):064x}"


def _measured(value: Any, kind: pa.DataType) -> Any:
    """A sink value for its lineage column: NaN (not measured) is null; a float count an int."""
    if isinstance(value, float):
        if value != value:
            return None
        if pa.types.is_integer(kind):
            return int(value)
    return value


def _adapter(plan: StagePlan) -> str | None:
    """The LoRA a stage applies, as the spec names it. A trained adapter's URI carries its
    sha256, and ``loras/<sha256>/training.json`` beside it says which training made it."""
    return getattr(plan.params, "lora", None) or None
