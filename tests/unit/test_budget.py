"""The budget cap (``factory.cost.budget``): the spec and CLI checks, the ledger's arithmetic in
exact dollars, the gate that defers rows once the budget is reached, and the accounting and
run identity a deferral takes part in. Hermetic: no Ray (the gate is given a local ledger)."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from factory.cost.budget import (
    STATUS_DEFERRED, Ledger, budget_line, budget_summary, defer_rows, gate_rows,
)
from factory.cli.main import main
from factory.run.identity import RunInputs, budget_text
from factory.run.recorder import Counts
from factory.spec.job import SpecError, parse_job

D = Decimal


def spec(**extra) -> dict:
    return {"name": "capped", "manifest": {"uri": "catalog.csv"}, "output": {"uri": "out"},
            "stages": [{"kind": "generate", "model": "synthetic"}], **extra}


# --- spec and CLI ---------------------------------------------------------------------------

def test_a_budget_in_the_spec_is_exact_dollars_and_stays_out_of_the_spec_hash() -> None:
    job = parse_job(spec(budget={"usd": "12.50"}))
    assert job.budget_usd == D("12.50")
    assert parse_job(spec(budget={"usd": 0.1})).budget_usd == D("0.1")  # not 0.1000000000000000055
    assert parse_job(spec()).budget_usd is None
    # the budget is a run input of its own (RunInputs.budget_usd), not part of the spec hash
    assert job.spec_hash == parse_job(spec()).spec_hash


@pytest.mark.parametrize("usd, message", [
    (0, "greater than 0"), (-5, "greater than 0"), ("lots", "valid decimal"),
    ("nan", "finite number"), ("inf", "finite number")])
def test_a_budget_that_is_not_a_positive_number_is_rejected(usd, message) -> None:
    with pytest.raises(SpecError) as err:
        parse_job(spec(budget={"usd": usd}))
    assert "budget.usd" in str(err.value) and message in str(err.value)


def test_a_budget_needs_its_usd_and_nothing_else() -> None:
    with pytest.raises(SpecError, match="budget.usd: Field required"):
        parse_job(spec(budget={}))
    with pytest.raises(SpecError, match="budget.eur: unknown key"):
        parse_job(spec(budget={"usd": 5, "eur": 5}))


def test_the_budget_override_replaces_the_spec_budget_and_is_checked() -> None:
    job = parse_job(spec(budget={"usd": 5}))
    assert job.with_overrides(budget_usd=D("7.25")).budget_usd == D("7.25")
    assert job.with_overrides().budget_usd == D("5")
    for bad in (D(0), D(-1), D("NaN")):
        with pytest.raises(SpecError, match="budget.usd"):
            job.with_overrides(budget_usd=bad)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_a_bad_budget_option_is_a_usage_error_before_anything_starts(tmp_path: Path,
                                                                     value: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: x\n")  # never read: the option fails first
    out = CliRunner().invoke(main, ["run", str(path), "--budget", value])
    assert out.exit_code == 2 and "--budget" in out.output


# --- run identity ---------------------------------------------------------------------------

BASE = RunInputs(spec_hash="a" * 64, manifest_sha256="b" * 64, manifest_rows=20, limit=None,
                 season=None)


def test_a_budget_makes_a_new_run_and_no_budget_keeps_the_ids_runs_had_before() -> None:
    import hashlib
    import json

    before = {"spec_hash": "a" * 64, "manifest_sha256": "b" * 64, "manifest_rows": 20,
              "limit": None, "season": None}  # RunInputs as it was before budgets
    assert BASE.digest() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    small, large = replace(BASE, budget_usd="0.5"), replace(BASE, budget_usd="50")
    ids = {r.derived_run_id("job") for r in (BASE, small, large)}
    assert len(ids) == 3
    assert small.differences(large.as_dict()) == ["budget (USD) 50 then, 0.5 now"]
    assert budget_text(D("0.50")) == budget_text(D("0.5")) == "0.5"
    assert budget_text(D("1E+2")) == "100" and budget_text(None) is None


# --- the ledger -----------------------------------------------------------------------------

def test_without_a_price_one_block_is_admitted_and_the_next_waits_for_it() -> None:
    ledger = Ledger(D("1.00"))
    assert ledger.admit([1, 2, 3, 4]) == [True] * 4  # unpriced: the run's own probe
    assert ledger.in_flight == 4 and ledger.reserved == 0
    assert ledger.admit([5, 6, 7, 8]) is None  # ask again once the block is back
    ledger.settle([1, 2, 3, 4], spent=D("0.40"))
    assert ledger.estimate() == D("0.10") and ledger.source() == "this run"
    # 0.40 spent: 0.10 a row, so six more rows reach 1.00 exactly; the seventh does not fit
    assert ledger.admit([5, 6, 7, 8]) == [True] * 4
    assert ledger.admit([9, 10, 11, 12]) == [True, True, False, False]
    assert ledger.spent + ledger.reserved == D("1.00")
    assert ledger.closed


def test_after_the_first_refusal_every_later_row_is_refused() -> None:
    ledger = Ledger(D("1"), prior=D("0.30"))
    assert ledger.admit([1, 2, 3, 4]) == [True, True, True, False]
    ledger.settle([1, 2, 3], spent=D("0.30"))  # cheaper than estimated: room again...
    assert ledger.admit([5, 6]) == [False, False]  # ...but the cut is a prefix of the manifest


def test_settling_replaces_reservations_with_actual_dollars_exactly() -> None:
    ledger = Ledger(D("10"), prior=D("0.000000003"))
    assert ledger.admit(list(range(1, 8))) == [True] * 7
    assert ledger.reserved == D("0.000000021")
    ledger.settle([1, 2], spent=D("0.000000010"))
    assert (ledger.reserved, ledger.spent, ledger.settled) == (D("0.000000015"),
                                                               D("0.000000010"), 2)
    ledger.settle([3], spent=D("0.000000004"))  # a stale total arriving late changes nothing
    assert ledger.spent == D("0.000000010")
    ledger.settle([999], spent=D("0.000000012"))  # a row it never admitted holds nothing
    assert ledger.settled == 3 and ledger.reserved == D("0.000000012")
    # the estimate is this run's own mean, rounded up to a nano-dollar
    assert ledger.estimate() == D("0.000000004")


def test_the_prior_prices_rows_until_this_run_has_costs_of_its_own() -> None:
    ledger = Ledger(D("1"), prior=D("0.25"))
    assert ledger.source() == "calibration" and ledger.estimate() == D("0.25")
    ledger.settle([], spent=D("0"))
    assert ledger.estimate() == D("0.25")
    assert ledger.admit([1]) == [True]
    ledger.settle([1], spent=D("0.05"))
    assert ledger.source() == "this run" and ledger.estimate() == D("0.05")


def test_rows_that_cost_nothing_do_not_make_a_price() -> None:
    ledger = Ledger(D("1"))
    assert ledger.admit([1, 2]) == [True, True]
    ledger.settle([1, 2], spent=D(0))  # every row failed before any stage time was charged
    assert ledger.estimate() is None
    assert ledger.admit([3, 4]) == [True, True]  # another unpriced block, one at a time
    assert ledger.admit([5]) is None


def test_an_admitted_row_asked_again_reserves_nothing_twice() -> None:
    ledger = Ledger(D("1"), prior=D("0.4"))
    assert ledger.admit([1, 2]) == [True, True]
    assert ledger.admit([1, 2]) == [True, True]  # a retried gate task
    assert ledger.reserved == D("0.8")


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Ledger(D(0))


# --- the gate -------------------------------------------------------------------------------

class LocalGate:
    """``GateConfig`` with the ledger in this process (no actor, no Ray)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger, self.asked = ledger, []

    def admit(self, rows: list[int]) -> list[bool]:
        self.asked.append(rows)
        decisions = self.ledger.admit(rows)
        assert decisions is not None, "the test settles before the next block"
        return decisions


def block(rows: range, status: list[str] | None = None) -> dict[str, np.ndarray]:
    n = len(rows)
    return {"row": np.array(list(rows), dtype=np.int64),
            "sku": np.array([f"SKU-{r}" for r in rows], dtype=object),
            "status": np.array(status or ["ok"] * n, dtype=object)}


def test_the_gate_defers_rows_once_the_budget_is_reached() -> None:
    gate = LocalGate(Ledger(D("1.00"), prior=D("0.30")))
    first = gate_rows(block(range(1, 5)), config=gate)
    assert list(first["status"]) == ["ok", "ok", "ok", STATUS_DEFERRED]
    assert list(first["sku"]) == ["SKU-1", "SKU-2", "SKU-3", "SKU-4"]  # rows keep their SKU
    second = gate_rows(block(range(5, 9)), config=gate)
    assert set(second["status"]) == {STATUS_DEFERRED}


def test_the_gate_asks_only_about_rows_to_render() -> None:
    gate = LocalGate(Ledger(D("1.00"), prior=D("0.30")))
    out = gate_rows(block(range(1, 5), ["ok", "failed", "ok", "ok"]), config=gate)
    assert gate.asked == [[1, 3, 4]]
    assert list(out["status"]) == ["ok", "failed", "ok", "ok"]
    nothing = block(range(5, 7), ["failed", "failed"])
    assert gate_rows(nothing, config=gate) is nothing and len(gate.asked) == 1


def test_defer_rows_changes_only_the_refused_rows() -> None:
    batch = block(range(1, 4))
    out = defer_rows(batch, np.array([0, 2]), [True, False])
    assert list(out["status"]) == ["ok", "ok", STATUS_DEFERRED]
    assert list(batch["status"]) == ["ok", "ok", "ok"]  # the input batch is not changed


# --- accounting and reporting ---------------------------------------------------------------

def test_deferred_rows_are_a_fourth_outcome_of_the_accounting() -> None:
    c = Counts(assets=5, failed=1, rejected=2, deferred=4)
    assert c.outcomes == c.total == 12
    with_channels = Counts(assets=10, failed=2, rejected=2, deferred=4, channels=2)
    assert with_channels.outcomes == 24 and with_channels.total == 12  # 12 rows x 2 channels


def test_the_summary_says_what_the_budget_was_and_what_was_spent() -> None:
    state = Ledger(D("2"), prior=D("0.5")).state()
    summary = budget_summary(D("2"), {**state, "closed": True}, D("2.1"))
    assert summary == {"usd": 2.0, "spent_usd": 2.1, "exhausted": True, "estimate_usd": 0.5,
                       "estimate_from": "calibration"}
    line = budget_line(summary)
    assert "$2 cap" in line and "$2.1 spent" in line and "deferred" in line
    tiny = budget_line({"usd": 2e-05, "spent_usd": 1.9e-05, "estimate_usd": 1.187e-06,
                        "estimate_from": "this run", "exhausted": False})
    assert tiny == "$0.00002 cap, $0.000019 spent (estimate $0.000001187/row from this run)"


# --- the estimate before a run has costs of its own -----------------------------------------

def test_earlier_runs_in_the_store_price_a_row_like_the_plan_does(tmp_path: Path) -> None:
    import pyarrow as pa

    from factory.cost.budget import row_estimate
    from factory.cost.calibration import calibrate
    from factory.run.forecast import predict
    from factory.spec.prices import CostModel, stage_shares
    from factory.run.recorder import RunRecorder
    from factory.store.storage import Store

    job = parse_job(spec(
        output={"uri": str(tmp_path / "out")}, pricing={"usd_per_hour": {"cpu": 36}},
        stages=[{"kind": "generate", "model": "synthetic", "resources": {"num_cpus": 1}},
                {"kind": "identity", "model": "passthrough", "resources": {"num_cpus": 2},
                 "name": "check"}]))
    store = Store(str(tmp_path / "out"))
    assert row_estimate(job, store) is None  # no committed run: no price before the run

    shares = stage_shares(job.pools)
    recorder = RunRecorder(store, "r1", job.stages, costs=CostModel(job.prices, shares))
    recorder.add(pa.Table.from_pylist([
        {"row": i, "sku": f"SKU-{i}", "status": "ok", "output_key": f"k{i}", "written": True,
         "ms_generate": 100.0 * i, "generate_placement": "node=x device=cpu",
         "ms_check": 10.0, "check_placement": "node=x device=cpu"} for i in (1, 2, 3)]))
    assert recorder.commit({"run_id": "r1"})
    estimate = row_estimate(job, store)
    # generate: 0.2 s mean, check: 0.01 s; one fused CPU actor holds 2 CPUs; $36/CPU-hour
    assert estimate == Decimal("0.0042")
    plan = predict(job, calibrate(store, job), rows=1, rejected=0, existing=0, to_render=1)
    assert float(estimate) == pytest.approx(plan.usd, abs=1e-9)


def test_a_submitted_run_carries_its_budget_to_the_cluster() -> None:
    from factory.deploy.ray_jobs import entrypoint

    assert entrypoint("j.yaml", "r-1", budget_usd=D("2.50")) == (
        "python -m factory.cli.main run j.yaml --run-id r-1 --budget 2.50")
    assert "--budget" not in entrypoint("j.yaml", "r-1")
