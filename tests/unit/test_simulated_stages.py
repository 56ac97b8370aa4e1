"""The simulated stages: a modelled device time per batch (a fake sleep, nothing waits here),
arrays of the real shapes, and the registry contract their cards keep."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from factory.core import images
from stages.base import STAGE_KINDS, StagePlan
from stages.registry import CARDS, get_card
from stages.simulated import SimParams, SimulatedStage, is_simulated

SIM_CARDS = [c for c in CARDS if is_simulated(c)]


class FakeClock:
    """A clock that only moves when the stage sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def stage_for(name: str, clock: FakeClock, **params) -> SimulatedStage:
    card = get_card(name)
    plan = StagePlan(name=card.kind, card=card, params=card.make_params(params), source="",
                     revision="local", resources=card.resources)
    # threads=0: no Ray to ask how many cores this worker has
    return SimulatedStage(plan=plan, threads=0, sleep=clock.sleep, clock=clock)


def batch(n: int = 3, shape: tuple[int, ...] = (24, 32, 3), *, rejected_last: bool = True):
    rng = np.random.default_rng(0)
    status = ["ok"] * n
    if rejected_last:
        status[-1] = "rejected"
    out = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
           "seed": np.arange(n, dtype=np.int64) + 7,
           "prompt": np.array(["a mug"] * n, dtype=object),
           "negative_prompt": np.array([""] * n, dtype=object),
           "status": np.array(status, dtype=object),
           "error": np.array([""] * n, dtype=object)}
    out.update(images.store("image", [rng.integers(0, 256, shape, dtype=np.uint8)
                                      for _ in range(n)]))
    return out


def test_the_sim_family_covers_the_five_stage_chain():
    kinds = {c.kind: c for c in SIM_CARDS}
    assert set(kinds) == {"generate", "segment", "lora", "recolor", "upscale"}
    # the GPU stages hold GPUs like the real cards; recolor is a CPU stage like recolor/lab
    assert all(c.resources.num_gpus > 0 for c in SIM_CARDS if c.kind != "recolor")
    assert kinds["recolor"].cpu_only and kinds["recolor"].resources.num_gpus == 0
    assert not any(is_simulated(c) for c in CARDS if c not in SIM_CARDS)


def test_the_flux_card_sleeps_its_published_device_time_for_one_image():
    params = get_card("generate/sim-flux-schnell").make_params()
    assert params.device_seconds(1) == pytest.approx(1.54)  # H100, 1024², 4 steps, bf16
    assert (params.width, params.height) == (1024, 1024)


@pytest.mark.parametrize("card", SIM_CARDS, ids=[c.name for c in SIM_CARDS])
def test_a_batch_sleeps_fixed_plus_per_image_for_its_ok_rows(card):
    clock = FakeClock()
    stage = stage_for(card.name, clock, fixed_s=0.5, per_image_s=0.25, time_scale=2.0)
    stage(batch(n=5))  # the rejected row is not rendered, so not charged
    assert clock.sleeps == [pytest.approx(2.0 * (0.5 + 0.25 * 4))]
    assert stage.slept_s == pytest.approx(3.0) and stage.batches == 1
    stage(batch(n=1, rejected_last=True))  # nothing to render: no call, no sleep
    assert len(clock.sleeps) == 1


def test_no_images_cost_nothing_and_the_cost_model_is_validated():
    assert SimParams(fixed_s=1.0, per_image_s=1.0).device_seconds(0) == 0.0
    with pytest.raises(ValidationError):
        SimParams(per_image_s=-1.0)
    with pytest.raises(ValidationError):
        SimParams(time_scale=0)


def test_the_cost_model_and_trace_are_not_part_of_an_assets_key():
    card = get_card("lora/sim-sdxl-turbo-brand")
    slow = card.make_params({"time_scale": 5.0, "trace_dir": "/tmp/x", "per_image_s": 9.0})
    assert slow.key_params() == card.make_params().key_params() == {"lora": "brand"}
    assert card.make_params({"lora": "other"}).key_params() != slow.key_params()


@pytest.mark.parametrize(("name", "params", "shape", "expected"), [
    ("generate/sim-flux-schnell", {"width": 48, "height": 40}, (24, 32, 3), (40, 48, 3)),
    ("segment/sim-u2net", {}, (24, 32, 3), (24, 32, 4)),
    ("lora/sim-sdxl-turbo-brand", {}, (24, 32, 4), (24, 32, 4)),
    ("recolor/sim-lab", {}, (24, 32, 4), (24, 32, 4)),
    ("upscale/sim-swin2sr-x2", {}, (24, 32, 4), (48, 64, 4)),
    ("upscale/sim-swin2sr-x2", {"scale": 3}, (24, 32, 3), (72, 96, 3)),
])
def test_each_kind_emits_new_uint8_arrays_of_the_declared_shape(name, params, shape, expected):
    clock = FakeClock()
    rows = batch(n=3, shape=shape)
    out = stage_for(name, clock, **params)(rows)
    assert list(out["status"]) == ["ok", "ok", "rejected"], out["error"]
    made = images.load("image", out)
    for i, array in enumerate(made[:2]):
        assert array.dtype == np.uint8 and array.shape == expected
        assert not np.shares_memory(array, rows["image"][i])
    assert made[2] is None
    assert out["ms_" + get_card(name).kind][2] == 0.0  # a row not rendered is not charged


def test_segment_cuts_an_opaque_product_out_of_a_transparent_ground():
    out = stage_for("segment/sim-u2net", FakeClock())(batch(n=2, rejected_last=False))
    alpha = images.load("image", out)[0][..., 3]
    assert alpha[12, 16] == 255 and alpha[0, 0] == 0 and set(np.unique(alpha)) == {0, 255}


def test_generated_images_differ_by_seed():
    out = stage_for("generate/sim-flux-schnell", FakeClock(), width=16, height=16)(
        batch(n=2, rejected_last=False))
    first, second = images.load("image", out)
    assert not np.array_equal(first, second)


def test_each_batch_is_traced_with_its_modelled_device_time(tmp_path):
    clock = FakeClock()
    stage = stage_for("upscale/sim-swin2sr-x2", clock, trace_dir=str(tmp_path / "trace"),
                      fixed_s=0.1, per_image_s=0.2)
    stage(batch(n=4))
    stage(batch(n=2, rejected_last=False))
    (path,) = (tmp_path / "trace").glob("upscale-*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["rows"] for r in records] == [3, 2]
    assert [r["device_s"] for r in records] == [pytest.approx(0.7), pytest.approx(0.5)]
    assert all(r["end"] - r["start"] == pytest.approx(r["device_s"]) for r in records)
    assert all(r["stage"] == "upscale" and "device=cpu" in r["placement"] for r in records)


@pytest.mark.parametrize("card", SIM_CARDS, ids=[c.name for c in SIM_CARDS])
def test_sim_cards_keep_the_registry_contract(card):
    """What ``tests/contract`` asserts of every card, here without sleeping."""
    assert card.kind in STAGE_KINDS and card.name.startswith(f"{card.kind}/sim-")
    assert card.weight_format == "none" and card.source == "" and card.family == ""
    assert card.resources.num_cpus > 0 and card.resources.batch_size >= 1
    assert card.outputs == ("image",) and card.description
    params = card.make_params(card.example_params)
    for key, value in card.defaults.items():
        assert getattr(params, key) == value, key
    with pytest.raises(ValidationError):
        card.params.model_validate({**card.example_params, "no_such_param": 1})
    with pytest.raises(ValidationError):
        params.__setattr__("fixed_s", 1.0)  # frozen
    clock = FakeClock()
    plan = StagePlan(name=card.kind, card=card, params=params, source="", revision="local",
                     resources=replace(card.resources, num_gpus=0))
    out = SimulatedStage(plan=plan, threads=0, sleep=clock.sleep, clock=clock)(batch(n=3))
    assert list(out["sku"]) == ["S0", "S1", "S2"] and out["error"][2] == ""
    assert f"ms_{card.kind}" in out and f"{card.kind}_placement" in out


def test_the_sim_job_mirrors_catalog_gpu_placements():
    from pathlib import Path

    from factory.spec.job import load_job

    jobs = Path(__file__).resolve().parents[2] / "jobs"
    sim, gpu = load_job(jobs / "catalog-sim.yaml"), load_job(jobs / "catalog-gpu.yaml")
    assert [p.card.kind for p in sim.stages] == [p.card.kind for p in gpu.stages]
    assert all(is_simulated(p.card) for p in sim.stages)
    assert [p.resources for p in sim.stages] == [p.resources for p in gpu.stages]
