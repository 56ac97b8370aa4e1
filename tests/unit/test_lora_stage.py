"""The LoRA img2img stage on the tiny SD pipeline and tiny brand LoRA: hermetic, CPU only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from factory.core import images
from stages.tiny.models import make_tiny_lora, make_tiny_sd
from stages.base import Resources, StagePlan
from stages.lora_diffusers import LoraImg2Img, LoraParams, schedule_length
from stages.registry import CARDS as ALL_CARDS
from stages.simulated import is_simulated

CARDS = tuple(c for c in ALL_CARDS if c.kind == "lora" and not is_simulated(c))

TINY_CARD = CARDS[0]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora_models")
    make_tiny_sd(root / "sd-tiny")
    make_tiny_lora(root / "sd-tiny", root / "sd-tiny-lora")
    return root


def make_stage(models_root: Path, **params) -> LoraImg2Img:
    params = {"lora": str(models_root / "sd-tiny-lora"), "steps": 1, **params}
    plan = StagePlan(name="lora", card=TINY_CARD, params=LoraParams(**params),
                     source=str(models_root / "sd-tiny"), revision="local",
                     resources=Resources(), models_dir=str(models_root))
    return LoraImg2Img(plan=plan)


@pytest.fixture(scope="module")
def stage(models_root) -> LoraImg2Img:
    return make_stage(models_root)


def image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


def make_batch(arrays, seeds=None, prompts=None, negatives=None) -> dict[str, np.ndarray]:
    n = len(arrays)
    batch = {
        "sku": np.array([f"S{i}" for i in range(n)], dtype=object),
        "status": np.array(["ok"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "failed_stage": np.array([""] * n, dtype=object),
        "prompt": np.array(prompts or ["a red mug"] * n, dtype=object),
        "negative_prompt": np.array(negatives or [""] * n, dtype=object),
        "seed": np.array(seeds or [7] * n, dtype=np.int64),
    }
    batch.update(images.store("image", arrays))
    return batch


def run(stage: LoraImg2Img, batch) -> list[np.ndarray]:
    out = stage(batch)
    assert list(out["status"]) == ["ok"] * len(batch["sku"]), out["error"]
    return images.load("image", out)


class Spy:
    """Stands in for the pipeline: records each call, raises for a poison prompt."""

    def __init__(self, pipe, poison: str | None = None) -> None:
        self.pipe, self.poison, self.calls = pipe, poison, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.poison and self.poison in kwargs["prompt"]:
            raise ValueError(f"cannot render '{self.poison}'")
        return self.pipe(**kwargs)


def test_rgba_keeps_alpha_and_size_and_rgb_stays_rgb(stage):
    alpha_odd = image(60, 44, 4, seed=1)
    alpha_square = image(32, 32, 4, seed=2)
    alpha_square[..., 3] = 0  # fully transparent: RGB is all background before diffusion
    arrays = [alpha_odd, image(32, 32, 3), alpha_square, image(60, 44, 3, seed=3)]
    outs = run(stage, make_batch(arrays, seeds=[1, 2, 3, 4]))
    for source, out in zip(arrays, outs):
        assert out.shape == source.shape and out.dtype == np.uint8
        if source.shape[2] == 4:
            assert out[..., 3].tobytes() == source[..., 3].tobytes()
        assert not np.array_equal(out[..., :3], source[..., :3])


def test_sizes_go_to_the_pipeline_as_multiples_of_8(models_root, monkeypatch):
    stage = make_stage(models_root)
    spy = Spy(stage.pipe)
    monkeypatch.setattr(stage, "pipe", spy)
    run(stage, make_batch([image(60, 44), image(32, 32), image(60, 44, seed=5)]))
    assert len(spy.calls) == 2  # one batched call per input size
    sizes = sorted(tuple(im.size) for call in spy.calls for im in call["image"])
    assert sizes == [(32, 32), (48, 64), (48, 64)]  # PIL sizes are (width, height)


def test_lora_changes_the_output_and_scale_zero_is_the_base_model(stage, models_root):
    batch = make_batch([image(32, 32), image(28, 20, 4)], seeds=[3, 4])
    branded = run(stage, batch)
    scale_zero = run(make_stage(models_root, adapter_scale=0.0), batch)
    no_lora = run(make_stage(models_root, lora=None), batch)
    for b, z, n in zip(branded, scale_zero, no_lora):
        assert not np.array_equal(b, z)
        assert z.tobytes() == n.tobytes()  # weight 0 adds exact zeros


def test_same_inputs_give_identical_bytes(stage, models_root):
    batch = make_batch([image(32, 32), image(28, 20, 4)], seeds=[11, 12])
    first = run(stage, batch)
    again = run(stage, batch)
    fresh = run(make_stage(models_root), batch)  # another actor
    for a, b, c in zip(first, again, fresh):
        assert a.tobytes() == b.tobytes() == c.tobytes()


def test_different_seeds_give_different_outputs(models_root):
    # full-strength denoising, so the seed's noise dominates even with tiny random weights
    # (at low strength the two outputs can round to the same bytes)
    same = image(32, 32)
    a, b = run(make_stage(models_root, strength=1.0, steps=2), make_batch([same, same],
                                                                           seeds=[1, 2]))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5


def test_tiny_lora_ref_resolves_through_models_dir(stage, models_root):
    batch = make_batch([image(32, 32)], seeds=[5])
    by_ref = run(make_stage(models_root, lora="tiny:sd-tiny-lora"), batch)
    by_path = run(stage, batch)
    assert by_ref[0].tobytes() == by_path[0].tobytes()


def test_lora_file_path_loads_like_its_directory(stage, models_root):
    path = models_root / "sd-tiny-lora" / "pytorch_lora_weights.safetensors"
    batch = make_batch([image(32, 32)], seeds=[5])
    assert run(make_stage(models_root, lora=str(path)), batch)[0].tobytes() == \
        run(stage, batch)[0].tobytes()


@pytest.mark.parametrize("layout", ["file", "directory", "weight_name"])
def test_pickle_lora_is_refused_naming_stage_and_model(models_root, tmp_path, layout):
    if layout == "file":
        lora, extra = tmp_path / "lora.bin", {}
        lora.write_bytes(b"not really a pickle")
    elif layout == "directory":
        lora, extra = tmp_path, {}
        (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"not really a pickle")
    else:
        lora, extra = models_root / "sd-tiny-lora", {"weight_name": "brand.bin"}
    with pytest.raises(RuntimeError, match="stage 'lora': model 'lora/sd-tiny-brand'") as err:
        make_stage(models_root, lora=str(lora), **extra)
    assert "allow_pickle" in str(err.value)


def test_a_row_the_pipeline_cannot_render_fails_alone(models_root, monkeypatch):
    stage = make_stage(models_root)
    monkeypatch.setattr(stage, "pipe", Spy(stage.pipe, poison="explode"))
    arrays = [image(32, 32), image(32, 32, 4, seed=1), image(32, 32, seed=2)]
    out = stage(make_batch(arrays, prompts=["a mug", "explode", "a cup"]))
    assert list(out["status"]) == ["ok", "failed", "ok"]
    assert out["failed_stage"][1] == "lora" and "cannot render 'explode'" in out["error"][1]
    produced = images.load("image", out)
    assert produced[1] is None
    assert produced[0].shape == (32, 32, 3) and produced[2].shape == (32, 32, 3)


@pytest.mark.parametrize("guidance, expected", [(0.0, False), (2.0, True)])
def test_negative_prompts_only_with_guidance(models_root, monkeypatch, guidance, expected):
    stage = make_stage(models_root, guidance=guidance)
    spy = Spy(stage.pipe)
    monkeypatch.setattr(stage, "pipe", spy)
    run(stage, make_batch([image(32, 32)], negatives=["blurry"]))
    assert ("negative_prompt" in spy.calls[0]) is expected


def test_steps_are_the_denoising_steps_run(models_root):
    stage = make_stage(models_root, steps=2, strength=0.35)  # diffusers alone would run 0
    calls = []
    hook = stage.pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        run(stage, make_batch([image(32, 32)] * 2))
    finally:
        hook.remove()
    assert len(calls) == 2


@pytest.mark.parametrize("steps, strength", [(1, 0.35), (2, 0.35), (4, 0.35), (7, 0.7),
                                             (3, 0.3), (5, 1.0), (1, 0.01)])
def test_schedule_length_runs_exactly_steps(steps, strength):
    n = schedule_length(steps, strength)
    assert min(int(n * strength), n) == steps


@pytest.mark.parametrize("bad", [{"background": "white"}, {"strength": 0.0}, {"adapter_scale": 3},
                                 {"weight_name": "x.safetensors"}, {"lora": "x", "nope": 1}])
def test_bad_params_are_rejected(bad):
    with pytest.raises(ValidationError):
        LoraParams(**bad)


def test_cards_are_constructible_from_their_examples():
    names = [card.name for card in CARDS]
    assert names == ["lora/sd-tiny-brand", "lora/sd-turbo-brand", "lora/sdxl-turbo-brand"]
    for card in CARDS:
        params = card.params.model_validate(dict(card.example_params))
        assert card.inputs == ("image", "prompt", "negative_prompt", "seed")
        assert card.outputs == ("image",) and isinstance(params, LoraParams)
    assert CARDS[0].example_params["lora"] == "tiny:sd-tiny-lora"


def test_the_lora_is_fused_at_load_and_renders_as_the_separate_adapter(models_root):
    from peft.tuners.tuners_utils import BaseTunerLayer

    # float32: fusing is exact up to float32 rounding; bf16 rounds W + 0.8 BA otherwise
    fused = make_stage(models_root, adapter_scale=0.8, dtype="float32")
    separate = make_stage(models_root, adapter_scale=0.8, fuse=False, dtype="float32")
    assert fused.fused and not separate.fused
    assert not any(isinstance(m, BaseTunerLayer) for m in fused.pipe.unet.modules())
    assert any(isinstance(m, BaseTunerLayer) for m in separate.pipe.unet.modules())
    batch = make_batch([image(32, 32), image(28, 20, 4)], seeds=[3, 4])
    base = run(make_stage(models_root, lora=None, dtype="float32"), batch)
    for a, b, c in zip(run(fused, batch), run(separate, batch), base):
        assert np.abs(a.astype(int) - b).max() <= 1  # W + 0.8 BA once == per step
        assert not np.array_equal(a, c)


def test_compile_true_compiles_the_denoiser(models_root):
    assert make_stage(models_root, compile=True).pipe.unet._compiled_call_impl is not None
    assert make_stage(models_root).pipe.unet._compiled_call_impl is None
