"""Resume after a killed driver, incremental refresh, and season switches, on a local Ray."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.catalog.demo import write_catalog
from factory.cli.exits import EXIT_PARTIAL
from factory.cli.main import main
from factory.store.run_tables import read_lineage, read_rejects
from factory.spec.job import parse_job
from factory.store.storage import Store
from tests.support.process_tree import kill_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def spec_dict(catalog: Path, out: Path, **extra) -> dict:
    spec = {"name": "refresh-job", "manifest": {"uri": str(catalog)},
            "output": {"uri": str(out)}, "seed": 21,
            "prompt": {"template": "a {{ color }} {{ title }}"},
            "stages": [{"kind": "generate", "model": "synthetic",
                        "params": {"width": 16, "height": 16},
                        "resources": {"batch_size": 64}}]}
    spec.update(extra)
    return spec


def rendered(lineage) -> set[str]:
    """SKUs a stage actually processed in this run (a model call was made for them)."""
    return {r["sku"] for r in lineage.to_pylist() if r["generate_placement"]}


def rewrite(catalog: Path, change) -> None:
    with catalog.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows = change(rows)
    with catalog.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def test_refresh_renders_exactly_the_changed_skus(tmp_path, local_ray, models_dir):
    from factory.run.pipeline import run_job
    from factory.run.refresh import refresh

    catalog = write_catalog(tmp_path / "catalog.csv", 200, bad_rows=False)
    job = parse_job(spec_dict(catalog, tmp_path / "out"))
    full = run_job(job)
    assert full.counts.assets == 200

    changed = {f"SKU-{i:05d}" for i in range(0, 200, 20)}  # 5%: 10 SKUs

    def edit(rows):
        header, body = rows[0], rows[1:]
        colour = header.index("color")
        for row in body:
            if row[0] in changed:
                row[colour] = "ultraviolet"
        body = [r for r in body if r[0] not in ("SKU-00001", "SKU-00002")]  # removed
        body += [[f"NEW-{i}", "mug", "red", "ceramic", "kitchen", "", ""] for i in range(3)]
        return [header] + body

    rewrite(catalog, edit)
    report = refresh(parse_job(spec_dict(catalog, tmp_path / "out")))
    assert report.previous_run == full.run_id
    assert (report.changed, report.new, report.removed, report.unchanged) == (10, 3, 2, 188)
    lineage, _ = read_lineage(Store(str(tmp_path / "out")), report.result.run_id)
    assert rendered(lineage) == changed | {"NEW-0", "NEW-1", "NEW-2"}  # nothing else ran
    assert report.result.counts.written == 13 and report.result.counts.assets == 201
    # its report made thumbnails of the 13 new assets and links the full run's for the rest
    run_dir = tmp_path / "out" / "runs" / report.result.run_id
    assert len(list((run_dir / "thumbs").iterdir())) == 13
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert page.count(f'src="../../runs/{full.run_id}/thumbs/') == 188


def test_a_season_switch_re_renders_only_what_its_overlay_touches(tmp_path, local_ray,
                                                                  models_dir):
    from factory.run.pipeline import run_job
    from factory.run.refresh import refresh

    catalog = write_catalog(tmp_path / "catalog.csv", 300, bad_rows=False)
    seasons = [{"name": "winter", "start": "12-01", "end": "02-28",
                "prompt": "{% if category == 'outdoor' %}, in fresh snow{% endif %}"}]
    job = parse_job(spec_dict(catalog, tmp_path / "out", seasons=seasons))
    base = run_job(job.with_season("none"))
    assert base.counts.assets == 300
    with catalog.open(encoding="utf-8") as handle:
        outdoor = {r["sku"] for r in csv.DictReader(handle) if r["category"] == "outdoor"}
    assert 10 < len(outdoor) < 290
    winter = job.with_season("winter")
    assert winter.season == "winter"
    report = refresh(winter)
    assert report.result.run_id.startswith("refresh-job-winter-")
    assert report.result.run_id != base.run_id and report.previous_run == base.run_id
    assert (report.changed, report.unchanged, report.new, report.removed) == (
        len(outdoor), 300 - len(outdoor), 0, 0)
    lineage, summary = read_lineage(Store(str(tmp_path / "out")), report.result.run_id)
    assert rendered(lineage) == outdoor and summary["season"] == "winter"
    prompts = {r["sku"]: r["prompt"] for r in lineage.to_pylist()}
    assert all(prompts[s].endswith("in fresh snow") for s in outdoor)


def test_season_is_chosen_by_date(tmp_path):
    from datetime import date

    seasons = [{"name": "winter", "start": "12-01", "end": "02-28", "prompt": ", snowy"},
               {"name": "summer", "start": "06-01", "end": "08-31", "prompt": ", sunny",
                "palette": ["#FFD166"]}]
    spec = spec_dict(tmp_path / "c.csv", tmp_path / "o", seasons=seasons)
    spec["stages"].append({"kind": "recolor", "model": "lab", "params": {"palette": ["#000"]}})
    job = parse_job(spec)
    assert job.with_season(None, today=date(2026, 1, 15)).season == "winter"  # wraps the year
    summer = job.with_season(None, today=date(2026, 7, 4))
    assert summer.season == "summer" and summer.stages[1].params.palette == ("#FFD166",)
    assert job.with_season(None, today=date(2026, 4, 1)).season is None


def test_resume_after_the_driver_is_killed(tmp_path, local_ray, models_dir):
    """SIGKILL the driver mid-run, and the local Ray it started; run the same run id again
    (on this process's Ray): exact accounting, and the SKUs finished before the kill get no
    model call."""
    catalog = write_catalog(tmp_path / "catalog.csv", 48)  # 3 bad rows
    out = tmp_path / "out"
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "resume", "manifest": {"uri": str(catalog)}, "output": {"uri": str(out)},
        "prompt": {"template": "a {{ color }} {{ title }}"},
        "stages": [
            {"kind": "generate", "model": "sd-tiny",
             "params": {"width": 64, "height": 64, "steps": 6},
             "resources": {"batch_size": 4, "num_cpus": 0.5}},
            {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]},
             "resources": {"batch_size": 4, "num_cpus": 0.5}}]}))
    command = [sys.executable, "-m", "factory.cli.main", "run", str(spec), "--run-id", "r",
               "--no-dashboard"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=log,
                             stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if len(list((out / "assets").glob("*/*.png"))) >= 10 if (out / "assets").exists() else False:
            break
        time.sleep(0.2)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    kill_tree(first.pid)  # the driver and the local Ray it started, every process of it
    first.wait()
    # a sink task already writing may finish its file after the kill (an asset, create-only):
    # what the resume finds is what is there once the files stop changing
    done_before, quiet_since = set(), time.monotonic()
    while time.monotonic() - quiet_since < 2.0 and time.monotonic() < deadline + 60:
        now = {p.parent.name for p in (out / "assets").glob("*/*.png")}
        if now != done_before:
            done_before, quiet_since = now, time.monotonic()
        time.sleep(0.2)
    assert 10 <= len(done_before) < 45
    assert not (out / "runs" / "r" / "lineage.parquet").exists()  # never committed

    again = CliRunner().invoke(main, command[3:], catch_exceptions=False)
    assert again.exit_code == EXIT_PARTIAL, again.output[-2000:]  # partial: the 3 bad rows
    lineage, summary = read_lineage(Store(str(out)), "r")
    rejects = read_rejects(Store(str(out)), "r")
    assert lineage.num_rows + rejects.num_rows == 48 and summary["assets"] == 45
    rows = {r["sku"]: r for r in lineage.to_pylist()}
    for sku in done_before:
        assert rows[sku]["written"] is False
        assert not rows[sku]["generate_placement"] and not rows[sku]["ms_generate"]
    assert summary["written"] == 45 - len(done_before)
    files = sorted(p.relative_to(out).as_posix() for p in (out / "assets").glob("*/*.png"))
    assert files == sorted(r["output_key"] for r in rows.values())
