"""Cost in the lineage (factory.spec.prices through RunRecorder) and the plan's arithmetic
(factory.run.forecast) over runs committed the real way; hermetic: no Ray."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from factory.cli.main import main
from factory.cost.calibration import calibrate
from factory.run.forecast import count_work, predict
from factory.spec.prices import DEFAULT_USD_PER_HOUR, CostModel, Prices, stage_shares
from factory.store.run_tables import read_lineage, read_summary
from factory.run.recorder import RunRecorder
from factory.spec.job import SpecError, load_job, parse_job
from factory.store.storage import Store
from stages.chain import pool_layout

SPEC = """
name: priced
manifest: {uri: "catalog.csv"}
output: {uri: "out"}
prompt: {template: "photo of {{ sku }}"}
pricing: {gpu: l4, usd_per_hour: {l4: 0.8, cpu: 0.04}}
stages:
  - kind: generate
    model: synthetic
    params: {width: 32, height: 32}
    resources: {num_gpus: 0.5, num_cpus: 1}
  - kind: recolor
    model: lab
    params: {palette: ["#C8553D", "#2D3047"]}
    resources: {num_cpus: 0.5}
  - kind: identity
    model: passthrough
    resources: {num_cpus: 2}
"""
STAGES = ("generate", "recolor", "identity")


def _job(tmp_path: Path, spec: str = SPEC):
    spec = spec.replace('"catalog.csv"', f'"{tmp_path / "catalog.csv"}"').replace(
        '"out"', f'"{tmp_path / "out"}"')
    (tmp_path / "job.yaml").write_text(spec)
    (tmp_path / "catalog.csv").write_text(
        "sku,title\n" + "".join(f"SKU-{i:03d},thing {i}\n" for i in range(1, 13)))
    return load_job(tmp_path / "job.yaml")


def _commit(job, store: Store, run_id: str, n: int = 12, fail: int = 5, reject: int = 7,
            wall_s: float = 10.0) -> RunRecorder:
    shares = stage_shares(job.pools)
    recorder = RunRecorder(store, run_id, job.stages, costs=CostModel(job.prices, shares))
    rows = []
    for i in range(1, n + 1):
        status = "failed" if i == fail else "rejected" if i == reject else "ok"
        done = STAGES[:1] if status == "failed" else STAGES if status == "ok" else ()
        rows.append({"row": i, "sku": f"SKU-{i:03d}", "variant": "default", "seed": i,
                     "prompt": "p", "status": status, "error": "", "reject_field": "sku",
                     "failed_stage": "recolor" if status == "failed" else "",
                     "output_key": f"k{i}", "sha256": "", "bytes": 1, "written": True,
                     **{f"ms_{s}": (1000.0 / 3 * i * (k + 1) if s in done else None)
                        for k, s in enumerate(STAGES)},
                     **{f"{s}_placement": (f"node=x device={'cuda:0' if s == 'generate' else 'cpu'}"
                                           if s in done else "")
                        for s in STAGES}})
    for start in range(0, n, 5):
        recorder.add(pa.Table.from_pylist(rows[start:start + 5]))
    assert recorder.commit({"run_id": run_id, "wall_s": wall_s,
                            "cost": recorder.counts.cost.summary(job.prices),
                            "cost_usd": float(recorder.counts.cost.total_usd)})
    return recorder


def test_fused_chain_stages_are_charged_the_share_their_actor_reserved(tmp_path) -> None:
    job = _job(tmp_path)
    shares = {s.name: (s.gpus, s.cpus) for s in stage_shares(pool_layout(job.stages, fuse=True))}
    # generate holds half a GPU; recolor + identity are one actor asking max(0.5, 2) CPUs
    assert shares == {"generate": (0.5, 1.0), "recolor": (0.0, 2.0), "identity": (0.0, 2.0)}
    unfused = {s.name: s.cpus for s in stage_shares(pool_layout(job.stages, fuse=False))}
    assert unfused["recolor"] == 0.5


def test_costs_add_up_exactly_per_asset_stage_and_run(tmp_path) -> None:
    job = _job(tmp_path)
    assert job.prices == Prices(gpu="l4", usd_per_hour={**DEFAULT_USD_PER_HOUR, "l4": 0.8,
                                                        "cpu": 0.04})
    store = Store(str(tmp_path / "out"))
    _commit(job, store, "r1")
    lineage, summary = read_lineage(store, "r1")
    rows = lineage.to_pylist()
    assert len(rows) == 11  # 12 rows, one rejected: no lineage row, no cost
    for r in rows:
        assert r["cost_usd"] == sum((r[f"usd_{s}"] for s in STAGES), Decimal(0))
        assert isinstance(r["cost_usd"], Decimal)
    # row 3: generate 1 s x 0.5 GPU at $0.8/h + 1 s x 1 CPU at $0.04/h
    row3 = next(r for r in rows if r["row"] == 3)
    assert row3["gpu_s_generate"] == pytest.approx(0.5) and row3["cpu_s_generate"] == 1.0
    assert row3["usd_generate"] == Decimal("0.000122222")  # (0.5*0.8 + 0.04)/3600, rounded
    assert row3["cpu_s_recolor"] == pytest.approx(2 * 2.0)  # 2 s x the chain's 2 CPUs
    # the failed row paid for generate only; its later stages cost nothing
    row5 = next(r for r in rows if r["row"] == 5)
    assert row5["usd_recolor"] == 0 and row5["cost_usd"] == row5["usd_generate"] > 0
    cost = summary["cost"]
    for s in STAGES:
        column = sum((r[f"usd_{s}"] for r in rows), Decimal(0))
        assert Decimal(repr(cost["stages"][s]["usd"])) == column
        assert cost["stages"][s]["gpu_s"] == pytest.approx(sum(r[f"gpu_s_{s}"] for r in rows))
    total = sum((r["cost_usd"] for r in rows), Decimal(0))
    assert Decimal(repr(cost["usd"])) == total == sum(
        (Decimal(repr(c["usd"])) for c in cost["stages"].values()), Decimal(0))
    assert pc.sum(lineage["cost_usd"]).as_py() == total  # Arrow's decimal sum agrees
    assert cost["gpu"] == "l4" and cost["usd_per_hour"]["l4"] == 0.8


def test_runs_show_prints_cost_per_stage_and_total(tmp_path) -> None:
    job = _job(tmp_path)
    store = Store(str(tmp_path / "out"))
    _commit(job, store, "r1")
    out = CliRunner().invoke(main, ["runs", "show", "r1", "--output", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    total = read_summary(store, "r1")["cost"]["usd"]
    assert f"cost  total      ${total:.6f} at l4 $0.8/GPU-h, cpu $0.04/CPU-h" in out.output
    assert sum(1 for line in out.output.splitlines() if line.startswith("cost  ")) == 4


@pytest.mark.parametrize(("pricing", "key"), [
    ("{gpu: h100, colour: red}", "pricing.colour: unknown key"),
    ("{gpu: tpu}", "pricing.gpu: 'tpu' has no price"),
    ("{usd_per_hour: {h100: -1}}", "pricing.usd_per_hour.h100: an hourly price must be"),
    ("{usd_per_hour: {h100: lots}}", "pricing.usd_per_hour.h100"),
    ("{file: nowhere.yaml}", "pricing.file ("),
])
def test_a_bad_pricing_section_fails_naming_the_key(tmp_path, pricing, key) -> None:
    spec = SPEC.replace("pricing: {gpu: l4, usd_per_hour: {l4: 0.8, cpu: 0.04}}",
                        f"pricing: {pricing}")
    with pytest.raises(SpecError) as err:
        _job(tmp_path, spec)
    assert key in str(err.value) and "job.yaml" in str(err.value)


def test_a_price_file_under_the_spec_keys(tmp_path) -> None:
    (tmp_path / "prices.yaml").write_text("gpu: a100\nusd_per_hour: {a100: 3.0, cpu: 0.03}\n")
    job = _job(tmp_path, SPEC.replace("pricing: {gpu: l4, usd_per_hour: {l4: 0.8, cpu: 0.04}}",
                                      "pricing: {file: prices.yaml, usd_per_hour: {cpu: 0.02}}"))
    assert job.prices.gpu == "a100" and job.prices.gpu_usd_per_hour == 3.0
    assert job.prices.cpu_usd_per_hour == 0.02  # the spec's own key wins
    (tmp_path / "prices.yaml").write_text("usd_per_hour: {a100: 3.0}\nregion: x\n")
    with pytest.raises(SpecError, match=r"pricing.file \(.*prices.yaml\): region: unknown key"):
        load_job(tmp_path / "job.yaml")


def test_prices_are_not_part_of_the_run_identity() -> None:
    base = {"name": "x", "manifest": {"uri": "m.csv"}, "output": {"uri": "o"},
            "prompt": {"template": "a {{ sku }}"},
            "stages": [{"kind": "generate", "model": "synthetic"}]}
    assert (parse_job(base).spec_hash
            == parse_job({**base, "pricing": {"gpu": "a100"}}).spec_hash)


def test_plan_from_a_committed_run(tmp_path) -> None:
    job = _job(tmp_path)
    store = Store(str(tmp_path / "out"))
    _commit(job, store, "r1", wall_s=200.0)
    info, tally = count_work(job)
    assert info.rows == 12 and tally == {"ok": 12}  # the recorder wrote no assets
    calibration = calibrate(store, job)
    ok_ms = [1000.0 / 3 * i for i in range(1, 13) if i not in (5, 7)]
    assert calibration.rates["generate"].seconds == pytest.approx(
        (sum(ok_ms) + 1000.0 / 3 * 5) / 11 / 1000)  # the failed row ran generate
    assert calibration.rates["recolor"].assets == 10
    plan = predict(job, calibration, rows=12, rejected=0, existing=0, to_render=24)
    gen = plan.stages[0]
    assert gen.busy_s == pytest.approx(24 * calibration.rates["generate"].seconds)
    assert gen.gpu_hours == pytest.approx(gen.busy_s * 0.5 / 3600)
    assert gen.usd == pytest.approx((gen.busy_s * 0.5 * 0.8 + gen.busy_s * 0.04) / 3600,
                                    abs=1e-9)
    assert plan.usd == pytest.approx(sum(s.usd for s in plan.stages))
    # one whole-chain run: its wall time beyond the slowest pool is the fixed part
    slowest = max(calibration.rates["generate"].seconds,
                  calibration.rates["recolor"].seconds + calibration.rates["identity"].seconds)
    fixed = 200.0 - 11 * slowest
    assert fixed > 0
    assert plan.wall_s == pytest.approx(fixed + 24 * slowest)
    # a second run of another size: the wall time is the line through both
    _commit(job, store, "r2", n=6, wall_s=140.0)
    two = predict(job, calibrate(store, job), rows=12, rejected=0, existing=0, to_render=16)
    assert two.wall_s == pytest.approx(200.0 + (16 - 11) * (200.0 - 140.0) / (11 - 6))


def test_plan_command_prints_stages_and_totals(tmp_path) -> None:
    job = _job(tmp_path)
    _commit(job, Store(str(tmp_path / "out")), "r1")
    out = CliRunner().invoke(main, ["plan", str(tmp_path / "job.yaml"), "--probe", "0",
                                    "--output", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    assert "12 rows: 0 rejected, 0 already in the store, 12 to render" in out.output
    assert [line.split()[0] for line in out.output.splitlines()[2:6]] == [*STAGES, "total"]
    assert "calibrated from runs: r1" in out.output
    empty = CliRunner().invoke(main, ["plan", str(tmp_path / "job.yaml"), "--probe", "0",
                                      "--output", str(tmp_path / "elsewhere")])
    assert empty.exit_code == 2 and "run with --probe N" in empty.output


@pytest.mark.parametrize("ms, units", [({}, {}), ({"generate": None, "recolor": 0.0}, {}),
                                       ({"generate": 0.0}, {"edit": None}),
                                       ({"generate": 12.5}, {}), ({}, {"edit": 3.0})])
def test_a_row_no_stage_rendered_prices_exactly_as_one_priced_stage_by_stage(ms, units) -> None:
    """Rows found in the store (most of a refresh) take the priced-once zero row: the same
    columns, values and decimal exponents as pricing them stage by stage."""
    from factory.spec.prices import StageShare

    shares = (StageShare("generate", "generate/sd-tiny", 0.5, 1.0),
              StageShare("recolor", "recolor/lab", 0.0, 2.0),
              StageShare("edit", "edit/hosted", 0.0, 0.0, 0.04))
    model = CostModel(Prices(gpu="l4", usd_per_hour={**DEFAULT_USD_PER_HOUR, "l4": 0.8}),
                      shares)
    fast, slow = model.row(ms, units), model._priced(ms, units)
    assert fast == slow and [str(v) for v in fast.values()] == [str(v) for v in slow.values()]
    fast["cost_usd"] = Decimal(1)  # a caller's copy: the next row's columns are untouched
    assert model.row({}, {})["cost_usd"] == 0
