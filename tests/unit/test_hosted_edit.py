"""Hosted models that take the row's image (``stages.hosted_edit``), through the providers'
own clients against the loopback stand-ins (``tests/support/hosted_api.py`` for fal,
``tests/support/replicate_api.py`` for Replicate): each keeps the contract of the local stage of
its kind. No Ray."""

from __future__ import annotations

import numpy as np
import pytest

from factory.core import images
from factory.core.metrics import RunLabels
from stages.base import StagePlan
from stages.hosted import request_column, units_column
from stages.registry import get_card
from tests.support.hosted_api import pointed_at, shared

SEGMENT = get_card("segment/fal-bria-rmbg")
UPSCALE = get_card("upscale/replicate-real-esrgan")


@pytest.fixture
def fal(monkeypatch):
    yield pointed_at(monkeypatch)
    shared().reset()


@pytest.fixture
def replicate(monkeypatch):
    from tests.support.replicate_api import ReplicateApiServer

    with ReplicateApiServer() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


def runtime(card, name: str, **params):
    plan = StagePlan(name=name, card=card,
                     params=card.make_params({"poll_interval_s": 0.01, **params}),
                     source="", revision=card.revision, resources=card.resources)
    return card.runtime(plan=plan, labels=RunLabels(job="j", run_id="r"))


def batch(pictures: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(pictures)
    rows = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object),
            "failed_stage": np.array([""] * n, dtype=object)}
    rows.update(images.store("image", pictures))
    return rows


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_hosted_background_removal_answers_a_cutout_of_the_rows_size(fal):
    empty = np.zeros((16, 16, 4), np.uint8)  # a row without a photo: nothing to cut out
    out = runtime(SEGMENT, "segment")(batch([photo(48, 64), empty, photo(40, 40, 1)]))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    cut = images.load("image", out)
    assert cut[0].shape == (48, 64, 4) and cut[2].shape == (40, 40, 4)
    # the stand-in keeps exactly the middle half of each side: a quarter of the pixels
    assert out["alpha_coverage"][0] == pytest.approx(0.25)
    assert out["alpha_coverage"][2] == pytest.approx(0.25)
    assert cut[1] is not None and not cut[1][..., 3].any() and out["alpha_coverage"][1] == 0
    assert fal.submissions() == 2 and out[request_column("segment")][1] == ""
    sent = fal.submitted()[0]
    assert set(sent) == {"image_url"} and sent["image_url"].startswith("data:image/png;base64,")
    assert list(out[units_column("segment")]) == [1.0, 0.0, 1.0]  # billed per image


def test_hosted_upscale_answers_exactly_scale_times_the_input_keeping_alpha(replicate):
    cutout = np.concatenate([photo(24, 32), np.full((24, 32, 1), 255, np.uint8)], axis=2)
    cutout[:6, :, 3] = 0  # a transparent top band
    out = runtime(UPSCALE, "upscale", scale=4)(batch([cutout, photo(10, 12, 2)]))
    assert list(out["status"]) == ["ok", "ok"], out["error"]
    big = images.load("image", out)
    assert big[0].shape == (96, 128, 4) and big[1].shape == (40, 48, 3)
    # the alpha Lanczos-resized here: clear above the band edge (row 24), opaque below it
    assert not big[0][:12, :, 3].any() and (big[0][36:, :, 3] == 255).all()
    sent = [replicate.arguments_of(i) for i in out[request_column("upscale")]]
    assert [s["scale"] for s in sent] == [4, 4] and all(
        s["image"].startswith("data:image/png;base64,") for s in sent)
    assert replicate.submissions() == 2
    # billed per second of the provider's GPU, as it reported them
    assert list(out[units_column("upscale")]) == [replicate.predict_s] * 2
