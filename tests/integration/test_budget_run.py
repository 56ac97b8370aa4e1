"""A budget cap end to end through the CLI on a local Ray (``factory.cost.budget``): the run stops
admitting rows at its budget and commits the rest as ``deferred``, the accounting stays exact
with four outcomes, and a rerun with a larger budget renders exactly what was left."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.exits import EXIT_PARTIAL
from factory.cli.main import main
from factory.catalog.demo import write_catalog
from factory.store.run_tables import list_runs, read_lineage, read_rejects
from factory.store.storage import Store

pytestmark = pytest.mark.integration

ROWS, BLOCK = 32, 4  # blocks of 4 rows (both stages take batches of 4)
FAIL = "SKU-00001"  # row 2, in the first block


def job_spec(tmp: Path, catalog: Path) -> Path:
    spec = tmp / "capped.yaml"
    spec.write_text(f"""
name: capped
manifest: {{uri: "{catalog}"}}
output: {{uri: "{tmp / 'unused'}"}}
prompt: {{template: "a {{{{ color }}}} {{{{ title }}}}"}}
pricing: {{usd_per_hour: {{cpu: 3600}}}}  # a dollar per CPU-second: costs well above a nano-dollar
stages:
  - kind: generate
    model: synthetic
    params: {{width: 32, height: 32}}
    resources: {{batch_size: {BLOCK}}}
  - kind: identity
    model: passthrough
    params: {{fail_skus: ["{FAIL}"]}}
    resources: {{batch_size: {BLOCK}}}
""")
    return spec


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def by_status(lineage) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for row in lineage.to_pylist():
        out.setdefault(row["status"], set()).add(row["row"])
    return out


def asset_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in (out / "assets").rglob("*") if p.is_file()}


def test_a_budget_defers_the_rest_and_a_larger_one_renders_exactly_that(tmp_path, local_ray):
    catalog = write_catalog(tmp_path / "catalog.csv", ROWS)  # rows 11, 21, 31 are rejected
    spec, out = job_spec(tmp_path, catalog), tmp_path / "out"
    store = Store(str(out))

    # a nano-dollar: no row fits, but with no earlier run to price a row the first block is
    # admitted unpriced (the documented overshoot), and every later row is deferred
    first = run_cli("run", str(spec), "--output", str(out), "--budget", "0.000000001")
    assert first.exit_code == EXIT_PARTIAL, first.output
    assert "deferred" in first.output and "budget:" in first.output
    (run1, s1), = list_runs(store)
    lineage1, _ = read_lineage(store, run1)
    rejected = set(read_rejects(store, run1)["row"].to_pylist())
    fates = by_status(lineage1)
    assert rejected == {11, 21, 31}
    assert fates["ok"] | fates["failed"] == set(range(1, BLOCK + 1)) and fates["failed"] == {2}
    assert fates["deferred"] == set(range(BLOCK + 1, ROWS + 1)) - rejected
    # four outcomes, each row exactly once
    assert (s1["assets"], s1["failed"], s1["rejected"], s1["deferred"]) == (3, 1, 3, 25)
    assert s1["assets"] + s1["failed"] + s1["rejected"] + s1["deferred"] == ROWS
    assert sorted(lineage1["row"].to_pylist() + sorted(rejected)) == list(range(1, ROWS + 1))
    # a deferred row: no stage ran it, no key, nothing in the store, no dollars
    deferred = [r for r in lineage1.to_pylist() if r["status"] == "deferred"]
    assert all(not r["output_key"] and not r["generate_placement"] and r["cost_usd"] == 0
               for r in deferred)
    assert len(asset_files(out)) == 3
    # dollars: spent is the first block's, over the budget by at most that block
    spent = Decimal(repr(s1["cost_usd"]))
    assert spent == sum((r["cost_usd"] for r in lineage1.to_pylist()), Decimal(0)) > 0
    assert s1["budget"]["usd"] == 1e-9 and s1["budget"]["exhausted"]
    assert s1["inputs"]["budget_usd"] == "0.000000001"

    # the same budget is the same run: already committed, nothing rendered
    again = run_cli("run", str(spec), "--output", str(out), "--budget", "1e-9")
    assert "already committed" in again.output and len(list_runs(store)) == 1

    # a larger budget is a new run: it renders the deferred rows (and the failed one again)
    second = run_cli("run", str(spec), "--output", str(out), "--budget", "1000")
    assert second.exit_code == EXIT_PARTIAL, second.output  # the injected failure remains
    run2 = next(r for r, _ in list_runs(store) if r != run1)
    lineage2, s2 = read_lineage(store, run2)
    rendered = {r["row"] for r in lineage2.to_pylist() if r["generate_placement"]}
    assert rendered == fates["deferred"] | fates["failed"]
    written = {r["row"] for r in lineage2.to_pylist() if r["written"]}
    assert written == fates["deferred"]  # no new asset for a row finished before
    assert (s2["assets"], s2["failed"], s2["rejected"], s2["deferred"]) == (28, 1, 3, 0)
    assert len(asset_files(out)) == 28
    assert not s2["budget"]["exhausted"]
    assert Decimal(repr(s2["cost_usd"])) <= Decimal(1000)
