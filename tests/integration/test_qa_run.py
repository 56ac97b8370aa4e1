"""The brand QA gate end to end (``factory.spec.qa``), on a local Ray, through the CLI.

A gate no image can pass (ΔE to the palette at most -1) makes every rendered row go through
all its retries, deterministically: each is rendered ``retries + 1`` times with a new seed per
attempt, then written and flagged ``review``; its retries' dollars are in its lineage row and
the run's totals; the accounting stays exact and the store holds one asset per row.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.cli.main import main
from factory.catalog.demo import write_catalog
from factory.spec.qa import retry_seed
from factory.run.rows import derive_seed
from factory.store.run_tables import read_lineage
from factory.store.storage import Store

pytestmark = pytest.mark.integration
RETRIES = 2
FAIL = "SKU-00002"


def spec(tmp: Path, catalog: Path, output: Path, *, cpu_usd_per_hour: float = 0.06) -> Path:
    path = tmp / "qa.yaml"
    path.write_text(f"""
name: qa-gate
manifest: {{uri: "{catalog}"}}
output: {{uri: "{output}"}}
seed: 5
prompt: {{template: "a {{{{ color }}}} {{{{ title }}}}"}}
pricing: {{usd_per_hour: {{cpu: {cpu_usd_per_hour}}}}}
stages:
  - {{kind: generate, model: synthetic, params: {{width: 32, height: 32}}}}
  - {{kind: recolor, model: lab, params: {{palette: ["#C8553D"]}}}}
  - {{kind: identity, model: passthrough, params: {{fail_skus: ["{FAIL}"]}}}}
qa:
  retries: {RETRIES}
  thresholds: {{delta_e_after: {{max: -1}}}}
""")
    return path


def test_rows_outside_the_gate_are_retried_then_flagged_review(local_ray, tmp_path) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", 30)  # two rows are bad on purpose
    out = tmp_path / "out"
    job = spec(tmp_path, catalog, out)
    run = CliRunner().invoke(main, ["run", str(job), "--run-id", "qa1", "--no-dashboard"],
                             catch_exceptions=False)
    assert "qa gate: 27 assets flagged review after 54 re-renders" in run.output, run.output

    store = Store(str(out))
    lineage, summary = read_lineage(store, "qa1")
    rows = lineage.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    # exact accounting: assets + failed + rejected = manifest rows; no retry left a row behind
    assert summary["assets"] + summary["failed"] + summary["rejected"] == 30
    assert (len(ok), len(failed), summary["rejected"]) == (27, 1, 2)
    assert sorted(r["row"] for r in rows) == sorted({r["row"] for r in rows})
    for r in ok:  # every render outside the gate: all retries, then review
        assert (r["qa"], r["qa_attempts"]) == ("review", RETRIES + 1)
        assert r["qa_reason"].startswith("delta_e_after ") and r["qa_reason"].endswith("> max -1")
        assert r["qa_retry_usd"] > 0 and r["cost_usd"] > 0
    # the failing SKU fails in its first render: a failure, not retried
    assert failed[0]["sku"] == FAIL and failed[0]["qa_attempts"] == 1
    assert failed[0]["qa_retry_usd"] == 0
    # each attempt a new derived seed, and the key follows the seed
    first = next(r for r in ok if r["sku"] == "SKU-00000")
    seed = derive_seed(5, "SKU-00000", "default")
    for attempt in range(2, RETRIES + 2):
        seed = retry_seed(seed, attempt)
    assert first["seed"] == seed
    # ...but the key is the row's own (its first seed, under the gated chain): a later run of
    # the job finds every retried asset and renders nothing again
    from factory.run.pipeline import fingerprint
    from factory.spec.job import load_job, parse_job

    gated = load_job(job)
    data = yaml.safe_load(job.read_text(encoding="utf-8"))
    del data["qa"]  # the gate is in the key: the same chain without it keys apart
    assert fingerprint(parse_job(data)) != fingerprint(gated)
    # retries are counted: in the summary, and in the run's dollars (rows' + retries' exactly)
    retry_usd = sum((r["qa_retry_usd"] or Decimal(0) for r in rows), Decimal(0))
    assets_usd = sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0))
    assert summary["qa"] == {"review": 27, "retries": 54, "retry_usd": float(retry_usd)}
    assert Decimal(repr(summary["cost_usd"])) == assets_usd + retry_usd
    # a failed attempt writes no image: one asset per asset row, each the lineage's key
    stored = sorted(str(p.relative_to(out)) for p in (out / "assets").rglob("*.png"))
    assert stored == sorted(r["output_key"] for r in ok)

    again = CliRunner().invoke(main, ["run", str(job), "--run-id", "qa2", "--no-dashboard"],
                               catch_exceptions=False)
    assert "30 rows: 2 rejected, 27 already in the store, 1 to render" in again.output, \
        again.output
    rerun, rerun_summary = read_lineage(store, "qa2")
    found = [r for r in rerun.to_pylist() if r["status"] == "ok"]
    assert sorted(r["output_key"] for r in found) == stored and not any(
        r["written"] for r in found)
    assert rerun_summary["qa"]["retries"] == 0  # only the failing SKU rendered, and failed
    assert sorted(str(p.relative_to(out)) for p in (out / "assets").rglob("*.png")) == stored

    show = CliRunner().invoke(main, ["runs", "show", "qa1", "--output", str(out)])
    assert "qa             27 assets flagged review after 54 re-renders" in show.output
    assert f"review  row 1      SKU-00000                [{RETRIES + 1} renders] delta_e_after" \
        in show.output
    report = (out / "runs" / "qa1" / "report.html").read_text(encoding="utf-8")
    assert 'data-qa="review"' in report and '<option value="review">' in report


def test_a_budget_refuses_re_renders_it_cannot_cover(local_ray, tmp_path) -> None:
    """A budget and a gate together: a re-render is admitted by the budget like a row. With a
    nano-dollar, only the first block renders (unpriced, the run's probe) and none of its
    re-renders fits: each rendered row keeps its one render, written and flagged review with
    the budget as its reason; no retry is paid for, and the outcomes stay exact."""
    from factory.run.pipeline import block_rows
    from factory.spec.job import load_job
    from factory.spec.qa import BUDGET_REASON

    catalog = write_catalog(tmp_path / "catalog.csv", 30)  # rows 11 and 21 are rejected
    out = tmp_path / "out"
    job = spec(tmp_path, catalog, out, cpu_usd_per_hour=3600)  # every render costs > $1e-9
    block = block_rows(load_job(job))
    assert 3 <= block < 11  # the first block holds the failing SKU and no rejected row
    run = CliRunner().invoke(main, ["run", str(job), "--run-id", "qa-budget", "--no-dashboard",
                                    "--budget", "0.000000001"], catch_exceptions=False)
    lineage, summary = read_lineage(Store(str(out)), "qa-budget")
    rows = lineage.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["row"] for r in ok) == [r for r in range(1, block + 1) if r != 3], run.output
    for r in ok:
        assert (r["qa"], r["qa_attempts"]) == ("review", 1)
        assert r["qa_reason"].startswith("delta_e_after ") and r["qa_reason"].endswith(
            BUDGET_REASON)
        assert r["qa_retry_usd"] == 0 and r["cost_usd"] > 0
    assert summary["qa"]["retries"] == 0 and summary["qa"]["retry_usd"] == 0
    assert summary["budget"]["retries_refused"] == len(ok)
    assert f"{len(ok)} QA re-renders past it not run" in run.output
    # what the run spent is its first renders' (the probe's overshoot), no re-render's
    assets_usd = sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0))
    assert Decimal(repr(summary["cost_usd"])) == assets_usd
    assert (summary["assets"], summary["failed"], summary["rejected"], summary["deferred"]) == (
        block - 1, 1, 2, 30 - block - 2)
    deferred = [r for r in rows if r["status"] == "deferred"]
    assert all(not r["output_key"] and r["qa_attempts"] in (None, 0) for r in deferred)
    stored = sorted(str(p.relative_to(out)) for p in (out / "assets").rglob("*.png"))
    assert stored == sorted(r["output_key"] for r in ok)  # each kept render written once
