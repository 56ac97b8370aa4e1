"""Hosted models as routed stages on a local Ray, against the loopback stand-ins of fal's queue
API (``tests/support/hosted_api.py``) and Replicate's (``tests/support/replicate_api.py``):
the shipped ``jobs/routed-api.yaml`` sends heroes through three hosted stages on two providers
and thumbnails through local models, one budget, one lineage with exact dollars; a killed
driver's resume pays no request twice; a rejected key stops the run naming the variable to
set."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from PIL import Image

from factory.spec.job import load_job, parse_job
from factory.store.run_tables import list_runs, read_lineage
from factory.store.storage import Store
from tests.support import hosted_api, replicate_api
from tests.support.process_tree import kill_tree

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(models_dir):
    """fal's stand-in, and both stand-ins' variables in this process's environment before the
    local Ray starts (its workers inherit them; ``local_ray`` restarts a Ray started without
    them)."""
    server, replicate = hosted_api.shared(), replicate_api.shared()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {**server.env(), **replicate.env()}.items():
            env.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def ray_with_api(api, local_ray):
    return local_ray


def catalog(directory: Path, tiers: list[str]) -> Path:
    path = directory / "tiered.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "color", "tier"])
        for i, tier in enumerate(tiers):
            writer.writerow([f"SKU-{i}", f"mug {i}", "red", tier])
    return path


def spec(manifest: Path, output: Path, **extra) -> dict:
    return {"name": "hosted-it", "manifest": {"uri": str(manifest)},
            "output": {"uri": str(output)}, "seed": 5,
            "prompt": {"template": "a {{ color }} {{ title }}"},
            "stages": [
                {"kind": "generate", "model": "synthetic", "name": "fast",
                 "params": {"width": 16, "height": 16}},
                {"kind": "generate", "model": "fal-flux-pro",
                 "params": {"width": 64, "height": 64, "poll_interval_s": 0.02},
                 "resources": {"batch_size": 4}},
                {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}}],
            "routes": {"default": "thumbnail",
                       "chains": {"thumbnail": ["fast", "recolor"],
                                  "hero": ["generate", "recolor"]}},
            "pricing": {"gpu": "l4"}, **extra}


def test_the_routed_job_sends_heroes_to_two_providers_and_thumbnails_here(ray_with_api, api,
                                                                          tmp_path):
    """``jobs/routed-api.yaml`` as shipped (its manifest, its prices) into a temporary output,
    through a 429 storm at the start."""
    from click.testing import CliRunner

    from factory.cli.exits import EXIT_PARTIAL
    from factory.cli.main import main

    replicate = replicate_api.shared()
    api.reset()
    replicate.reset()
    api.rate_limit(3)  # each client backs off as asked; nothing fails
    replicate.rate_limit(2)
    job = load_job(REPO / "jobs" / "routed-api.yaml").with_overrides(
        output_uri=str(tmp_path / "out"))
    ran = CliRunner().invoke(main, ["run", str(REPO / "jobs" / "routed-api.yaml"), "--output",
                                    str(tmp_path / "out"), "--no-dashboard"])
    # partial: the manifest's one row of a tier no route serves ("premium") is rejected
    assert ran.exit_code == EXIT_PARTIAL, ran.output[-3000:]
    assert "rejects:" in ran.output
    store = Store(str(tmp_path / "out"))
    (run_id, _), = list_runs(store)
    lineage, summary = read_lineage(store, run_id)
    rows = {r["sku"]: r for r in lineage.to_pylist()}
    assert summary["assets"] == 7 and summary["failed"] == 0, [r["error"] for r in rows.values()]
    heroes = [r for r in rows.values() if r["route"] == "hero"]
    assert len(heroes) == 1 and api.rate_limited == 3 and replicate.rate_limited == 2
    assert api.submissions() == 2 and replicate.submissions() == 1  # one request per stage
    prices = {"generate": Decimal("0.04"), "segment": Decimal("0.018"),
              "upscale": Decimal("0.000225")}
    units = {"generate": 1024 * 1024 / 1e6, "segment": 1.0, "upscale": replicate.predict_s}
    providers = {"generate": "fal", "segment": "fal", "upscale": "replicate"}
    for r in rows.values():
        hero = r["route"] == "hero"
        for stage, provider in providers.items():
            assert (r[f"{stage}_provider"] == provider) == hero, (stage, r["sku"])
            assert bool(r[f"{stage}_request_id"]) == hero
            assert r[f"{stage}_billed_units"] == (units[stage] if hero else 0)
            assert r[f"usd_{stage}"] == (Decimal(repr(units[stage])) * prices[stage]
                                         if hero else 0)
            assert r[f"gpu_s_{stage}"] == 0 and r[f"cpu_s_{stage}"] == 0
        assert r["cost_usd"] == sum((r[f"usd_{p.name}"] for p in job.stages), Decimal(0))
        with Image.open(tmp_path / "out" / r["output_key"]) as image:  # hero: x2 on Replicate
            assert image.size == ((2048, 2048) if hero else (32, 32))
    hero = heroes[0]  # the request ids the lineage names are the ones the providers ran
    assert api.arguments_of(hero["generate_request_id"])["prompt"] == hero["prompt"]
    assert api.arguments_of(hero["segment_request_id"])["image_url"].startswith("data:")
    assert replicate.arguments_of(hero["upscale_request_id"])["scale"] == 2
    assert Decimal(repr(summary["routes"]["hero"]["usd"])) == hero["cost_usd"]
    for stage in providers:
        assert summary["cost"]["stages"][stage]["usd"] == float(
            Decimal(repr(units[stage])) * prices[stage])
    assert Decimal(repr(summary["cost"]["usd"])) == sum(
        (r["cost_usd"] for r in rows.values()), Decimal(0))
    records = list((tmp_path / "out" / "runs" / run_id / "requests").glob("*/*.json"))
    assert sorted(p.parent.name for p in records) == ["generate", "segment", "upscale"]

    # the plan prices the hosted stages from the same table: units x price per asset (a new
    # seed: every row to render again, calibrated by the committed run)
    spec = yaml.safe_load((REPO / "jobs" / "routed-api.yaml").read_text())
    spec.update(seed=99, manifest={"uri": str(REPO / "manifests" / "tiered.csv")})
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(spec))
    planned = CliRunner().invoke(main, ["plan", str(tmp_path / "again.yaml"), "--output",
                                        str(tmp_path / "out"), "--probe", "0", "--json"])
    assert planned.exit_code == 0, planned.output
    plan = {s["name"]: s for s in json.loads(planned.output)["stages"]}
    for stage in ("generate", "segment"):  # one hero: its expected units at the card's price
        assert plan[stage]["usd"] == float(Decimal(repr(units[stage])) * prices[stage])
    assert api.submissions() == 2 and replicate.submissions() == 1  # planning made no request


def test_a_rejected_key_stops_the_run_naming_the_variable(ray_with_api, api, tmp_path):
    from factory.run.pipeline import run_job

    api.reset()
    api.key = "rotated"  # the workers' FAL_KEY is no longer valid
    job = parse_job(spec(catalog(tmp_path, ["hero", "thumbnail"]), tmp_path / "out"))
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        run_job(job)
    assert "fal refused the API key (401): set FAL_KEY" in str(err.value)
    assert time.monotonic() - started < 60 and api.submissions() == 0
    assert not list((tmp_path / "out" / "runs").glob("*/lineage.parquet"))  # not committed
    api.reset()


def test_a_killed_driver_resumes_without_paying_twice(ray_with_api, api, tmp_path):
    """SIGKILL the driver while heroes are in flight; the same run id again (on this
    process's Ray): every request recorded before the kill is fetched, not submitted again."""
    from factory.run.pipeline import run_job

    api.reset()
    api.job_s = 0.4  # each request runs a while: the kill lands mid-run
    out = tmp_path / "out"
    job = spec(catalog(tmp_path, ["hero"] * 8), out)
    job["routes"]["chains"]["thumbnail"] = ["fast", "recolor"]
    job["stages"][1]["resources"] = {"batch_size": 2}
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(job))
    command = [sys.executable, "-m", "factory.cli.main", "run", str(spec_path), "--run-id", "r",
               "--no-dashboard"]
    env = {**os.environ, **api.env()}
    requests = out / "runs" / "r" / "requests" / "generate"
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if requests.is_dir() and len(list(requests.glob("*.json"))) >= 3:
                break
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        # the driver and the local Ray it started, all of it: no worker of the killed run
        # submits or records anything after this
        kill_tree(first.pid)
        first.wait()
    assert not (out / "runs" / "r" / "lineage.parquet").exists()
    before = {json.loads(p.read_text())["request_id"] for p in requests.glob("*.json")}
    assert 3 <= len(before) < 8
    paid = api.submissions()

    api.job_s = 0.0
    resumed = run_job(load_job(spec_path).with_overrides(run_id="r"))
    assert not resumed.already_committed
    lineage, summary = read_lineage(Store(str(out)), "r")
    assert summary["assets"] == 8 and summary["failed"] == 0
    rows = lineage.to_pylist()
    prompts = [api.arguments_of(i)["prompt"] for i in before]
    for prompt in prompts:  # a request made before the kill was not made again
        assert api.submissions(prompt) == 1, prompt
    assert {r["generate_request_id"] for r in rows} >= before
    assert api.submissions() - paid == 8 - len(before)  # only the unrecorded ones
