"""A hosted model as a routed stage on a local Ray, against the loopback stand-in of fal's
queue API (``tests/support/hosted_api.py``): heroes through the provider, thumbnails on a
local stage, one budget, one lineage with exact dollars; a killed driver's resume pays no
request twice; a rejected key stops the run naming the variable to set."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from PIL import Image

from factory.spec.job import parse_job
from factory.store.run_tables import read_lineage
from factory.store.storage import Store
from tests.support.hosted_api import shared

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TIERS = ["hero", "thumbnail", "thumbnail", "hero", "thumbnail"]
MEGAPIXELS = 64 * 64 / 1e6
PRICE = Decimal("0.04")  # the card's price per megapixel


@pytest.fixture(scope="module")
def api():
    """The stand-in, and its variables in this process's environment before the local Ray
    starts (its workers inherit them; ``local_ray`` restarts a Ray started without them)."""
    server = shared()
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


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


def test_heroes_call_the_provider_thumbnails_render_here_one_budget(ray_with_api, api,
                                                                    tmp_path):
    from factory.run.pipeline import run_job

    api.reset()
    api.rate_limit(3)  # a 429 storm at the start: the client backs off, nothing fails
    job = parse_job(spec(catalog(tmp_path, TIERS), tmp_path / "out", budget={"usd": 5}))
    result = run_job(job)
    lineage, summary = read_lineage(Store(str(tmp_path / "out")), result.run_id)
    rows = {r["sku"]: r for r in lineage.to_pylist()}
    assert summary["assets"] == 5 and summary["failed"] == 0, [r["error"] for r in rows.values()]
    assert api.rate_limited == 3 and api.submissions() == 2  # one request per hero
    for r in rows.values():
        hero = r["route"] == "hero"
        assert (r["generate_provider"] == "fal") == hero
        assert bool(r["generate_request_id"]) == hero
        assert r["generate_billed_units"] == (MEGAPIXELS if hero else 0)
        assert r["usd_generate"] == (Decimal(repr(MEGAPIXELS)) * PRICE if hero else 0)
        assert r["gpu_s_generate"] == 0 and r["cpu_s_generate"] == 0
        assert r["cost_usd"] == sum((r[f"usd_{p.name}"] for p in job.stages), Decimal(0))
        with Image.open(tmp_path / "out" / r["output_key"]) as image:
            assert image.size == ((64, 64) if hero else (16, 16))
        if hero:  # the request id the lineage names is the one the provider ran
            assert api.arguments_of(r["generate_request_id"])["prompt"] == r["prompt"]
    heroes = [r["cost_usd"] for r in rows.values() if r["route"] == "hero"]
    assert Decimal(repr(summary["routes"]["hero"]["usd"])) == sum(heroes, Decimal(0))
    assert summary["cost"]["stages"]["generate"]["usd"] == float(
        2 * Decimal(repr(MEGAPIXELS)) * PRICE)
    assert Decimal(repr(summary["cost"]["usd"])) == sum(
        (r["cost_usd"] for r in rows.values()), Decimal(0))
    records = list((tmp_path / "out" / "runs" / result.run_id / "requests" / "generate")
                   .glob("*.json"))
    assert len(records) == 2

    # the plan prices the hosted stage from the same table: megapixels x price per asset
    from click.testing import CliRunner

    from factory.cli.main import main

    bigger = tmp_path / "bigger.csv"
    bigger.write_text(Path(job.manifest_uri).read_text() + "SKU-9,mug 9,red,hero\n")
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec(bigger, tmp_path / "out")))
    planned = CliRunner().invoke(main, ["plan", str(spec_path), "--probe", "0", "--json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.output)
    hero = next(r for r in plan["routes"] if r["name"] == "hero")
    assert hero["rows"] == 1
    generate = float(Decimal(repr(MEGAPIXELS)) * PRICE)
    assert hero["usd_per_asset"] == pytest.approx(generate, rel=0.05)  # + its recolor
    assert next(s for s in plan["stages"] if s["name"] == "generate")["usd"] == generate
    assert api.submissions() == 2  # planning made no request


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
    from factory.spec.job import load_job

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
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
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
