"""Routing by tier (``factory.spec.routes``): the spec's routes, each row's route and key, stages
that pass other routes' rows through, and the plan per route."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from factory.core import images
from factory.spec.keys import chain_fingerprint
from factory.cost.calibration import Calibration, Rate
from factory.run.forecast import predict, stage_rows
from factory.spec.routes import Route
from factory.run.rows import validate_batch
from factory.spec.job import SpecError, parse_job
from stages.base import Resources, Stage, StageCard, StageParams, StagePlan
from stages.chain import StageChain

PALETTE = {"palette": ["#C8553D"]}


def spec(**routes: Any) -> dict[str, Any]:
    return {"name": "routed", "manifest": {"uri": "a.csv"}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }}"},
            "stages": [{"kind": "generate", "model": "synthetic", "name": "fast",
                        "params": {"width": 16, "height": 16}},
                       {"kind": "generate", "model": "synthetic",
                        "params": {"width": 32, "height": 32}},
                       {"kind": "recolor", "model": "lab", "params": PALETTE},
                       {"kind": "identity", "model": "passthrough", "name": "polish"}],
            "routes": {"chains": {"thumbnail": ["fast", "recolor"],
                                  "hero": ["generate", "recolor", "polish"]}, **routes}}


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as err:
        parse_job(data)
    return "\n".join(err.value.problems)


# -- the spec ---------------------------------------------------------------------------------

def test_routes_parse_into_named_chains_and_each_stage_knows_its_routes() -> None:
    job = parse_job(spec(default="thumbnail"))
    routes = job.routes
    assert routes.column == "tier" and routes.default == "thumbnail"
    assert routes.names == ("thumbnail", "hero")
    assert routes.get("hero") == Route("hero", ("generate", "recolor", "polish"))
    assert {p.name: p.routes for p in job.stages} == {
        "fast": ("thumbnail",), "generate": ("hero",), "recolor": ("thumbnail", "hero"),
        "polish": ("hero",)}
    with pytest.raises(KeyError, match="no route named 'premium'"):
        routes.get("premium")


def test_a_job_without_routes_is_unchanged() -> None:
    data = spec()
    del data["routes"]
    data["stages"] = data["stages"][1:]
    job = parse_job(data)
    assert job.routes is None and all(p.routes == () for p in job.stages)


@pytest.mark.parametrize("chains, expected", [
    ({"hero": ["generate", "recolr", "polish"], "thumbnail": ["fast"]},
     "routes.chains.hero[1]: no stage named 'recolr'"),
    ({"hero": ["generate", "polish", "recolor"], "thumbnail": ["fast"]},
     "routes.chains.hero[2]: stage 'recolor' comes before 'polish'"),
    ({"hero": ["generate", "recolor", "polish"], "thumbnail": ["recolor"]},
     "routes.chains.thumbnail[0]: 'recolor/lab' needs column 'image', which no earlier stage"),
    ({"hero": ["generate", "recolor", "polish"]},
     "stages[0]: stage 'fast' is on no route"),
    ({"hero": ["generate", "generate", "polish"], "thumbnail": ["fast", "recolor"]},
     "routes.chains.hero[1]: stage 'generate' is listed twice"),
    ({"hero": [], "thumbnail": ["fast", "generate", "recolor", "polish"]},
     "routes.chains.hero: a route needs at least one stage"),
])
def test_bad_routes_are_rejected_naming_the_key(chains, expected) -> None:
    data = spec()
    data["routes"]["chains"] = chains
    assert expected in problems(data)


def test_an_unknown_default_and_kept_intermediates_are_rejected() -> None:
    assert "routes.default: no route named 'thumb'" in problems(spec(default="thumb"))
    data = spec()
    data["keep_intermediates"] = ["recolor"]
    assert "keep_intermediates: not supported with routes" in problems(data)
    assert "routes.colour: unknown key" in problems(spec(colour="x"))


# -- rows: a route per row, a key per route ---------------------------------------------------

def rows_batch(tiers: list[str | None]) -> dict[str, np.ndarray]:
    fields = [{"sku": f"S{i}", "title": "mug", **({"tier": t} if t is not None else {})}
              for i, t in enumerate(tiers)]
    n = len(tiers)
    return {"row": np.arange(1, n + 1), "fields": np.array([json.dumps(f) for f in fields]),
            "parse_field": np.array([""] * n, dtype=object),
            "parse_error": np.array([""] * n, dtype=object)}


def validated(job, tiers: list[str | None]) -> dict[str, np.ndarray]:
    from factory.catalog.manifest import ManifestInfo
    from factory.run.work import row_rules

    info = ManifestInfo(rows=len(tiers), columns=(), duplicate_rejects={})
    return validate_batch(rows_batch(tiers), rules=row_rules(job, info))


def test_the_tier_column_picks_the_route_and_an_unknown_tier_is_a_reject() -> None:
    out = validated(parse_job(spec(default="thumbnail")),
                    ["hero", "thumbnail", "", None, "premium", " hero "])
    assert list(out["status"]) == ["ok", "ok", "ok", "ok", "rejected", "ok"]
    assert list(out["route"]) == ["hero", "thumbnail", "thumbnail", "thumbnail", "", "hero"]
    assert out["reject_field"][4] == "tier" and out["row"][4] == 5
    assert "'premium' names no route (routes: thumbnail, hero)" in out["error"][4]


def test_without_a_default_an_empty_tier_is_a_reject() -> None:
    out = validated(parse_job(spec()), ["", "hero"])
    assert list(out["status"]) == ["rejected", "ok"]
    assert out["reject_field"][0] == "tier" and "routes.default is not set" in out["error"][0]


def test_each_route_keys_its_assets_by_its_own_chain() -> None:
    from factory.run.pipeline import fingerprint

    job = parse_job(spec(column="level"))
    hero, thumb = fingerprint(job, route="hero"), fingerprint(job, route="thumbnail")
    assert hero != thumb != fingerprint(job)
    by_name = {p.name: p for p in job.stages}
    assert hero == chain_fingerprint(tuple(by_name[n] for n in ("generate", "recolor", "polish")),
                                     encoding="png:92")
    fields = [{"sku": "S0", "title": "mug", "level": "hero"},
              {"sku": "S0", "title": "mug", "level": "thumbnail"}]
    batch = rows_batch([None, None])
    batch["fields"] = np.array([json.dumps(f) for f in fields])
    from factory.catalog.manifest import ManifestInfo
    from factory.run.work import row_rules

    out = validate_batch(batch, rules=row_rules(job, ManifestInfo(2, (), {})))
    assert out["output_key"][0] != out["output_key"][1]
    # a route that runs the whole chain keys its assets as the same job without routes does
    whole = spec()
    whole["routes"]["chains"]["hero"] = ["fast", "generate", "recolor", "polish"]
    plain = spec()
    del plain["routes"]
    assert (fingerprint(parse_job(whole), route="hero") == fingerprint(parse_job(plain)))


# -- stages pass other routes' rows through ---------------------------------------------------

class _Params(StageParams):
    value: int = 0
    size: int = 2


class _Paint(Stage):
    """Paints every row's image ``value`` at ``size`` px and measures ``score``."""

    def _predict(self, rows):
        n = len(rows["sku"])
        return {"image": [np.full((self.params.size, self.params.size, 3), self.params.value,
                                  dtype=np.uint8) for _ in range(n)],
                "score": [float(self.params.value)] * n}


CARD = StageCard(name="identity/paint", kind="identity", runtime=_Paint, params=_Params,
                 outputs=("image",), metrics=(("score", "float64"),))


def plan(name: str, routes: tuple[str, ...], **params) -> StagePlan:
    return StagePlan(name=name, card=CARD, params=_Params(**params), source="", revision="x",
                     resources=Resources(batch_size=2), routes=routes)


def batch(routes: list[str], statuses: list[str] | None = None) -> dict[str, np.ndarray]:
    n = len(routes)
    return {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
            "status": np.array(statuses or ["ok"] * n, dtype=object),
            "route": np.array(routes, dtype=object)}


def test_a_stage_skips_rows_of_other_routes_and_keeps_their_image() -> None:
    fast = _Paint(plan=plan("fast", ("thumbnail",), value=10, size=2))
    premium = _Paint(plan=plan("premium", ("hero",), value=200, size=4))
    out = premium(fast(batch(["thumbnail", "hero", "thumbnail", "hero"])))
    pixels = images.load("image", out)
    assert [p.shape[0] for p in pixels] == [2, 4, 2, 4]
    assert [int(p[0, 0, 0]) for p in pixels] == [10, 200, 10, 200]  # thumbnails kept theirs
    assert list(out["score"]) == [10.0, 200.0, 10.0, 200.0]  # so did their measurements
    assert list(out["status"]) == ["ok"] * 4
    # time is charged only to the rows a stage rendered
    assert out["ms_fast"][1] == 0.0 and out["ms_fast"][3] == 0.0 and out["ms_fast"][0] > 0
    assert out["ms_premium"][0] == 0.0 and out["ms_premium"][2] == 0.0
    assert list(out["premium_placement"][[0, 2]]) == ["", ""]


def test_a_batch_with_no_row_of_a_stages_routes_passes_through_whole() -> None:
    fast = _Paint(plan=plan("fast", ("thumbnail",), value=10))
    premium = _Paint(plan=plan("premium", ("hero",), value=200))
    out = premium(fast(batch(["thumbnail", "thumbnail", "thumbnail"], ["ok", "failed", "ok"])))
    assert [None if p is None else int(p[0, 0, 0]) for p in images.load("image", out)] == [
        10, None, 10]
    assert list(out["ms_premium"]) == [0.0, 0.0, 0.0]


def test_a_chain_of_stages_serves_each_row_on_its_own_route() -> None:
    chain = StageChain(plans=[plan("fast", ("thumbnail",), value=10, size=2),
                              plan("premium", ("hero",), value=200, size=4),
                              plan("both", ("thumbnail", "hero"), value=7, size=3)])
    out = chain(batch(["hero", "thumbnail", "hero"]))  # batches of 2: 2 + 1 rows
    assert [int(p[0, 0, 0]) for p in images.load("image", out)] == [7, 7, 7]
    assert out["ms_fast"][0] == 0.0 and out["ms_premium"][1] == 0.0
    assert (out["ms_both"] > 0).all()


# -- the plan per route -----------------------------------------------------------------------

def test_the_plan_charges_each_stage_only_the_rows_of_its_routes() -> None:
    job = parse_job(spec(default="thumbnail"))
    routes = {"hero": 2, "thumbnail": 18}
    assert stage_rows(job, 20, routes) == {"fast": 18, "generate": 2, "recolor": 20,
                                           "polish": 2}
    rates = {name: Rate(seconds, 10, ("r",)) for name, seconds in
             (("fast", 0.1), ("generate", 1.0), ("recolor", 0.2), ("polish", 2.0))}
    plan_ = predict(job, Calibration(rates=rates), rows=21, rejected=1, existing=0,
                    to_render=20, routes=routes)
    busy = {s.name: s.busy_s for s in plan_.stages}
    assert busy == pytest.approx({"fast": 1.8, "generate": 2.0, "recolor": 4.0, "polish": 4.0})
    by_route = {r.name: r for r in plan_.routes}
    assert by_route["hero"].rows == 2 and by_route["thumbnail"].rows == 18
    assert by_route["hero"].usd_per_asset > by_route["thumbnail"].usd_per_asset
    assert sum(r.usd for r in plan_.routes) == pytest.approx(plan_.usd, rel=1e-3)


def test_validate_prints_the_routes() -> None:
    from pathlib import Path

    from click.testing import CliRunner

    from factory.cli.main import main

    jobs = Path(__file__).resolve().parents[2] / "jobs"
    out = CliRunner().invoke(main, ["validate", str(jobs / "routed-catalog.yaml")])
    assert out.exit_code == 0, out.output
    assert "routes by column 'tier', default 'thumbnail':" in out.output
    assert "route thumbnail: generate_fast → segment → recolor" in out.output
    assert "route hero: generate → segment → lora → recolor → upscale" in out.output
