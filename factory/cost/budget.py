"""A budget cap: rows past the run's dollars are ``deferred``, not rendered, and a rerun with a
larger budget renders them.

Three small parts, on Ray's own primitives:

* ``Ledger``: the arithmetic, in exact ``Decimal`` dollars: the budget, the dollars spent
  (recorded by the driver) and reserved (each row in flight holds its estimated cost).
* ``LedgerActor``: one async Ray actor holding the run's ledger, shared by the gate and the
  driver.
* ``gate_rows``: a cheap Ray Data task right before the first stage pool
  (``factory.run.pipeline.build_datasets``), one block at a time (a task pool of one, so blocks
  pass it in manifest order). It asks the ledger to admit each row to render; a row the
  ledger refuses becomes ``deferred``: every stage passes it through (``stages.base``), the
  sink writes nothing for it and the lineage records it with its row and SKU.

The driver (``Budget.record``) tells the ledger, after each batch the run records, the run's
dollars so far and which rows came back: their reservations become actual spend.

QA re-renders (``factory.spec.qa``) are admitted like rows: the gate's check task asks the
ledger (``RetryGate``) for each row outside its gate with retries left. The attempt just made
is priced from its own stage times (what the driver will record for it); the next one is
reserved at that price if spent + reserved + it fits the budget. A re-render the budget cannot
cover is not run: the row keeps the render it has, written and flagged ``review`` with the
budget as its reason. It is not deferred: deferral is for rows the budget never let render,
and this row's render is paid for; dropping it to defer the row would spend that money for
nothing, and a rerun would pay for the same first render again. The re-renders of rows earlier
in the manifest compete with later rows' first renders in the order they reach the ledger, so
an admitted row goes through its retries while the budget lasts.

The estimate per row: this run's mean actual cost per row that came back, once one has cost
anything; before that, the calibration of earlier committed runs in the same store
(``factory.cost.calibration``: seconds per asset per stage, priced like the lineage); with
neither, the gate admits one block with no price and holds the next until that block is back
(the whole first block renders: it is the run's own probe).

Overshoot: admission stops once spent + reserved + one more row's estimate would pass the
budget, and no row is admitted after the first refused one (the cut is a prefix in manifest
order). Rows already in flight finish, so what a run spends may pass its budget by what those
rows cost beyond their estimates (their sum of actual − estimate; near zero on average, the
estimate being a mean), and, without a calibration, by the first block's cost where that
block alone costs more than the budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from factory.core.status import STATUS_DEFERRED, STATUS_FAILED, STATUS_OK
from factory.spec.prices import USD_PLACES

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.actor import ActorHandle

    from factory.spec.job import Job
    from factory.spec.prices import CostModel
    from factory.store.storage import Store

_QUANTUM = Decimal(1).scaleb(-USD_PLACES)

#: A render the ledger tracks: a row's first render is its manifest row number; its QA
#: re-render (attempt 2, 3, ...) is ``(row, attempt)``.
RenderKey = int | tuple[int, int]


def render_key(row: int, attempt: int = 1) -> RenderKey:
    """The ledger's key for ``row``'s ``attempt``-th render (``RenderKey``)."""
    return int(row) if attempt <= 1 else (int(row), int(attempt))


@dataclass
class Ledger:
    """A run's budget arithmetic: what is spent, what rows in flight hold, what a row costs.

    Attributes:
        budget: the run's cap, in dollars (> 0).
        prior: the estimated dollars per row from earlier runs' calibration, or None.
        spent: dollars of the rows recorded so far (the driver's running total).
        settled: rows admitted by this ledger that have come back (any outcome).
        closed: a row was refused; every later row is refused too.
    """

    budget: Decimal
    prior: Decimal | None = None
    spent: Decimal = Decimal(0)
    settled: int = 0
    closed: bool = False
    retries_refused: int = 0
    #: what each render in flight holds, by ``render_key``
    _held: dict[RenderKey, Decimal] = field(default_factory=dict)
    _held_total: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not self.budget > 0:
            raise ValueError(f"a budget must be > 0 dollars (got {self.budget})")

    @property
    def reserved(self) -> Decimal:
        """Dollars the rows in flight hold."""
        return self._held_total

    @property
    def in_flight(self) -> int:
        """Rows admitted and not come back yet."""
        return len(self._held)

    def estimate(self) -> Decimal | None:
        """Dollars per row: this run's mean per row that came back, once one cost anything
        (rounded up to a nano-dollar); else ``prior``; else None (no price known)."""
        if self.settled and self.spent > 0:
            return (self.spent / self.settled).quantize(_QUANTUM, rounding=ROUND_CEILING)
        return self.prior

    def source(self) -> str:
        """Where the estimate comes from: ``this run``, ``calibration`` or ``none``."""
        if self.settled and self.spent > 0:
            return "this run"
        return "calibration" if self.prior is not None else "none"

    def admit(self, rows: Sequence[int]) -> list[bool] | None:
        """Admit or refuse each row (manifest row numbers, in order); None: ask again once
        rows in flight come back (no price is known yet and a block is still out).

        A row already admitted stays admitted (a retried gate task reserves nothing twice).
        """
        estimate = self.estimate()
        if estimate is None:
            # wait for the probe: first renders in flight (a re-render reserved by the QA
            # check runs only after every first render is back, so it is never waited on)
            if any(not isinstance(key, tuple) for key in self._held):
                return None
            if self.closed or self.spent >= self.budget:
                self.closed = True
                return [False] * len(rows)
            for row in rows:  # unpriced: this block is the run's probe
                self._held.setdefault(row, Decimal(0))
            return [True] * len(rows)
        out = []
        for row in rows:
            if row in self._held:
                out.append(True)
            elif not self.closed and self.spent + self._held_total + estimate <= self.budget:
                self._held[row] = estimate
                self._held_total += estimate
                out.append(True)
            else:
                self.closed = True
                out.append(False)
        return out

    def admit_retries(self, retries: Sequence[tuple[int, int, Decimal]]) -> list[bool]:
        """Admit or refuse each row's next render, for rows the QA gate sends back.

        Args:
            retries: ``(row, attempt made, its dollars)``, in the batch's order. The attempt
                made is done but not recorded by the driver yet: from now it holds its own
                dollars instead of its estimate. The next render is reserved at the same
                dollars if spent + reserved + they fit the budget.

        Returns:
            One decision per retry. A refusal does not close admission (``closed`` is the
            first renders' prefix); it is counted in ``retries_refused``. A retry asked again
            (a retried check task) stays admitted and reserves nothing twice.
        """
        out = []
        for row, attempt, usd in retries:
            made, nxt = render_key(row, attempt), render_key(row, attempt + 1)
            if nxt in self._held:
                out.append(True)
                continue
            if made in self._held:
                self._held_total += usd - self._held[made]
                self._held[made] = usd
            if self.spent + self._held_total + usd <= self.budget:
                self._held[nxt] = usd
                self._held_total += usd
                out.append(True)
            else:
                self.retries_refused += 1
                out.append(False)
        return out

    def settle(self, rows: Sequence[RenderKey], spent: Decimal) -> None:
        """Renders that came back (``render_key``: a row number for a first render) release
        what they held; ``spent`` is the run's dollars so far (a running total: a stale,
        smaller one, arriving late, changes nothing)."""
        for row in rows:
            held = self._held.pop(row, None)
            if held is not None:
                self._held_total -= held
                self.settled += 1
        self.spent = max(self.spent, spent)

    def state(self) -> dict[str, Any]:
        """The ledger's figures, dollars as strings (exact)."""
        estimate = self.estimate()
        return {"budget_usd": str(self.budget), "spent_usd": str(self.spent),
                "reserved_usd": str(self._held_total), "in_flight": self.in_flight,
                "estimate_usd": None if estimate is None else str(estimate),
                "estimate_from": self.source(), "closed": self.closed,
                "retries_refused": self.retries_refused}


class LedgerActor:
    """The run's ``Ledger`` as an async Ray actor: ``admit`` waits (without holding a CPU or
    a thread) while the ledger says to ask again, and ``settle`` wakes it."""

    def __init__(self, budget: str, prior: str | None) -> None:
        self.ledger = Ledger(Decimal(budget), None if prior is None else Decimal(prior))
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made on the actor's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def admit(self, rows: list[int]) -> list[bool]:
        changed = self._condition()
        async with changed:
            while (decisions := self.ledger.admit(rows)) is None:
                await changed.wait()
        return decisions

    async def admit_retries(self, retries: list[tuple[int, int, str]]) -> list[bool]:
        return self.ledger.admit_retries([(row, attempt, Decimal(usd))
                                          for row, attempt, usd in retries])

    async def settle(self, rows: list[RenderKey], spent: str) -> None:
        changed = self._condition()
        async with changed:
            self.ledger.settle(rows, Decimal(spent))
            changed.notify_all()

    async def state(self) -> dict[str, Any]:
        return self.ledger.state()


@dataclass(frozen=True)
class GateConfig:
    """What the gate task needs: the run's ledger actor."""

    ledger: ActorHandle

    def admit(self, rows: list[int]) -> list[bool]:
        """The ledger's decision for each row (``LedgerActor.admit``: it may wait)."""
        import ray

        return ray.get(self.ledger.admit.remote(rows))


@dataclass(frozen=True)
class RetryGate:
    """What the QA check task needs to ask the budget for re-renders
    (``factory.spec.qa.check_batch``): the run's ledger actor and its cost model, which prices
    an attempt from its stage times as the driver's recorder does."""

    ledger: ActorHandle
    costs: CostModel

    def admit_retries(self, retries: list[tuple[int, int, Decimal]]) -> list[bool]:
        """The ledger's decision for each ``(row, attempt made, its dollars)``
        (``Ledger.admit_retries``; it never waits)."""
        import ray

        if not retries:
            return []
        return ray.get(self.ledger.admit_retries.remote(
            [(row, attempt, str(usd)) for row, attempt, usd in retries]))


def defer_rows(batch: dict[str, np.ndarray], todo: np.ndarray,
               admitted: Sequence[bool]) -> dict[str, np.ndarray]:
    """The batch with each of its rows ``todo`` that was not ``admitted`` made ``deferred``."""
    status = batch["status"].astype(object)
    for i, ok in zip(todo, admitted):
        if not ok:
            status[i] = STATUS_DEFERRED
    return {**batch, "status": status}


def gate_rows(batch: dict[str, np.ndarray], *, config: GateConfig) -> dict[str, np.ndarray]:
    """Ray Data task: ask the ledger to admit this block's rows to render; defer the rest."""
    todo = np.flatnonzero(batch["status"] == STATUS_OK)
    if not todo.size:
        return batch
    return defer_rows(batch, todo, config.admit([int(r) for r in batch["row"][todo]]))


def row_estimate(job: Job, store: Store) -> Decimal | None:
    """Dollars per rendered row from the calibration of committed runs in ``store``
    (``factory.cost.calibration.calibrate``), priced with the job's prices; None where a stage has no
    calibration."""
    from factory.cost.calibration import calibrate
    from factory.spec.prices import CostModel, stage_shares

    calibration = calibrate(store, job)
    names = [p.name for p in job.stages]
    if calibration.missing(names):
        return None
    from stages.hosted import expected_units

    model = CostModel(job.prices, stage_shares(job.pools))
    # a hosted stage bills units: what its params ask for (for seconds, its measured ones)
    units = {p.name: (expected_units(p) if expected_units(p) is not None
                      else calibration.rates[p.name].seconds)
             for p in job.stages if p.card.hosted is not None}
    # CostModel splits a row's time over its channels; one row's cost is the whole of it
    return model.row({n: calibration.rates[n].seconds * 1000.0 for n in names},
                     units)["cost_usd"]


class Budget:
    """The driver's side of a budget: starts the ledger actor, hands out the gate, tells the
    ledger what each recorded batch cost, and says how the run ended against its budget."""

    def __init__(self, usd: Decimal, *, prior: Decimal | None = None,
                 costs: CostModel | None = None) -> None:
        import ray

        self.usd, self.prior, self.costs = usd, prior, costs
        # num_cpus=0: bookkeeping only; it must never wait behind the stages for a CPU
        self._actor = ray.remote(num_cpus=0, max_restarts=0)(LedgerActor).remote(
            str(usd), None if prior is None else str(prior))

    @classmethod
    def start(cls, job: Job, store: Store) -> Budget:
        """The ledger for ``job.budget_usd``, its estimate calibrated from ``store``, and the
        job's cost model (the run recorder's) to price QA re-renders."""
        from factory.spec.prices import CostModel, stage_shares

        costs = CostModel(job.prices, stage_shares(job.pools), channels=max(len(job.channels), 1))
        return cls(job.budget_usd, prior=row_estimate(job, store), costs=costs)

    def gate(self) -> tuple[Callable[..., dict[str, np.ndarray]], GateConfig]:
        """The gate task and its config, for ``map_batches``."""
        return gate_rows, GateConfig(ledger=self._actor)

    def retry_gate(self) -> RetryGate:
        """What the QA check task asks before it sends a row back for another render."""
        from factory.spec.prices import CostModel, Prices

        return RetryGate(ledger=self._actor, costs=self.costs or CostModel(Prices(), ()))

    def record(self, batch: pa.Table, spent: Decimal) -> None:
        """After the driver records a batch of sink rows (a ``pyarrow.Table``): the renders
        that came back release their reservations; ``spent`` is the run's dollars so far."""
        keys = settled_keys(batch)
        if keys:  # fire and forget: the ledger orders nothing by arrival
            self._actor.settle.remote(keys, str(spent))

    def state(self) -> dict[str, Any]:
        """The ledger's figures (``Ledger.state``)."""
        import ray

        return ray.get(self._actor.state.remote())

    def summary(self, spent: Decimal) -> dict[str, Any]:
        """The run summary's ``budget`` (``budget_summary``), ``spent`` the run's dollars."""
        return budget_summary(self.usd, self.state(), spent)

    def close(self) -> None:
        import ray

        ray.kill(self._actor)


def settled_keys(batch: pa.Table) -> list[RenderKey]:
    """The renders a batch of sink rows brings back (``render_key``): its rendered rows
    (``ok`` or ``failed``), each at its ``qa_attempts``-th render where a QA gate counts
    them; once each, whatever the row's channel assets."""
    import pyarrow.compute as pc

    done = pc.is_in(batch["status"], value_set=_pa_strings((STATUS_OK, STATUS_FAILED)))
    rows = pc.filter(batch["row"], done).to_pylist()
    attempts = (pc.filter(batch["qa_attempts"], done).to_pylist()
                if "qa_attempts" in batch.column_names else [1] * len(rows))
    return list(dict.fromkeys(render_key(r, a or 1) for r, a in zip(rows, attempts)))


def budget_summary(usd: Decimal, state: dict[str, Any] | None,
                   spent: Decimal) -> dict[str, Any]:
    """The run summary's ``budget``: the cap, what the run spent, whether rows were deferred
    (``exhausted``), the QA re-renders it refused (``retries_refused``, where any were) and
    the estimate per row it used last."""
    refused = int(state.get("retries_refused") or 0) if state else 0
    out: dict[str, Any] = {"usd": float(usd), "spent_usd": float(spent),
                           "exhausted": bool(state and state.get("closed"))}
    if refused:
        out["retries_refused"] = refused
    if state and state.get("estimate_usd") is not None:
        out.update(estimate_usd=float(Decimal(state["estimate_usd"])),
                   estimate_from=state["estimate_from"])
    return out


def budget_line(budget: dict[str, Any]) -> str:
    """One line for the terminal and ``runs show``, from the summary's ``budget``."""
    line = f"${_dollars(budget['usd'])} cap, ${_dollars(budget['spent_usd'])} spent"
    if budget.get("estimate_usd") is not None:
        line += (f" (estimate ${_dollars(budget['estimate_usd'])}/row from "
                 f"{budget['estimate_from']})")
    if refused := budget.get("retries_refused"):
        line += (f"; {refused} QA re-renders past it not run (their rows keep the render they "
                 "have, flagged review)")
    return line + ("; reached: rows past it deferred" if budget.get("exhausted") else "")


def _dollars(usd: float) -> str:
    """Dollars as the summary holds them (at most a nano-dollar's places), in plain digits."""
    return format(Decimal(repr(usd)).normalize(), "f")


def _pa_strings(values: Sequence[str]) -> pa.Array:
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())
