"""Routing by tier end to end on a local Ray: a route mix renders each row on its own chain
through one set of pools, with exact accounting, a key per route and cost per route."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from factory.run.pipeline import fingerprint
from factory.store.run_tables import read_lineage, read_rejects
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration

# row 5 names no route (a reject); row 6 is empty (the default route)
TIERS = ["hero", "thumbnail", "thumbnail", "hero", "premium", "", "thumbnail", "thumbnail"]
HERO_ONLY = ("generate", "upscale", "polish")


def catalog(directory: Path) -> Path:
    path = directory / "tiered.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "color", "tier"])
        for i, tier in enumerate(TIERS):
            writer.writerow([f"SKU-{i}", "mug", "red", tier])
    return path


def spec(manifest: Path, output: Path, **extra) -> dict:
    return {"name": "routed-it", "manifest": {"uri": str(manifest)},
            "output": {"uri": str(output)}, "seed": 3,
            "prompt": {"template": "a {{ color }} {{ title }}"},
            "stages": [
                {"kind": "generate", "model": "synthetic", "name": "fast",
                 "params": {"width": 16, "height": 16}},
                {"kind": "generate", "model": "synthetic",
                 "params": {"width": 128, "height": 128}},
                {"kind": "upscale", "model": "lanczos", "params": {"scale": 2}},
                {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}},
                {"kind": "identity", "model": "passthrough", "name": "polish"}],
            "routes": {"default": "thumbnail",
                       "chains": {"thumbnail": ["fast", "recolor"],
                                  "hero": ["generate", "upscale", "recolor", "polish"]}},
            **extra}


def test_a_route_mix_renders_each_row_on_its_own_chain(local_ray, tmp_path) -> None:
    from factory.run.pipeline import run_job

    job = parse_job(spec(catalog(tmp_path), tmp_path / "out"))
    result = run_job(job)
    store = Store(str(tmp_path / "out"))
    lineage, summary = read_lineage(store, result.run_id)
    rows = {r["row"]: r for r in lineage.to_pylist()}
    rejects = read_rejects(store, result.run_id).to_pylist()
    # accounting: every row once, the unknown tier as a reject naming the row and the value
    assert [(r["row"], r["field"]) for r in rejects] == [(5, "tier")]
    assert "'premium' names no route" in rejects[0]["reason"]
    assert sorted(rows) == [1, 2, 3, 4, 6, 7, 8]
    assert summary["assets"] + summary["failed"] + summary["rejected"] == len(TIERS)
    assert summary["assets"] == 7 and summary["rejected"] == 1
    assert {r: rows[r]["route"] for r in rows} == {
        1: "hero", 2: "thumbnail", 3: "thumbnail", 4: "hero", 6: "thumbnail", 7: "thumbnail",
        8: "thumbnail"}
    assert summary["routes"]["hero"]["assets"] == 2
    assert summary["routes"]["thumbnail"]["assets"] == 5
    for r in rows.values():
        hero = r["route"] == "hero"
        # stages off a row's route took no time, recorded no model and cost nothing
        for stage in HERO_ONLY:
            assert bool(r[f"ms_{stage}"]) == hero and (r[f"{stage}_model"] is not None) == hero
            assert hero or (r[f"usd_{stage}"] == 0 and r[f"cpu_s_{stage}"] == 0)
        assert bool(r["ms_fast"]) != hero and r["ms_recolor"] > 0
        assert r["cost_usd"] == sum((r[f"usd_{p.name}"] for p in job.stages), Decimal(0))
        # each asset is its route's chain: 256 px heroes, 16 px thumbnails
        with Image.open(tmp_path / "out" / r["output_key"]) as image:
            assert image.size == ((256, 256) if hero else (16, 16))
    # keys: the route's own chain fingerprint
    from factory.spec.keys import asset_key

    for r in rows.values():
        item = {**r, "negative_prompt": "", "width": 0, "height": 0, "palette": ""}
        assert r["output_key"] == asset_key(fingerprint(job, route=r["route"]), "png", item)
    hero_usd = [rows[i]["cost_usd"] for i in (1, 4)]
    thumb_usd = [rows[i]["cost_usd"] for i in (2, 3, 6, 7, 8)]
    assert sum(hero_usd) / 2 > sum(thumb_usd) / 5
    assert Decimal(repr(summary["routes"]["hero"]["usd"])) == sum(hero_usd, Decimal(0))

    from click.testing import CliRunner

    from factory.cli.main import main

    shown = CliRunner().invoke(main, ["runs", "show", result.run_id, "--output",
                                      str(tmp_path / "out")])
    assert shown.exit_code == 0, shown.output
    assert "route hero" in shown.output and "route thumbnail" in shown.output

    # the report: each card names its route, a filter per route, the routes' figures
    page = Path(result.report_path).read_text(encoding="utf-8")
    assert page.count('data-route="hero"') == 2 and page.count('data-route="thumbnail"') == 5
    assert '<option value="hero">hero</option>' in page and 'id="f-route"' in page
    assert "hero 2 ($" in page and "thumbnail 5 ($" in page

    # the plan for two more rows, one per route, calibrated from that run: per route
    import json

    bigger = tmp_path / "bigger.csv"
    bigger.write_text(Path(job.manifest_uri).read_text() + "SKU-8,mug,red,hero\n"
                      "SKU-9,mug,red,thumbnail\n")
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec(bigger, tmp_path / "out")))
    planned = CliRunner().invoke(main, ["plan", str(spec_path), "--probe", "0", "--json"])
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.output)
    assert plan["to_render"] == 2 and plan["existing"] == 7
    assert {r["name"]: r["rows"] for r in plan["routes"]} == {"hero": 1, "thumbnail": 1}
    busy = {s["name"]: s["busy_s"] / s["seconds_per_asset"] for s in plan["stages"]}
    assert busy == pytest.approx({"fast": 1, "generate": 1, "upscale": 1, "recolor": 2,
                                  "polish": 1})

    # a rerun finds every asset under its route's key: nothing is rendered again
    again = run_job(job.with_overrides(run_id="again"))
    assert again.counts.assets == 7 and again.counts.written == 0


def test_routes_with_channels_key_each_channel_by_the_route(local_ray, tmp_path) -> None:
    from factory.run.pipeline import run_job

    channels = [{"name": "small", "width": 64, "height": 64, "format": "png",
                 "background": "keep", "fill": None, "min_purity": 0.0, "edge_clear": False}]
    job = parse_job(spec(catalog(tmp_path), tmp_path / "out", channels=channels))
    result = run_job(job)
    lineage, summary = read_lineage(Store(str(tmp_path / "out")), result.run_id)
    rows = lineage.to_pylist()
    assert summary["assets"] + summary["failed"] + summary["rejected"] == len(TIERS)
    assert {r["route"] for r in rows} == {"hero", "thumbnail"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 7, [r["error"] for r in rows if r["status"] != "ok"]
    again = run_job(job.with_overrides(run_id="again"))
    assert again.counts.written == 0 and again.counts.assets == 7
