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
    from factory.store.storage import Store

_QUANTUM = Decimal(1).scaleb(-USD_PLACES)


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
    _held: dict[int, Decimal] = field(default_factory=dict)
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
            if self._held:
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

    def settle(self, rows: Sequence[int], spent: Decimal) -> None:
        """Rows that came back release what they held; ``spent`` is the run's dollars so far
        (a running total: a stale, smaller one, arriving late, changes nothing)."""
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
                "estimate_from": self.source(), "closed": self.closed}


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

    async def settle(self, rows: list[int], spent: str) -> None:
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
    model = CostModel(job.prices, stage_shares(job.pools))
    # CostModel splits a row's time over its channels; one row's cost is the whole of it
    return model.row({n: calibration.rates[n].seconds * 1000.0 for n in names})["cost_usd"]


class Budget:
    """The driver's side of a budget: starts the ledger actor, hands out the gate, tells the
    ledger what each recorded batch cost, and says how the run ended against its budget."""

    def __init__(self, usd: Decimal, *, prior: Decimal | None = None) -> None:
        import ray

        self.usd, self.prior = usd, prior
        # num_cpus=0: bookkeeping only; it must never wait behind the stages for a CPU
        self._actor = ray.remote(num_cpus=0, max_restarts=0)(LedgerActor).remote(
            str(usd), None if prior is None else str(prior))

    @classmethod
    def start(cls, job: Job, store: Store) -> Budget:
        """The ledger for ``job.budget_usd``, its estimate calibrated from ``store``."""
        return cls(job.budget_usd, prior=row_estimate(job, store))

    def gate(self) -> tuple[Callable[..., dict[str, np.ndarray]], GateConfig]:
        """The gate task and its config, for ``map_batches``."""
        return gate_rows, GateConfig(ledger=self._actor)

    def record(self, batch: pa.Table, spent: Decimal) -> None:
        """After the driver records a batch of sink rows (a ``pyarrow.Table``): the rows that
        were rendered release their reservations; ``spent`` is the run's dollars so far."""
        import pyarrow.compute as pc

        done = pc.is_in(batch["status"], value_set=_pa_strings((STATUS_OK, STATUS_FAILED)))
        rows = pc.unique(pc.filter(batch["row"], done)).to_pylist()
        if rows:  # fire and forget: the ledger orders nothing by arrival
            self._actor.settle.remote(rows, str(spent))

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


def budget_summary(usd: Decimal, state: dict[str, Any] | None,
                   spent: Decimal) -> dict[str, Any]:
    """The run summary's ``budget``: the cap, what the run spent, whether rows were deferred
    (``exhausted``) and the estimate per row it used last."""
    out: dict[str, Any] = {"usd": float(usd), "spent_usd": float(spent),
                           "exhausted": bool(state and state.get("closed"))}
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
    return line + ("; reached: rows past it deferred" if budget.get("exhausted") else "")


def _dollars(usd: float) -> str:
    """Dollars as the summary holds them (at most a nano-dollar's places), in plain digits."""
    return format(Decimal(repr(usd)).normalize(), "f")


def _pa_strings(values: Sequence[str]) -> pa.Array:
    import pyarrow as pa

    return pa.array(list(values), type=pa.string())
