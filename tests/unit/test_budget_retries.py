"""QA re-renders under a budget (``factory.cost.budget``, ``factory.spec.qa``): a re-render is
admitted by the ledger like a row, so a run's spend stays within its budget however many rows
its gate sends back. Hermetic: the ledger runs in this process, no Ray."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa

from factory.cost.budget import Ledger, budget_line, budget_summary, render_key, settled_keys
from factory.spec.prices import CostModel, Prices, StageShare
from factory.spec.qa import (
    BUDGET_REASON, QA_REVIEW, STATUS_QA_RETRY, Gate, QaConfig, Threshold, attempt_usd, check_batch,
)

D = Decimal
#: one CPU stage at a dollar per CPU-second: a render of 250 ms costs $0.25
COSTS = CostModel(Prices(usd_per_hour={"cpu": 3600.0, "l4": 1.0}, gpu="l4"),
                  (StageShare("gen", "generate/synthetic", 0.0, 1.0),))
RENDER_MS, RENDER_USD = 250.0, D("0.25")
#: a gate no render passes, two re-renders after the first
NEVER_PASSES = QaConfig(default=Gate(retries=2, thresholds=(Threshold("score", max=-1.0),)))


class LocalRetryGate:
    """``RetryGate`` with the ledger in this process."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger, self.costs = ledger, COSTS

    def admit_retries(self, retries):
        return self.ledger.admit_retries(retries)


def rendered(rows: list[int], attempts: list[int] | None = None) -> dict[str, np.ndarray]:
    """A batch as it leaves the last stage: every row rendered (``RENDER_MS``), scored 1.0."""
    n = len(rows)
    batch = {"row": np.array(rows, dtype=np.int64),
             "sku": np.array([f"SKU-{r}" for r in rows], dtype=object),
             "status": np.array(["ok"] * n, dtype=object),
             "ms_gen": np.full(n, RENDER_MS), "score": np.ones(n)}
    if attempts is not None:
        batch["qa_attempts"] = np.array(attempts, dtype=np.int64)
    return batch


def run(ledger: Ledger, rows: list[int]) -> tuple[Decimal, dict[int, dict]]:
    """The run's loop over ``rows`` as the pipeline drives it: the gate admits first renders
    (one block), each render is checked against the gate with the budget, the driver records
    what came back (its dollars spent, its render settled), and rows sent back render again,
    a pass per attempt. Returns the run's dollars and each row's final check."""
    retry_gate = LocalRetryGate(ledger)
    admitted = ledger.admit(rows)
    assert admitted is not None
    todo = [(r, 0) for r, ok in zip(rows, admitted) if ok]
    spent, final = D(0), {}
    while todo:
        checked = check_batch(rendered([r for r, _ in todo], [a for _, a in todo]),
                              config=NEVER_PASSES, budget=retry_gate)
        keys = []
        for i, row in enumerate(checked["row"]):
            spent += RENDER_USD  # every render is paid, sent back or kept
            keys.append(render_key(int(row), int(checked["qa_attempts"][i])))
            if checked["status"][i] != STATUS_QA_RETRY:
                final[int(row)] = {k: checked[k][i] for k in ("qa", "qa_attempts", "qa_reason")}
        ledger.settle(keys, spent)
        todo = [(int(r), int(a)) for r, a, s in zip(checked["row"], checked["qa_attempts"],
                                                    checked["status"]) if s == STATUS_QA_RETRY]
    return spent, final


def test_a_budget_that_covers_the_first_renders_exactly_runs_no_re_render() -> None:
    """Four rows at $0.25 a render, a $1.00 budget, a gate that fails every render and two
    retries: without the budget at the QA check this spent $3.00 (three renders a row)."""
    ledger = Ledger(D("1.00"), prior=RENDER_USD)
    spent, final = run(ledger, [1, 2, 3, 4])
    assert spent == D("1.00") <= ledger.budget
    assert sorted(final) == [1, 2, 3, 4]  # every row keeps its one render, flagged review
    for check in final.values():
        assert (check["qa"], check["qa_attempts"]) == (QA_REVIEW, 1)
        assert check["qa_reason"].endswith(BUDGET_REASON)
        assert check["qa_reason"].startswith("score 1 > max -1")
    assert ledger.retries_refused == 4 and ledger.reserved == 0
    assert not ledger.closed  # a refused re-render does not defer any row


def test_a_budget_with_room_for_some_re_renders_admits_them_in_manifest_order() -> None:
    ledger = Ledger(D("1.50"), prior=RENDER_USD)  # the first renders, then two re-renders
    spent, final = run(ledger, [1, 2, 3, 4])
    assert spent == D("1.50")
    assert {r: int(c["qa_attempts"]) for r, c in final.items()} == {1: 2, 2: 2, 3: 1, 4: 1}
    assert all(c["qa"] == QA_REVIEW for c in final.values())
    assert sorted(r for r, c in final.items() if c["qa_reason"].endswith(BUDGET_REASON)) == [
        1, 2, 3, 4]


def test_a_budget_that_covers_every_re_render_runs_them_all() -> None:
    ledger = Ledger(D("3.00"), prior=RENDER_USD)
    spent, final = run(ledger, [1, 2, 3, 4])
    assert spent == D("3.00") and ledger.retries_refused == 0
    for check in final.values():  # the gate's own end: all retries, then review
        assert (check["qa"], check["qa_attempts"]) == (QA_REVIEW, 3)
        assert not check["qa_reason"].endswith(BUDGET_REASON)


def test_without_a_budget_the_check_sends_every_row_back() -> None:
    checked = check_batch(rendered([1, 2]), config=NEVER_PASSES)
    assert list(checked["status"]) == [STATUS_QA_RETRY] * 2


def test_an_attempt_holds_its_own_dollars_once_checked_and_its_retry_the_same() -> None:
    ledger = Ledger(D("10"), prior=D("0.10"))  # the estimate is below what a render costs
    assert ledger.admit([1]) == [True] and ledger.reserved == D("0.10")
    assert ledger.admit_retries([(1, 1, D("0.25"))]) == [True]
    # the first render now holds $0.25 (done, not recorded yet), its re-render $0.25 more
    assert ledger.reserved == D("0.50") and ledger.in_flight == 2
    assert ledger.admit_retries([(1, 1, D("0.25"))]) == [True]  # a retried check task
    assert ledger.reserved == D("0.50")
    ledger.settle([render_key(1, 1)], spent=D("0.25"))
    assert ledger.reserved == D("0.25") and ledger.spent == D("0.25")
    ledger.settle([render_key(1, 2)], spent=D("0.50"))
    assert ledger.reserved == 0 and ledger.settled == 2
    assert ledger.estimate() == D("0.25")  # this run's mean per render


def test_re_renders_in_flight_do_not_hold_back_an_unpriced_gate() -> None:
    """With nothing priced (free stages), the gate waits for its probe block only: re-renders
    run after every first render is back, so waiting on them would never end."""
    ledger = Ledger(D("1"))
    assert ledger.admit([1, 2]) == [True, True]
    assert ledger.admit_retries([(1, 1, D(0)), (2, 1, D(0))]) == [True, True]
    assert ledger.admit([3]) is None  # the probe (rows 1, 2) is still out
    ledger.settle([1, 2], spent=D(0))
    assert ledger.in_flight == 2  # their re-renders
    assert ledger.admit([3]) == [True]


def test_a_recorded_batch_settles_each_render_once_at_its_attempt() -> None:
    batch = pa.table({"row": [1, 1, 2, 3, 4, 5],
                      "status": ["ok", "ok", "failed", "deferred", "ok", "ok"],
                      "qa_attempts": [2, 2, 1, 0, 3, None]})
    assert settled_keys(batch) == [(1, 2), 2, (4, 3), 5]
    plain = pa.table({"row": [7, 8], "status": ["ok", "exists"]})
    assert settled_keys(plain) == [7]


def test_the_summary_counts_re_renders_the_budget_refused() -> None:
    ledger = Ledger(D("1"), prior=D("0.5"))
    ledger.admit_retries([(1, 1, D("2"))])
    summary = budget_summary(D("1"), ledger.state(), D("1"))
    assert summary["retries_refused"] == 1 and summary["exhausted"] is False
    assert "1 QA re-renders past it not run" in budget_line(summary)
    assert "retries_refused" not in budget_summary(D("1"), Ledger(D("1")).state(), D("0"))


def test_an_attempt_is_priced_as_the_driver_records_it() -> None:
    channels = CostModel(COSTS.prices, COSTS.shares, channels=2)
    batch = rendered([1])
    assert attempt_usd(COSTS, batch, 0) == RENDER_USD
    assert attempt_usd(channels, batch, 0) == channels.row({"gen": RENDER_MS})["cost_usd"] * 2
