"""Cost in a real run's lineage, and ``factory plan`` calibrated from that run (local Ray).

Timing-based figures are asserted loosely (a loaded 2-core machine): structure and arithmetic
here; the plan's accuracy is ``benchmarks/plan_accuracy.py``'s.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.main import main
from factory.catalog.demo import write_catalog
from factory.store.run_tables import read_lineage
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration
STAGES = ("generate", "recolor", "identity")


def spec(catalog: Path, output: Path) -> dict:
    return {"name": "costed", "manifest": {"uri": str(catalog)}, "output": {"uri": str(output)},
            "prompt": {"template": "a {{ color }} {{ title }}"},
            "pricing": {"gpu": "a100", "usd_per_hour": {"cpu": 0.06}},
            "stages": [{"kind": "generate", "model": "synthetic",
                        "params": {"width": 32, "height": 32}},
                       {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]},
                        "resources": {"num_cpus": 0.5}},
                       {"kind": "identity", "model": "passthrough"}]}


def test_run_costs_add_up_and_the_plan_reads_them(local_ray, tmp_path) -> None:
    from factory.run.pipeline import run_job

    catalog = write_catalog(tmp_path / "catalog.csv", 16, bad_rows=False)
    job = parse_job(spec(catalog, tmp_path / "out"))
    result = run_job(job)
    lineage, summary = read_lineage(Store(str(tmp_path / "out")), result.run_id)
    rows = lineage.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    chain_cpus = max(p.resources.num_cpus for p in job.stages)
    assert ok and all(r["cost_usd"] > 0 for r in ok)
    for r in rows:
        assert r["cost_usd"] == sum((r[f"usd_{s}"] for s in STAGES), Decimal(0))
        assert r["gpu_s_generate"] == 0.0  # no GPU reserved: CPU seconds only
        # one fused actor: every stage is charged the CPUs that actor reserved
        assert r["cpu_s_recolor"] == pytest.approx(r["ms_recolor"] / 1000 * chain_cpus)
    cost = summary["cost"]
    assert cost["gpu"] == "a100" and cost["usd_per_hour"]["cpu"] == 0.06
    for s in STAGES:
        assert Decimal(repr(cost["stages"][s]["usd"])) == sum((r[f"usd_{s}"] for r in rows),
                                                              Decimal(0))
    assert Decimal(repr(summary["cost_usd"])) == sum((r["cost_usd"] for r in rows), Decimal(0))
    assert result.summary()["cost_usd"] == summary["cost_usd"]

    # the plan for a larger catalog into the same store: its first 16 rows are there already
    bigger = write_catalog(tmp_path / "bigger.csv", 32, bad_rows=False)
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec(bigger, tmp_path / "out")))
    out = CliRunner().invoke(main, ["plan", str(spec_path), "--probe", "0", "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["rows"] == 32 and plan["existing"] == len(ok)
    assert plan["to_render"] == 32 - plan["existing"] - plan["rejected"]
    assert plan["calibrated_from"] == [result.run_id]
    measured = {s: sum(r[f"ms_{s}"] for r in ok) / len(ok) / 1000 for s in STAGES}
    for line in plan["stages"]:
        assert line["seconds_per_asset"] == pytest.approx(measured[line["name"]])
        assert line["busy_s"] == pytest.approx(line["seconds_per_asset"] * plan["to_render"])
    assert plan["usd"] == pytest.approx(sum(s["usd"] for s in plan["stages"]))
    # loose: within a factor of 3 of the calibration run's own wall time per asset, scaled
    per_asset = summary["wall_s"] / len(ok)
    assert per_asset * plan["to_render"] / 3 < plan["wall_s"] < summary["wall_s"] * 3


def test_plan_probes_when_no_run_calibrates_the_chain(local_ray, tmp_path) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", 12, bad_rows=False)
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec(catalog, tmp_path / "out")))
    out = CliRunner().invoke(main, ["plan", str(spec_path), "--probe", "4", "--json"])
    assert out.exit_code == 0, out.output
    assert "probing 4 rows" in out.stderr
    plan = json.loads(out.stdout[out.stdout.index("{"):])
    assert plan["to_render"] == 12 and plan["calibrated_from"] == ["probe"]
    assert all(s["seconds_per_asset"] > 0 for s in plan["stages"])
    assert not (tmp_path / "out").exists()  # the probe ran in a scratch store, not the job's
