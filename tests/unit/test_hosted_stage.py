"""The hosted stage (``stages.hosted``) through fal's own client against a loopback stand-in of
fal's queue API (``tests/support/hosted_api.py``): rows, failures, 429s, keys, outages,
timeouts, and requests paid once per run. No Ray."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from factory.core import images
from factory.core.metrics import RunLabels
from stages.base import StagePlan
from stages.hosted import request_column, units_column
from stages.hosted_base import HostedAuthError, HostedOutage
from stages.registry import get_card
from tests.support.hosted_api import pointed_at, shared

CARD = get_card("generate/fal-flux-pro")


@pytest.fixture
def api(monkeypatch):
    yield pointed_at(monkeypatch)
    shared().reset()


def stage(tmp_path: Path | None = None, *, run_id: str = "r1", **params):
    """The card's runtime at 96x64, polling fast; ``tmp_path``: the run's store."""
    plan = StagePlan(name="hero", card=CARD,
                     params=CARD.make_params({"width": 96, "height": 64,
                                              "poll_interval_s": 0.01, **params}),
                     source="", revision=CARD.revision, resources=CARD.resources,
                     requests_uri=str(tmp_path) if tmp_path is not None else "")
    return CARD.runtime(plan=plan, labels=RunLabels(job="j", run_id=run_id))


def batch(prompts: list[str]) -> dict[str, np.ndarray]:
    n = len(prompts)
    return {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object),
            "failed_stage": np.array([""] * n, dtype=object),
            "prompt": np.array(prompts, dtype=object),
            "negative_prompt": np.array([""] * n, dtype=object),
            "seed": np.arange(n, dtype=np.int64) + 7}


def test_each_row_gets_its_image_request_id_and_billed_units(api):
    out = stage()(batch(["a red mug", "a blue mug", "a lamp"]))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    made = images.load("image", out)
    assert all(m.shape == (64, 96, 3) and m.dtype == np.uint8 for m in made)
    assert [int(m[0, 0, 2]) for m in made] == [7, 8, 9]  # each row's own seed was sent
    ids = list(out[request_column("hero")])
    assert len(set(ids)) == 3 and all(ids)
    assert list(out[units_column("hero")]) == [96 * 64 / 1e6] * 3  # megapixels delivered
    assert api.submissions() == 3
    sent = api.submitted()[0]
    assert sent["image_size"] == {"width": 96, "height": 64} and sent["num_images"] == 1
    assert (out["ms_hero"] > 0).all()


def test_a_refused_row_fails_alone(api):
    out = stage()(batch(["a mug", "refuse this one", "a lamp"]))
    assert list(out["status"]) == ["ok", "failed", "ok"]
    assert out["failed_stage"][1] == "hero" and "refused" in out["error"][1]
    assert images.load("image", out)[1] is None and out[units_column("hero")][1] == 0


def test_a_429_storm_slows_down_as_asked_and_finishes_without_a_failure(api):
    api.rate_limit(4)  # each answered with Retry-After: 1
    started = time.monotonic()
    out = stage(concurrency=2)(batch(["a mug", "a lamp", "a vase"]))
    took = time.monotonic() - started
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    assert api.rate_limited == 4 and api.submissions() == 3
    # 4 waits of a second, as the provider asked, over 2 requests in flight (fal's own
    # backoff alone would have waited about 0.1 s each)
    assert 2.0 <= took < 20


def test_retry_after_is_read_as_seconds_or_a_date_and_capped():
    from email.utils import format_datetime
    from datetime import datetime, timedelta, timezone

    from stages.hosted_base import MAX_RETRY_AFTER_S, retry_after_s

    assert retry_after_s("2") == 2.0 and retry_after_s(None) == 0.0
    assert retry_after_s("soon") == 0.0 and retry_after_s("-3") == 0.0
    assert retry_after_s("86400") == MAX_RETRY_AFTER_S
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= retry_after_s(later) <= 30


def test_a_rejected_key_fails_fast_naming_the_provider_and_variable(api, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "not-the-key")
    started = time.monotonic()
    with pytest.raises(HostedAuthError, match=r"fal refused the API key \(401\): set FAL_KEY"):
        stage()(batch(["a mug", "a lamp"]))
    assert time.monotonic() - started < 5 and api.submissions() == 0


def test_no_key_at_all_names_the_variable(api, monkeypatch, tmp_path):
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAL_HOME_DIR", str(tmp_path))  # no `fal auth login` tokens either
    with pytest.raises(HostedAuthError, match="fal: no API key: set FAL_KEY"):
        stage()(batch(["a mug"]))


def test_an_outage_of_every_row_stops_the_run(api):
    api.outage = True
    with pytest.raises(HostedOutage, match="failed every request of a batch"):
        stage()(batch(["a mug", "a lamp"]))


def test_a_job_past_its_timeout_is_cancelled_and_fails_its_row(api):
    out = stage(timeout_s=0.3)(batch(["a slow mug", "a lamp"]))
    assert list(out["status"]) == ["failed", "ok"]
    assert "unfinished after 0.3 s" in out["error"][0] and out[request_column("hero")][0]
    assert api.count("cancel") == 1


def test_rows_of_other_routes_pass_untouched(api):
    from dataclasses import replace

    runtime = stage()
    runtime.plan = replace(runtime.plan, routes=("hero",))
    rows = batch(["a mug", "a lamp"])
    rows["route"] = np.array(["hero", "thumbnail"], dtype=object)
    rows.update(images.store("image", [None, np.zeros((4, 4, 3), np.uint8)]))
    out = runtime(rows)
    assert list(out["status"]) == ["ok", "ok"] and api.submissions() == 1
    assert images.load("image", out)[1].shape == (4, 4, 3)
    assert out[request_column("hero")][1] == "" and out[units_column("hero")][1] == 0
    assert out["ms_hero"][1] == 0


def test_a_resumed_run_fetches_its_recorded_requests_instead_of_paying_again(api, tmp_path):
    rows = batch(["a mug", "a lamp", "a vase"])
    first = stage(tmp_path)(rows)
    records = sorted((tmp_path / "runs" / "r1" / "requests" / "hero").glob("*.json"))
    assert len(records) == 3 and api.submissions() == 3
    recorded = {json.loads(p.read_text())["request_id"] for p in records}
    assert recorded == set(first[request_column("hero")])
    assert "FAL_KEY" not in "".join(p.read_text() for p in records)  # no secret recorded

    again = stage(tmp_path)(rows)  # the same run id, a new actor: a resume
    assert api.submissions() == 3  # nothing paid twice
    assert list(again[request_column("hero")]) == list(first[request_column("hero")])
    for a, b in zip(images.load("image", first), images.load("image", again)):
        assert np.array_equal(a, b)

    stage(tmp_path, run_id="r2")(rows)  # another run pays for its own requests
    assert api.submissions() == 6


def test_a_recorded_request_the_provider_no_longer_has_is_asked_again(api, tmp_path):
    rows = batch(["a mug"])
    first = stage(tmp_path)(rows)
    api.reset()  # the provider forgot the request (expired)
    again = stage(tmp_path)(rows)
    assert list(again["status"]) == ["ok"] and api.submissions() == 1
    record = next((tmp_path / "runs" / "r1" / "requests" / "hero").glob("*.json"))
    assert json.loads(record.read_text())["request_id"] == again[request_column("hero")][0]
    assert again[request_column("hero")][0] != first[request_column("hero")][0]


def test_a_hosted_stage_is_priced_by_its_billed_units(tmp_path):
    from factory.spec.prices import CostModel, Prices, PricingSpec, StageShare, resolve_prices

    share = StageShare("hero", CARD.name, 0.0, 0.0, CARD.hosted.usd_per_unit)
    local = StageShare("recolor", "recolor/lab", 0.0, 1.0)
    row = CostModel(Prices(), (share, local)).row({"hero": 900.0, "recolor": 36.0},
                                                  {"hero": 1.048576})
    assert row["usd_hero"] == Decimal("1.048576") * Decimal("0.04")  # 0.04194304
    assert row["gpu_s_hero"] == 0 and row["cpu_s_hero"] == 0  # no device of ours
    assert row["usd_recolor"] == Decimal("0.000000500")  # 0.036 s x 1 CPU x $0.05/h
    assert row["cost_usd"] == row["usd_hero"] + row["usd_recolor"]
    problems: list[str] = []
    prices = resolve_prices(PricingSpec(usd_per_unit={CARD.name: 0.055}), base_dir=None,
                            problems=problems)
    assert not problems
    assert CostModel(prices, (share,)).row({}, {"hero": 2.0})["usd_hero"] == Decimal("0.11")
    resolve_prices(PricingSpec(usd_per_unit={"recolor/lab": 1.0, CARD.name: -1.0}),
                   base_dir=None, problems=problems)
    assert any("pricing.usd_per_unit.recolor/lab: not a hosted card" in p for p in problems)
    assert any("usd_per_unit.generate/fal-flux-pro: a price per unit must be" in p
               for p in problems)


def test_a_hosted_scene_keeps_the_products_own_pixels(api):
    """The product is placed, sent over the fill to the image-edit model as a data URI, and
    its solid pixels come back exactly over whatever scene the provider answered."""
    from stages.product import FIDELITY, PRODUCT

    card = get_card("scene/fal-flux-kontext")
    plan = StagePlan(name="scene", card=card,
                     params=card.make_params({"width": 96, "height": 64,
                                              "poll_interval_s": 0.01}),
                     source="", revision=card.revision, resources=card.resources)
    rows = batch(["a mug on a marble counter", "a mug in a kitchen"])
    cutout = np.zeros((40, 30, 4), np.uint8)
    cutout[10:30, 8:22] = (200, 30, 40, 255)  # a solid red product
    rows.update(images.store("image", [cutout, cutout]))
    out = card.runtime(plan=plan, labels=RunLabels(run_id="r"))(rows)
    assert list(out["status"]) == ["ok", "ok"], out["error"]
    scenes, layers = images.load("image", out), images.load(PRODUCT, out)
    for scene, layer in zip(scenes, layers):
        assert scene.shape == (64, 96, 3) and layer.shape == (64, 96, 4)
        solid = layer[..., 3] == 255
        assert solid.any() and (scene[solid] == (200, 30, 40)).all()
    assert (out[FIDELITY] < 1.0).all()
    sent = api.submitted()[0]
    assert sent["image_url"].startswith("data:image/png;base64,") and "image_size" not in sent
    assert list(out[units_column("scene")]) == [1.0, 1.0]  # billed per image


def test_a_prices_file_the_user_keeps_sets_a_hosted_price_under_the_spec(tmp_path):
    from factory.spec.prices import PricingSpec, resolve_prices

    (tmp_path / "prices.yaml").write_text(
        "usd_per_unit: {generate/fal-flux-pro: 0.05, scene/fal-flux-kontext: 0.045}\n")
    problems: list[str] = []
    prices = resolve_prices(PricingSpec(file="prices.yaml",
                                        usd_per_unit={"scene/fal-flux-kontext": 0.03}),
                            base_dir=tmp_path, problems=problems)
    assert not problems
    assert dict(prices.usd_per_unit) == {"generate/fal-flux-pro": 0.05,
                                         "scene/fal-flux-kontext": 0.03}  # the spec wins
    assert prices.as_dict()["usd_per_unit"]["generate/fal-flux-pro"] == 0.05


def test_a_store_that_cannot_keep_the_records_stops_the_run(api, tmp_path):
    from factory.store.s3 import StorageError

    blocker = tmp_path / "store"
    blocker.write_text("a file where the run's store should be")
    with pytest.raises(StorageError, match="cannot read runs/r1/requests/hero/"):
        stage(blocker)(batch(["a mug", "a lamp"]))
    assert api.submissions() == 0  # nothing paid without a record of it


def test_the_cards_rate_limit_spaces_each_actors_submissions(api):
    """requests_per_s 10 over a pool of 2 actors: this actor submits 0.2 s apart, however many
    requests it keeps in flight."""
    from dataclasses import replace

    runtime = stage(concurrency=4)
    card = replace(CARD, hosted=replace(CARD.hosted, requests_per_s=10.0))
    runtime.plan = replace(runtime.plan, card=card,
                           resources=replace(runtime.plan.resources, concurrency=2))
    runtime._load()
    submitted: list[float] = []  # when each submission left this actor
    submit = runtime.client.submit
    runtime.client.submit = lambda *a: submitted.append(time.monotonic()) or submit(*a)
    out = runtime(batch(["a mug", "a lamp", "a vase", "a cup"]))
    assert list(out["status"]) == ["ok"] * 4, out["error"]
    submitted.sort()
    gaps = [b - a for a, b in zip(submitted, submitted[1:])]
    # turns 0.2 s apart; a thread wakes from its wait a few ms late at most
    assert api.submissions() == 4 and len(gaps) == 3 and min(gaps) >= 0.19, gaps
    assert submitted[-1] - submitted[0] >= 0.59
