"""End to end through the CLI on a local Ray: exact SKU accounting, isolation, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from factory.cli.exits import EXIT_PARTIAL
from factory.cli.main import main
from factory.catalog.demo import write_catalog
from factory.store.run_tables import read_lineage, read_rejects
from factory.store.storage import Store

pytestmark = pytest.mark.integration

FAIL = ("SKU-00004", "SKU-00017")


def job_spec(tmp_path: Path, catalog: Path, output: Path, name: str = "it") -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"""
name: {name}
manifest: {{uri: "{catalog}"}}
output: {{uri: "{output}"}}
seed: 99
variant: hero
prompt: {{template: "photo of a {{{{ color }}}} {{{{ title }}}}", negative: "blurry"}}
stages:
  - kind: generate
    model: sd-tiny
    params: {{width: 32, height: 32, steps: 2, guidance: 1.5}}
    resources: {{batch_size: 8}}
  - kind: recolor
    model: lab
    params: {{palette: ["#C8553D", "#2D3047"], strength: 0.7}}
  - kind: identity
    model: passthrough
    params: {{fail_skus: {list(FAIL)}}}
    resources: {{batch_size: 8}}
""")
    return spec


def run_cli(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, models_dir, local_ray):
    tmp = tmp_path_factory.mktemp("e2e")
    catalog = write_catalog(tmp / "catalog.csv", 50)  # rows 11, 21, 31 are bad on purpose
    out = tmp / "out"
    spec = job_spec(tmp, catalog, out)
    result = run_cli("run", str(spec), "--run-id", "r1")
    return tmp, catalog, spec, out, result


def test_exact_sku_accounting(first_run):
    _, _, _, out, result = first_run
    assert result.exit_code == EXIT_PARTIAL, result.output
    store = Store(str(out))
    lineage, summary = read_lineage(store, "r1")
    rejects = read_rejects(store, "r1")
    ok = lineage.filter(pc.equal(lineage["status"], "ok"))
    failed = lineage.filter(pc.equal(lineage["status"], "failed"))
    assert (ok.num_rows, failed.num_rows, rejects.num_rows) == (45, 2, 3)
    assert ok.num_rows + failed.num_rows + rejects.num_rows == 50
    rows = sorted(lineage["row"].to_pylist() + rejects["row"].to_pylist())
    assert rows == list(range(1, 51))  # every row exactly once
    assert summary["assets"] == 45 and summary["manifest_rows"] == 50
    assert sorted(rejects["row"].to_pylist()) == [11, 21, 31]
    assert set(rejects["field"].to_pylist()) == {"sku", "seed", "palette"}


def test_forced_failure_leaves_batch_mates_as_assets(first_run):
    _, _, _, out, _ = first_run
    lineage, _ = read_lineage(Store(str(out)), "r1")
    by_sku = {r["sku"]: r for r in lineage.to_pylist()}
    for sku in FAIL:
        assert by_sku[sku]["status"] == "failed" and by_sku[sku]["failed_stage"] == "identity"
        assert "injected failure" in by_sku[sku]["error"] and by_sku[sku]["output_key"] == ""
    # the failing SKUs' batch-mates (same batch of 8) are assets
    for sku in ("SKU-00003", "SKU-00005", "SKU-00016", "SKU-00018"):
        assert by_sku[sku]["status"] == "ok"


def test_assets_match_lineage_and_nothing_else_was_written(first_run):
    _, _, _, out, _ = first_run
    lineage, _ = read_lineage(Store(str(out)), "r1")
    ok = [r for r in lineage.to_pylist() if r["status"] == "ok"]
    files = sorted(str(p.relative_to(out)) for p in (out / "assets").rglob("*") if p.is_file())
    assert files == sorted(r["output_key"] for r in ok)
    for r in ok:
        data = (out / r["output_key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        assert r["ms_generate"] > 0 and r["delta_e_after"] < r["delta_e_before"]
        assert r["generate_model"] == "generate/sd-tiny"


def test_two_runs_of_one_job_give_identical_bytes(first_run):
    tmp, catalog, _, out, _ = first_run
    out2 = tmp / "out2"
    result = run_cli("run", str(job_spec(tmp, catalog, out2, name="it2")), "--run-id", "r2")
    assert result.exit_code == EXIT_PARTIAL, result.output
    a, _ = read_lineage(Store(str(out)), "r1")
    b, _ = read_lineage(Store(str(out2)), "r2")
    keys_a = sorted(k for k in a["output_key"].to_pylist() if k)
    keys_b = sorted(k for k in b["output_key"].to_pylist() if k)
    assert keys_a == keys_b and len(keys_a) == 45
    for key in keys_a:
        assert (out / key).read_bytes() == (out2 / key).read_bytes(), key


def test_rerun_into_the_same_output_writes_nothing_new(first_run):
    _, _, spec, out, _ = first_run
    before = {p: p.stat().st_mtime_ns for p in (out / "assets").rglob("*.png")}
    result = run_cli("run", str(spec), "--run-id", "r3")
    assert result.exit_code == EXIT_PARTIAL
    lineage, summary = read_lineage(Store(str(out)), "r3")
    assert summary["written"] == 0 and summary["assets"] == 45
    assert {p: p.stat().st_mtime_ns for p in (out / "assets").rglob("*.png")} == before


def test_limit_runs_only_the_first_rows(first_run, tmp_path):
    _, catalog, _, _, _ = first_run
    out = tmp_path / "limited"
    result = run_cli("run", str(job_spec(tmp_path, catalog, out, name="lim")), "--limit", "12",
                     "--run-id", "lim")
    assert result.exit_code == EXIT_PARTIAL  # row 11 is bad
    _, summary = read_lineage(Store(str(out)), "lim")
    assert summary["manifest_rows"] == 12 and summary["assets"] + summary["failed"] == 11


def test_empty_manifest_is_a_clear_error(tmp_path, local_ray, models_dir):
    catalog = tmp_path / "empty.csv"
    catalog.write_text("sku,title,color\n")
    result = run_cli("run", str(job_spec(tmp_path, catalog, tmp_path / "o")))
    assert result.exit_code == 3
    assert "no data rows" in result.output and str(catalog) in result.output
    assert not (tmp_path / "o" / "runs").exists() or not any((tmp_path / "o" / "runs").rglob("lineage.parquet"))


def test_a_job_the_cluster_cannot_hold_fails_fast(tmp_path, local_ray, models_dir):
    catalog = write_catalog(tmp_path / "c.csv", 10)
    spec = tmp_path / "big.yaml"
    spec.write_text(job_spec(tmp_path, catalog, tmp_path / "o").read_text().replace(
        "resources: {batch_size: 8}\n  - kind: recolor",
        "resources: {batch_size: 8, num_cpus: 64, num_gpus: 2}\n  - kind: recolor", 1))
    result = run_cli("run", str(spec))
    assert result.exit_code == 4
    assert "needs 6" in result.output and "GPUs, the cluster has 0" in result.output
    assert not (tmp_path / "o" / "runs").exists()  # nothing started, nothing written


def test_two_runs_of_the_same_job_at_once_give_one_result(tmp_path, local_ray, models_dir):
    import threading

    from factory.run.pipeline import run_job
    from factory.spec.job import load_job

    catalog = write_catalog(tmp_path / "c.csv", 40)
    out = tmp_path / "o"
    job = load_job(job_spec(tmp_path, catalog, out, name="twin")).with_overrides(run_id="twin")
    results, errors = [], []

    def go():
        try:
            results.append(run_job(job))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    lineage, summary = read_lineage(Store(str(out)), "twin")
    ok = [r for r in lineage.to_pylist() if r["status"] == "ok"]
    assert summary["assets"] == len(ok) == 35 and summary["failed"] == 2
    files = sorted(str(p.relative_to(out)) for p in (out / "assets").rglob("*") if p.is_file())
    assert files == sorted(r["output_key"] for r in ok)  # one object per asset, nothing else
    # one run committed; the other found it committed (before or at its own create-only
    # commit) and reports the winner's figures instead of overwriting them
    assert sorted(r.already_committed for r in results) == [False, True]
    assert [r.counts.assets for r in results] == [35, 35]
    assert len(list((out / "runs" / "twin").glob("lineage*"))) == 1


def test_two_scheduled_runs_of_one_job_at_once_commit_the_same_assets(tmp_path, local_ray,
                                                                       models_dir):
    """``overlap: allow``: two slots' runs at once, each under its slot's run id, both commit;
    the assets are content-addressed, so both name the same keys and each is written once."""
    import threading
    from datetime import datetime, timezone

    from factory.deploy.schedule import run_id_for
    from factory.run.pipeline import run_job
    from factory.spec.job import load_job

    catalog = write_catalog(tmp_path / "c.csv", 12)  # no bad rows below 30; one injected failure
    out = tmp_path / "o"
    job = load_job(job_spec(tmp_path, catalog, out, name="slots"))
    run_ids = [run_id_for("slots", "hourly", datetime(2025, 3, 1, h, tzinfo=timezone.utc))
               for h in (11, 12)]
    results, errors = {}, []

    def go(run_id: str) -> None:
        try:
            results[run_id] = run_job(job.with_overrides(run_id=run_id))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(rid,)) for rid in run_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert [results[rid].already_committed for rid in run_ids] == [False, False]  # both commit
    keys = []
    for rid in run_ids:
        lineage, summary = read_lineage(Store(str(out)), rid)
        keys.append(sorted(r["output_key"] for r in lineage.to_pylist() if r["status"] == "ok"))
        assert summary["assets"] == 11
    assert keys[0] == keys[1] and len(keys[0]) == 11
    files = sorted(str(p.relative_to(out)) for p in (out / "assets").rglob("*") if p.is_file())
    assert files == keys[0]  # one object per asset
    assert sum(results[rid].counts.written for rid in run_ids) == 11  # create-only: one writer
