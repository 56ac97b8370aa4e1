"""What a run is, on the path a user takes: no --run-id, the CLI, a local Ray.

A trial run with --limit never blocks the full run; an edited catalog makes a new run that
renders only the changed rows; an explicit run id with other inputs is an error naming the
difference; variants of one SKU are separate assets.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.exits import EXIT_NO_RUN, EXIT_PARTIAL, EXIT_SPEC
from factory.cli.main import main
from factory.catalog.demo import write_catalog
from factory.store.run_tables import list_runs, read_lineage, read_rejects
from factory.store.storage import Store

pytestmark = pytest.mark.integration


def write_spec(tmp_path: Path, catalog: Path, out: Path, name: str = "trial") -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"""
name: {name}
manifest: {{uri: "{catalog}"}}
output: {{uri: "{out}"}}
seed: 3
variant: hero
prompt: {{template: "a {{{{ color }}}} {{{{ title }}}}"}}
stages:
  - {{kind: generate, model: synthetic, params: {{width: 16, height: 16}}, resources: {{batch_size: 8}}}}
  - {{kind: recolor, model: lab, params: {{palette: ["#C8553D"]}}, resources: {{batch_size: 8}}}}
""")
    return spec


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def committed(out: Path) -> dict[str, dict]:
    return dict(list_runs(Store(str(out))))


def rendered(out: Path, run_id: str) -> set[tuple[str, str]]:
    """(sku, variant) pairs a stage actually processed in this run."""
    lineage, _ = read_lineage(Store(str(out)), run_id)
    return {(r["sku"], r["variant"]) for r in lineage.to_pylist() if r["generate_placement"]}


def edit_colour(catalog: Path, skus: set[str], colour: str) -> None:
    with catalog.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        if row[0] in skus:
            row[2] = colour
    with catalog.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def test_a_trial_run_then_the_full_run_renders_the_rest(tmp_path, local_ray):
    catalog = write_catalog(tmp_path / "catalog.csv", 40)  # rows 11, 21, 31 are bad
    out = tmp_path / "out"
    spec = write_spec(tmp_path, catalog, out)

    trial = cli("run", str(spec), "--limit", "12")
    assert trial.exit_code == EXIT_PARTIAL, trial.output  # row 11 is bad
    assert "plan for run trial-" in trial.output
    assert "12 rows: 1 rejected, 0 already in the store, 11 to render" in trial.output
    (trial_id, trial_summary), = committed(out).items()
    assert trial_summary["inputs"]["limit"] == 12 and trial_summary["manifest_rows"] == 12

    full = cli("run", str(spec))
    assert full.exit_code == EXIT_PARTIAL, full.output
    assert "40 rows: 3 rejected, 11 already in the store, 26 to render" in full.output
    runs = committed(out)
    (full_id,) = set(runs) - {trial_id}
    assert runs[full_id]["assets"] == 37 and runs[full_id]["written"] == 26
    assert runs[full_id]["inputs"]["limit"] is None
    lineage, _ = read_lineage(Store(str(out)), full_id)
    first_eleven = {r["sku"] for r in lineage.to_pylist() if r["row"] <= 12}
    assert len(first_eleven) == 11
    assert {s for s, _ in rendered(out, full_id)}.isdisjoint(first_eleven)  # not rendered again
    assert len(rendered(out, full_id)) == 26

    again = cli("run", str(spec))  # same inputs: the same run, already committed
    assert again.exit_code == EXIT_PARTIAL
    assert f"run {full_id} was already committed from the same inputs" in again.output
    assert set(committed(out)) == {trial_id, full_id}


def test_an_edited_catalog_re_renders_only_the_changed_rows(tmp_path, local_ray):
    catalog = write_catalog(tmp_path / "catalog.csv", 60, bad_rows=False)
    out = tmp_path / "out"
    spec = write_spec(tmp_path, catalog, out, name="edit")
    assert cli("run", str(spec)).exit_code == 0
    (before,) = committed(out)
    changed = {"SKU-00005", "SKU-00042"}
    edit_colour(catalog, changed, "ultraviolet")
    result = cli("run", str(spec))
    assert result.exit_code == 0, result.output
    assert "60 rows: 0 rejected, 58 already in the store, 2 to render" in result.output
    (after,) = set(committed(out)) - {before}
    assert rendered(out, after) == {(sku, "hero") for sku in changed}


def test_an_explicit_run_id_with_other_inputs_is_an_error_naming_them(tmp_path, local_ray):
    catalog = write_catalog(tmp_path / "catalog.csv", 20, bad_rows=False)
    out = tmp_path / "out"
    spec = write_spec(tmp_path, catalog, out, name="pinned")
    assert cli("run", str(spec), "--run-id", "fixed").exit_code == 0
    lineage_before = (out / "runs" / "fixed" / "lineage.parquet").read_bytes()

    limited = cli("run", str(spec), "--run-id", "fixed", "--limit", "5")
    assert limited.exit_code == EXIT_SPEC
    assert "run 'fixed' is already committed from other inputs" in limited.output
    assert "--limit none then, 5 now" in limited.output

    edit_colour(catalog, {"SKU-00003"}, "ultraviolet")
    edited = cli("run", str(spec), "--run-id", "fixed")
    assert edited.exit_code == EXIT_SPEC and "manifest content" in edited.output
    assert (out / "runs" / "fixed" / "lineage.parquet").read_bytes() == lineage_before

    same = cli("run", str(spec), "--run-id", "fixed2")  # a new id renders only the change
    assert same.exit_code == 0 and "19 already in the store, 1 to render" in same.output


def test_three_variants_of_one_sku_are_three_assets(tmp_path, local_ray):
    catalog = tmp_path / "variants.csv"
    catalog.write_text("sku,variant,title,color\n"
                       "TEE-1,hero,t-shirt,red\nTEE-1,thumb,t-shirt,red\n"
                       "TEE-1,lifestyle,t-shirt,red\nTEE-2,,t-shirt,blue\n"
                       "TEE-1,thumb,t-shirt,red\n")  # an identical repeat of row 2
    out = tmp_path / "out"
    result = cli("run", str(write_spec(tmp_path, catalog, out, name="variants")))
    assert result.exit_code == EXIT_PARTIAL, result.output
    (run_id,) = committed(out)
    lineage, summary = read_lineage(Store(str(out)), run_id)
    rows = {(r["sku"], r["variant"]): r for r in lineage.to_pylist()}
    assert set(rows) == {("TEE-1", "hero"), ("TEE-1", "thumb"), ("TEE-1", "lifestyle"),
                         ("TEE-2", "hero")}
    assert summary["assets"] == 4 and all(r["status"] == "ok" for r in rows.values())
    keys = {r["output_key"] for r in rows.values()}
    assert len(keys) == 4 and all((out / k).is_file() for k in keys)
    assert len({r["seed"] for r in rows.values()}) == 4  # each variant its own seed
    rejects = read_rejects(Store(str(out)), run_id).to_pylist()
    assert [(r["row"], r["sku"]) for r in rejects] == [(5, "TEE-1")]
    assert "duplicate of row 2" in rejects[0]["reason"]


def test_runs_show_of_an_unknown_run_has_its_own_exit_code(tmp_path):
    (tmp_path / "runs" / "half").mkdir(parents=True)  # started, never committed
    for run_id in ("nope", "half"):
        result = cli("runs", "show", run_id, "--output", str(tmp_path))
        assert result.exit_code == EXIT_NO_RUN and "not committed" in result.output
