"""The brand QA gate (``factory.spec.qa``): its spec, its check on a batch, its derived seeds, and
the driver's bookkeeping of retried rows. Hermetic: no Ray."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from factory.spec.prices import CostModel, CostTotals, Prices, StageShare
from factory.spec.qa import (
    QA_PASS, QA_REVIEW, STATUS_QA_RETRY, Gate, QaConfig, QaRetries, Threshold, check_batch, retry_seed,
)
from factory.spec.job import SpecError, parse_job

STAGES = [{"kind": "generate", "model": "synthetic", "params": {"width": 32, "height": 32}},
          {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}}]


def job(qa: dict, **extra) -> dict:
    return {"name": "q", "manifest": {"uri": "m.csv"}, "output": {"uri": "out"},
            "stages": STAGES, "qa": qa, **extra}


def routed(qa: dict) -> dict:
    stages = [*STAGES[:1], {"kind": "segment", "model": "u2net-tiny"}, STAGES[1]]
    return job(qa, stages=stages, routes={"default": "thumb", "chains": {
        "thumb": ["generate", "recolor"], "hero": ["generate", "segment", "recolor"]}})


def problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_job(data)
    return err.value.problems


def test_a_gate_parses_into_frozen_thresholds() -> None:
    parsed = parse_job(job({"retries": 1, "thresholds": {"delta_e_after": {"max": 12}}}))
    assert parsed.qa == QaConfig(default=Gate(1, (Threshold("delta_e_after", None, 12.0),)))
    assert parsed.qa.describe() == ["qa gate: delta_e_after <= 12; 1 retries, then review"]


def test_no_qa_leaves_the_job_and_its_hash_as_they_were() -> None:
    plain = {k: v for k, v in job({}).items() if k != "qa"}
    assert parse_job(plain).qa is None
    assert parse_job(plain).spec_hash != parse_job(job({"thresholds": {}})).spec_hash


@pytest.mark.parametrize("qa, expected", [
    ({"thresholds": {"alpha_coverage": {"min": 0.1}}},
     ("qa.thresholds.alpha_coverage: the job's stages measure no 'alpha_coverage' "
     "(measured: delta_e_before, delta_e_after)")),
    ({"thresholds": {"delta_e_after": {}}}, "qa.thresholds.delta_e_after: give min, max or both"),
    ({"thresholds": {"delta_e_after": {"min": 3, "max": 1}}},
     "qa.thresholds.delta_e_after: min 3 is above max 1"),
    ({"thresholds": {"delta_e_after": {"max": "nan"}}},
     "qa.thresholds.delta_e_after.max: must be a finite number"),
    ({"retries": 11}, "qa.retries: Input should be less than or equal to 10 (got 11)"),
    ({"thresholds": {"delta_e_after": {"maximum": 1}}},
     "qa.thresholds.delta_e_after.maximum: unknown key"),
    ({"routes": {"hero": {}}}, ("qa.routes.hero: the job has no routes: (put the gate in "
                               "qa.thresholds)")),
])
def test_a_bad_gate_is_rejected_naming_its_key(qa: dict, expected: str) -> None:
    assert expected in problems(job(qa))


def test_routes_get_their_own_gate_checked_against_their_own_chain() -> None:
    gates = parse_job(routed({"thresholds": {"delta_e_after": {"max": 9}}, "routes": {
        "hero": {"retries": 3, "thresholds": {"alpha_coverage": {"min": 0.05}}}}})).qa
    assert gates.gate("thumb").thresholds[0].metric == "delta_e_after"
    assert gates.gate("hero") == Gate(3, (Threshold("alpha_coverage", 0.05, None),))
    # the default gate applies to 'thumb', which has no segment stage
    assert ("qa.thresholds.alpha_coverage: route 'thumb' measures no 'alpha_coverage' "
            "(measured: delta_e_before, delta_e_after)"
            in problems(routed({"thresholds": {"alpha_coverage": {"min": 0.05}}})))
    assert ("qa.routes.heroic: no route named 'heroic' (routes: thumb, hero)"
            in problems(routed({"routes": {"heroic": {}}})))
    # a route listed without thresholds is not gated
    ungated = parse_job(routed({"thresholds": {"delta_e_after": {"max": 9}},
                                "routes": {"thumb": {}}})).qa
    assert ungated.gate("thumb") is None and ungated.gate("hero") is not None


def batch(delta: list[float], attempts: list[int] | None = None,
          status: list[str] | None = None) -> dict[str, np.ndarray]:
    n = len(delta)
    out = {"sku": np.array([f"s{i}" for i in range(n)], dtype=object),
           "status": np.array(status or ["ok"] * n, dtype=object),
           "delta_e_after": np.array(delta, dtype=np.float64)}
    if attempts is not None:
        out["qa_attempts"] = np.array(attempts, dtype=np.int64)
    return out


GATE = QaConfig(default=Gate(2, (Threshold("delta_e_after", None, 10.0),)))


def test_the_check_passes_retries_then_flags_review_by_attempt() -> None:
    # first render: inside passes, outside retries
    out = check_batch(batch([4.0, 15.0, np.nan]), config=GATE)
    assert list(out["status"]) == ["ok", STATUS_QA_RETRY, STATUS_QA_RETRY]
    assert list(out["qa"]) == [QA_PASS, "", ""]
    assert list(out["qa_attempts"]) == [1, 1, 1]
    assert out["qa_reason"][1] == "delta_e_after 15 > max 10"
    assert out["qa_reason"][2] == "delta_e_after not measured"
    # the third render (2 retries spent) is the last: outside it is written, flagged review
    out = check_batch(batch([15.0, 15.0, 4.0], attempts=[1, 2, 2]), config=GATE)
    assert list(out["status"]) == [STATUS_QA_RETRY, "ok", "ok"]
    assert list(out["qa"]) == ["", QA_REVIEW, QA_PASS]
    assert list(out["qa_attempts"]) == [2, 3, 3]


def test_the_check_counts_renders_only_and_ignores_other_rows() -> None:
    out = check_batch(batch([15.0, 15.0, 15.0], status=["failed", "deferred", "ok"]),
                      config=QaConfig(default=Gate(0, GATE.default.thresholds)))
    assert list(out["status"]) == ["failed", "deferred", "ok"]  # 0 retries: review at once
    assert list(out["qa"]) == ["", "", QA_REVIEW]
    assert list(out["qa_attempts"]) == [1, 0, 1]


def test_a_route_without_a_gate_is_not_checked() -> None:
    config = QaConfig(default=None, routes={"hero": GATE.default})
    b = {**batch([15.0, 15.0]), "route": np.array(["thumb", "hero"], dtype=object)}
    out = check_batch(b, config=config)
    assert list(out["status"]) == ["ok", STATUS_QA_RETRY]


def test_the_retry_seed_is_deterministic_and_new_per_attempt() -> None:
    seeds = [retry_seed(1234, attempt) for attempt in (2, 3, 4)]
    assert seeds == [retry_seed(1234, attempt) for attempt in (2, 3, 4)]
    assert len({1234, *seeds}) == 4
    assert retry_seed(1235, 2) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)


def sink_rows(status: list[str], attempts: list[int], ms: float) -> pa.Table:
    n = len(status)
    return pa.table({"row": list(range(n)), "sku": [f"s{i}" for i in range(n)],
                     "seed": [7] * n, "status": status, "output_key": [""] * n,
                     "qa": ["" if s == STATUS_QA_RETRY else QA_REVIEW for s in status],
                     "qa_attempts": attempts, "ms_generate": [ms] * n})


def test_the_driver_holds_retries_prices_them_and_carries_their_cost() -> None:
    costs = CostModel(Prices(usd_per_hour={"cpu": 3.6, "h100": 1.0}, gpu="h100"),
                      (StageShare("generate", "generate/synthetic", 0.0, 1.0),))
    counts = type("Counts", (), {"cost": CostTotals()})()
    exported: list[CostTotals] = []  # what reaches factory_stage_cost_usd
    retries = QaRetries(costs=costs, totals=counts.cost, key_of=lambda item: f"k{item['seed']}",
                        columns=["row", "sku", "seed", "status", "output_key"],
                        on_cost=exported.append)
    kept = retries.take(sink_rows([STATUS_QA_RETRY, STATUS_QA_RETRY], [1, 1], ms=1000.0))
    assert kept.num_rows == 0 and retries.retries == 2
    assert counts.cost.usd["generate"] == Decimal("0.002")  # 2 rows x 1 s x $3.6/h
    assert [b.usd for b in exported] == [{"generate": Decimal("0.002")}]  # the metric too
    again = retries.next_pass()
    assert again["seed"].to_pylist() == [retry_seed(7, 2)] * 2
    assert again["output_key"].to_pylist() == [f"k{retry_seed(7, 2)}"] * 2
    assert set(again["status"].to_pylist()) == {"ok"} and retries.next_pass() is None
    final = retries.take(sink_rows(["ok", "ok"], [2, 2], ms=500.0))
    assert final["qa_retry_usd"].to_pylist() == [Decimal("0.001")] * 2
    assert retries.summary() == {"review": 2, "retries": 2, "retry_usd": 0.002}
    # a row's later attempt (fresh carry) and a budget's view of a held row
    view = QaRetries.settled(sink_rows([STATUS_QA_RETRY], [1], ms=1.0))
    assert view["status"].to_pylist() == ["ok"]
