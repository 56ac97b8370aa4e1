"""A brand QA gate: thresholds on what the stages measure; an asset outside them is rendered
again with a new derived seed, up to ``retries`` times, then written and flagged ``review``.

``qa:`` in a job spec (checked before Ray starts; ``resolve_qa``)::

    qa:
      retries: 2                     # re-renders after the first (default 2)
      thresholds:                    # the gate of every row (of every route without its own)
        delta_e_after: {max: 12}     # recolor's ΔE to the palette
        alpha_coverage: {min: 0.05, max: 0.95}   # segment's share of opaque pixels
      routes:                        # with ``routes:`` only: a route's own gate, in full
        hero: {retries: 3, thresholds: {delta_e_after: {max: 8}}}
        thumbnail: {thresholds: {}}  # no gate for this route

A metric is a column a stage card declares (``StageCard.metrics``); a threshold naming one
that the row's chain does not measure is an error listing those it does.

Three parts, on Ray Data's own paths:

* ``check_batch``: a cheap task after the last stage pool and before the sink
  (``factory.run.pipeline.build_datasets``). It counts the row's renders (``qa_attempts``) and
  checks each ``ok`` row against its route's gate: inside, ``qa = "pass"``; outside with
  retries left, ``status = "qa_retry"`` (the sink writes nothing for it); outside on its last
  render, ``qa = "review"`` with the reason, written like any asset.
* ``QaRetries.take``, in the driver: holds the ``qa_retry`` rows back from the run's tables
  (they are no outcome), prices the attempt they made (``factory.spec.prices``, counted in the
  run's cost totals) and fills each final row's ``qa_retry_usd``: what its earlier attempts
  cost. ``assets + failed + rejected + deferred = rows`` stays exact.
* ``QaRetries.run``, once the main plan is done: the held rows, each with its next seed
  (``retry_seed``) and the asset key that seed gives, become a new dataset
  (``ray.data.from_arrow``) that goes through the same stage pools, gate and sink again; a
  pass per attempt, until no row is sent back.

With a budget (``factory.cost.budget``), a re-render is admitted like a row: ``check_batch``
asks the budget (``RetryAdmission``) before it sends a row back, pricing the attempt just
made from its stage times. A re-render the budget cannot cover is not run: the row keeps the
render it has, written and flagged ``review``, its reason saying so (``BUDGET_REASON``).

A failed attempt writes no image, so the store holds one asset per row (the last attempt's),
under the row's own key: a re-render keeps its first seed as ``key_seed``
(``factory.spec.keys.KEY_SEED``), and the keys of a gated job fingerprint its gate
(``Gate.fingerprint_text``). A later run finds the asset and renders nothing again; a changed
gate is a changed chain, rendered anew.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from pydantic import Field

from factory.core.status import STATUS_FAILED, STATUS_OK
from factory.core.strict import Strict
from factory.spec.keys import KEY_SEED
from factory.spec.prices import CostModel, CostTotals
from factory.spec.routes import Routes
from stages.base import StagePlan

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

#: A row the gate sends back for another render: no asset, no outcome (yet).
STATUS_QA_RETRY = "qa_retry"
QA_PASS = "pass"
QA_REVIEW = "review"
#: Lineage columns of a job with ``qa:`` (name, Arrow type alias); plus ``qa_retry_usd``.
QA_COLUMNS = (("qa", "string"), ("qa_attempts", "int64"), ("qa_reason", "string"))
RETRY_USD = "qa_retry_usd"
MAX_RETRIES = 10
#: Appended to a row's breaches where the budget left no re-render for it.
BUDGET_REASON = "no re-render: the budget cannot cover one"


class ThresholdSpec(Strict):
    """``{min: x, max: y}``: the bounds a metric must stay within (either may be left out)."""

    min: float | None = None
    max: float | None = None


class GateSpec(Strict):
    """One gate as written: retries after the first render, and thresholds per metric."""

    retries: int = Field(2, ge=0, le=MAX_RETRIES)
    thresholds: dict[str, ThresholdSpec] = Field(default_factory=dict)


class QaSpec(GateSpec):
    """``qa:``: the default gate, and (with ``routes:``) a route's own gate by name."""

    routes: dict[str, GateSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Threshold:
    """Bounds on one metric column; ``None``: unbounded on that side."""

    metric: str
    min: float | None = None
    max: float | None = None

    def breach(self, value: Any) -> str:
        """Why ``value`` is outside the bounds ("" when inside). Not measured (NaN) is
        outside: a gate only names metrics the row's chain measures."""
        value = float(value) if value is not None else math.nan
        if math.isnan(value):
            return f"{self.metric} not measured"
        if self.min is not None and value < self.min:
            return f"{self.metric} {value:.4g} < min {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{self.metric} {value:.4g} > max {self.max:g}"
        return ""

    def text(self) -> str:
        """``0.05 <= alpha_coverage <= 0.95``."""
        low = f"{self.min:g} <= " if self.min is not None else ""
        high = f" <= {self.max:g}" if self.max is not None else ""
        return f"{low}{self.metric}{high}"


@dataclass(frozen=True)
class Gate:
    """A route's gate: ``retries`` re-renders after the first, then ``review``."""

    retries: int
    thresholds: tuple[Threshold, ...]

    def fingerprint_text(self) -> str:
        """What of the gate decides which render is kept: part of a gated row's key."""
        return json.dumps({"retries": self.retries, "thresholds": [
            [t.metric, t.min, t.max] for t in self.thresholds]}, sort_keys=True)

    def breaches(self, batch: Mapping[str, np.ndarray], i: int) -> str:
        """Row ``i``'s breaches, joined ("" when it passes)."""
        return "; ".join(why for t in self.thresholds
                         if (why := t.breach(batch[t.metric][i] if t.metric in batch else None)))


@dataclass(frozen=True)
class QaConfig:
    """A job's gates, frozen: ``default`` for every row, ``routes`` per route name (a route
    listed with no thresholds is not gated)."""

    default: Gate | None
    routes: Mapping[str, Gate] = field(default_factory=dict)

    def gate(self, route: str | None = None) -> Gate | None:
        """The gate of a row of ``route`` (None: no routes), or None when it is not gated."""
        gate = self.routes.get(route, self.default) if route is not None else self.default
        return gate if gate is not None and gate.thresholds else None

    def describe(self) -> list[str]:
        """Lines for ``factory validate``."""
        def text(gate: Gate | None) -> str:
            if gate is None or not gate.thresholds:
                return "not gated"
            bounds = ", ".join(t.text() for t in gate.thresholds)
            return f"{bounds}; {gate.retries} retries, then review"
        lines = [f"qa gate: {text(self.default)}"]
        lines += [f"  route {name}: {text(gate)}" for name, gate in self.routes.items()]
        return lines


def resolve_qa(spec: QaSpec, plans: Sequence[StagePlan], routes: Routes | None,
               problems: list[str]) -> QaConfig:
    """Check ``qa:`` against what the chain (or each route's chain) measures, and freeze it.

    Args:
        spec: the parsed ``qa:`` mapping.
        plans: the job's ``StagePlan``s (with routes: each knows the routes it serves).
        routes: the job's ``factory.spec.routes.Routes``, or None.
        problems: ``qa.<key path>: message`` lines are appended here.
    """
    def measured(route: str | None) -> list[str]:
        chain = [p for p in plans if route is None or not p.routes or route in p.routes]
        return list(dict.fromkeys(name for p in chain for name, _ in p.card.metrics))

    def freeze(gate: GateSpec, where: str, chains: Sequence[str | None]) -> Gate:
        out = []
        for metric, bounds in gate.thresholds.items():
            key = f"{where}.thresholds.{metric}"
            for route in chains:
                names = measured(route)
                if metric not in names:
                    whose = (f"route '{route}' measures" if route is not None
                             else "the job's stages measure")
                    problems.append(f"{key}: {whose} no '{metric}' (measured: "
                                    f"{', '.join(names) or 'nothing'})")
                    break
            if bounds.min is None and bounds.max is None:
                problems.append(f"{key}: give min, max or both")
            for side in ("min", "max"):
                value = getattr(bounds, side)
                if value is not None and not math.isfinite(value):
                    problems.append(f"{key}.{side}: must be a finite number")
            if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
                problems.append(f"{key}: min {bounds.min:g} is above max {bounds.max:g}")
            out.append(Threshold(metric, bounds.min, bounds.max))
        return Gate(retries=gate.retries, thresholds=tuple(out))

    if routes is None:
        for name in spec.routes:
            problems.append(f"qa.routes.{name}: the job has no routes: (put the gate in "
                            "qa.thresholds)")
        return QaConfig(default=freeze(spec, "qa", [None]))
    own: dict[str, Gate] = {}
    for name, gate in spec.routes.items():
        if name not in routes.names:
            problems.append(f"qa.routes.{name}: no route named '{name}' (routes: "
                            f"{', '.join(routes.names)})")
            continue
        own[name] = freeze(gate, f"qa.routes.{name}", [name])
    # the default gate applies to every route without its own: each must measure its metrics
    default = freeze(spec, "qa", [r for r in routes.names if r not in own])
    return QaConfig(default=default, routes=own)


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of a row's ``attempt``-th render (2, 3, ...) from the seed of the one before:
    the same seed and attempt always give the same seed."""
    digest = hashlib.sha256(f"{int(seed)}:qa:{int(attempt)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class RetryAdmission(Protocol):
    """What a budget answers before a row is sent back (``factory.cost.budget.RetryGate``)."""

    costs: CostModel

    def admit_retries(self, retries: list[tuple[int, int, Decimal]]) -> list[bool]:
        """One decision per ``(row, attempt made, its dollars)``."""
        ...


def attempt_usd(costs: CostModel, batch: Mapping[str, np.ndarray], i: int) -> Decimal:
    """Dollars of row ``i``'s render in ``batch`` (its ``ms_<stage>`` values), all its channel
    assets together: what the driver records for it (``QaRetries._price``, the recorder)."""
    ms = {s.name: (float(batch[f"ms_{s.name}"][i]) if f"ms_{s.name}" in batch else None)
          for s in costs.shares}
    return costs.row(ms)["cost_usd"] * costs.channels


def check_batch(batch: dict[str, np.ndarray], *, config: QaConfig,
                budget: RetryAdmission | None = None) -> dict[str, np.ndarray]:
    """Ray Data task: count each rendered row's renders and check its ``ok`` rows.

    Adds ``qa`` (``pass``, ``review`` or "" where not gated), ``qa_attempts`` (renders so far,
    this one included) and ``qa_reason`` (the breaches); a row outside its gate with retries
    left becomes ``qa_retry``, if ``budget`` (None: no budget) admits its next render; else
    it is ``review`` with ``BUDGET_REASON`` after its breaches.
    """
    n = len(batch["sku"])
    status = batch["status"].astype(object)
    attempts = (batch["qa_attempts"].astype(np.int64) if "qa_attempts" in batch
                else np.zeros(n, dtype=np.int64))
    attempts = attempts + ((status == STATUS_OK) | (status == STATUS_FAILED))
    verdict = np.full(n, "", dtype=object)
    reason = np.full(n, "", dtype=object)
    routes = batch.get("route")
    back = []  # rows outside their gate with retries left
    for i in np.flatnonzero(status == STATUS_OK):
        gate = config.gate(str(routes[i]) if routes is not None else None)
        if gate is None:
            continue
        why = gate.breaches(batch, i)
        reason[i] = why
        if not why:
            verdict[i] = QA_PASS
        elif attempts[i] <= gate.retries:
            back.append(i)
        else:
            verdict[i] = QA_REVIEW
    admitted = [True] * len(back)
    if budget is not None and back:
        admitted = budget.admit_retries([(int(batch["row"][i]), int(attempts[i]),
                                          attempt_usd(budget.costs, batch, i)) for i in back])
    for i, ok in zip(back, admitted):
        if ok:
            status[i] = STATUS_QA_RETRY
        else:
            verdict[i], reason[i] = QA_REVIEW, f"{reason[i]}; {BUDGET_REASON}"
    return {**batch, "status": status, "qa": verdict, "qa_attempts": attempts,
            "qa_reason": reason}


class QaRetries:
    """The driver's side of the gate: holds back the rows sent back, prices their attempts,
    and renders them again, a pass per attempt.

    Args:
        costs: the run's cost model (None: nothing is priced).
        totals: the run's cost totals (its recorder's): retried attempts' dollars join them.
        key_of: a work item's asset key (its route's ``Job.keys`` lookup, as the row rules').
        columns: the work list's columns, the ones a row carries into the stages.
        on_cost: hears each held batch's dollars (``factory_stage_cost_usd``), as the
            recorder's ``on_cost`` hears the recorded rows': the metric is the run's total.
    """

    def __init__(self, *, costs: CostModel | None, totals: CostTotals,
                 key_of: Callable[[dict], str], columns: Sequence[str],
                 on_cost: Callable[[CostTotals], None] | None = None) -> None:
        self.costs, self.totals, self.key_of = costs, totals, key_of
        self.on_cost = on_cost
        self.columns = [*columns, "qa_attempts"]
        self.review = 0
        self.retries = 0
        self.retry_usd = Decimal(0)
        self._held: list[pa.Table] = []
        self._carry: dict[int, Decimal] = {}  # row -> dollars of its earlier attempts, per asset

    def take(self, batch: pa.Table) -> pa.Table:
        """A sink batch (``pyarrow.Table``) without its ``qa_retry`` rows, which are held for
        the next pass; its rows carry ``qa_retry_usd``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from factory.spec.prices import usd_type

        if "qa_attempts" not in batch.column_names:  # rows no stage touched: exists, rejected
            return batch
        back = pc.equal(batch["status"], STATUS_QA_RETRY)
        held = batch.filter(back)
        if held.num_rows:
            self._price(held)
            if KEY_SEED not in held.column_names:  # its first render: the row's own seed
                held = held.append_column(KEY_SEED, held["seed"])
            self._held.append(held.select([*self.columns, KEY_SEED]))
        kept = batch.filter(pc.invert(back))
        rows = kept["row"].to_pylist()
        attempts = kept["qa_attempts"].to_pylist()
        usd = [self._carry.get(r, Decimal(0)) if a else None for r, a in zip(rows, attempts)]
        self.review += sum(status == STATUS_OK and verdict == QA_REVIEW for status, verdict
                           in zip(kept["status"].to_pylist(), kept["qa"].to_pylist()))
        for r in set(rows):
            self._carry.pop(r, None)
        return kept.append_column(RETRY_USD, pa.array(usd, type=usd_type()))

    def _price(self, held: pa.Table) -> None:
        """The attempt each held row made: into its carry and the run's cost totals (every
        channel asset of the row carries its share, as the recorder prices assets)."""
        self.retries += held.num_rows
        if self.costs is None:
            return
        channels = self.costs.channels
        names = [s.name for s in self.costs.shares]
        ms = {n: held[f"ms_{n}"].to_pylist() if f"ms_{n}" in held.column_names
              else [None] * held.num_rows for n in names}
        batch = CostTotals()
        for i, row in enumerate(held["row"].to_pylist()):
            priced = self.costs.row({n: ms[n][i] for n in names})
            batch.add_row(priced, names, times=channels)
            self._carry[row] = self._carry.get(row, Decimal(0)) + priced["cost_usd"]
            self.retry_usd += priced["cost_usd"] * channels
        for name in batch.usd:
            self.totals.add(name, batch.gpu_s[name], batch.cpu_s[name], batch.usd[name])
        if self.on_cost is not None:
            self.on_cost(batch)

    @staticmethod
    def settled(batch: pa.Table) -> pa.Table:
        """The batch as a budget sees it (``factory.cost.budget.Budget.record``): a row sent back
        came back from the stages (its attempt is spent), so it reserves nothing any more."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if "qa_attempts" not in batch.column_names:
            return batch
        status = pc.if_else(pc.equal(batch["status"], STATUS_QA_RETRY),
                            pa.scalar(STATUS_OK), batch["status"])
        return batch.set_column(batch.schema.get_field_index("status"), "status", status)

    def next_pass(self) -> pa.Table | None:
        """The held rows as the next pass's work items (``pyarrow.Table``): each with its
        next seed, its first seed (``key_seed``) and so its own key; None when none is held."""
        import pyarrow as pa

        if not self._held:
            return None
        table = pa.concat_tables(self._held)
        self._held = []
        items = table.to_pylist()
        for item in items:
            item["seed"] = retry_seed(item["seed"], item["qa_attempts"] + 1)
            item["output_key"] = self.key_of(item)
            item.update(status=STATUS_OK, error="", failed_stage="")
        return pa.Table.from_pylist(items, schema=table.schema)

    def run(self, render: Callable[[ray.data.Dataset], ray.data.Dataset],
            record: Callable[[pa.Table], None], *, name: str = "") -> int:
        """Render the held rows again, pass after pass, until none is sent back; each sink
        batch goes to ``record`` (which calls ``take``). Returns the passes run."""
        import ray.data

        passes = 0
        while (table := self.next_pass()) is not None:
            passes += 1
            ds = render(ray.data.from_arrow(table))
            ds.set_name(f"{name}:qa-retry-{passes}")
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                record(batch)
        return passes

    def summary(self) -> dict[str, Any]:
        """The run summary's ``qa``: assets flagged for review, re-renders, their dollars."""
        return {"review": self.review, "retries": self.retries,
                "retry_usd": float(self.retry_usd)}


def qa_line(summary: Mapping[str, Any]) -> str:
    """The run summary's ``qa`` in one line (``factory run``, ``factory runs show``)."""
    return (f"{summary.get('review', 0)} assets flagged review after "
            f"{summary.get('retries', 0)} re-renders (${summary.get('retry_usd', 0.0):.6f} of "
            "retries, in the cost totals)")
