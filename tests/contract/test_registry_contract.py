"""The contract every registry card keeps, run with a tiny model of its family.

Cards that name hub weights (which cannot be downloaded here) run their runtime class on the
tiny model of the same architecture: the card's params, columns and metrics are what is tested.
"""

from __future__ import annotations

from dataclasses import replace
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from factory.core import images
from stages.base import STAGE_KINDS, Stage, StagePlan
from stages.registry import CARDS, REGISTRY, UnknownModelError, get_card
from stages.tiny.models import FAMILY_LORAS, FAMILY_MODELS
from stages.weights import resolve_source

TORCH_FAMILIES = ("sd", "sdxl", "flux", "swin2sr", "sd-inpaint", "sdxl-inpaint", "flux-fill")
TORCH_CARDS = [c for c in CARDS if c.family in TORCH_FAMILIES]


def tiny_source(card, params, models_dir: Path) -> str:
    """The tiny model of the card's own family ('' for model-free cards)."""
    if not card.source:
        return ""
    if card.source.startswith("tiny:"):
        return resolve_source(card.source, models_dir)
    if card.family == "swin2sr":
        scale = getattr(params, "scale", None) or (4 if "x4" in card.name else 2)
        return str(models_dir / f"swin2sr-tiny-x{scale}")
    # BiRefNet and BRIA have no batchable tiny ONNX stand-in: the u2net contract runs them
    return str(models_dir / FAMILY_MODELS.get(card.family, "u2net-tiny.onnx"))


def tiny_params(card, models_dir: Path):
    """The card's params at toy sizes, with its family's tiny LoRA for a hub LoRA card."""
    params = card.make_params(card.example_params)
    update: dict = {}
    if card.kind in ("generate", "scene") and "width" in type(params).model_fields:
        update = {"width": 32, "height": 32}
        if "steps" in type(params).model_fields:
            update["steps"] = 1
    if card.kind == "lora":
        update["steps"] = 2
        if not params.lora:
            update["lora"] = str(models_dir / FAMILY_LORAS[card.family])
    return params.model_copy(update=update)


def plan_for(card, models_dir: Path, *, num_gpus: float = 0) -> StagePlan:
    params = tiny_params(card, models_dir)
    return StagePlan(name=card.kind, card=card, params=params,
                     source=tiny_source(card, params, models_dir), revision="local",
                     resources=replace(card.resources, num_gpus=num_gpus),
                     models_dir=str(models_dir))


def make_batch(n: int = 3, size: tuple[int, int] = (40, 48), *,
               cutout: bool = False) -> dict[str, np.ndarray]:
    """``n`` rows, the last one rejected; ``cutout``: RGBA images whose alpha is an opaque
    ellipse (a product as a segment stage cuts it out), what a scene stage takes."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (*size, 4 if cutout else 3), dtype=np.uint8)
              for _ in range(n)]
    if cutout:
        yy, xx = np.mgrid[:size[0], :size[1]] / np.array(size)[:, None, None]
        inside = ((yy - 0.5) / 0.35) ** 2 + ((xx - 0.5) / 0.25) ** 2 <= 1
        for array in arrays:
            array[..., 3] = np.where(inside, 255, 0)
    batch = {
        "sku": np.array([f"C{i}" for i in range(n)], dtype=object),
        "variant": np.array(["v"] * n, dtype=object),
        "seed": np.arange(n, dtype=np.int64) + 11,
        "prompt": np.array(["a red mug"] * n, dtype=object),
        "negative_prompt": np.array([""] * n, dtype=object),
        "width": np.zeros(n, dtype=np.int64),
        "height": np.zeros(n, dtype=np.int64),
        "palette": np.array([""] * n, dtype=object),
        "row": np.arange(1, n + 1, dtype=np.int64),
        "status": np.array(["ok"] * (n - 1) + ["rejected"], dtype=object),
        "error": np.array([""] * (n - 1) + ["seed: bad"], dtype=object),
        "failed_stage": np.array([""] * n, dtype=object),
    }
    batch.update(images.store("image", arrays))
    return batch


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_card_is_well_formed(card):
    assert card.kind in STAGE_KINDS and card.name.startswith(f"{card.kind}/")
    assert issubclass(card.runtime, Stage)
    assert card.weight_format in ("safetensors", "onnx", "none")
    assert (card.weight_format == "none") == (card.source == "")
    assert card.resources.num_gpus >= 0 and card.resources.batch_size >= 1
    assert card.resources.num_cpus > 0 and card.resources.concurrency >= 1
    assert card.outputs and card.description
    params = card.make_params(card.example_params)
    with pytest.raises(ValidationError):
        card.params.model_validate({**card.example_params, "no_such_param": 1})
    with pytest.raises(ValidationError):
        params.__class__.model_validate(params.model_dump()).__setattr__("x", 1)


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_card_runs_a_batch_with_a_tiny_model(card, models_dir, tmp_path, monkeypatch):
    if card.hosted is not None:  # its provider's stand-in on loopback is its tiny model
        from tests.support import hosted_api, replicate_api

        api = {"fal": hosted_api, "replicate": replicate_api}[card.hosted.provider].shared()
        api.reset()
        for name, value in api.env().items():
            monkeypatch.setenv(name, value)
    stage = card.runtime(plan=plan_for(card, models_dir))
    batch = make_batch(cutout=card.kind == "scene")
    if card.kind == "source":  # the stored photo each row's fetch left (factory.run.sources)
        from PIL import Image

        stored = tmp_path / "photo.png"
        Image.fromarray(images.load("image", batch)[0]).save(stored)
        batch["source_uri"] = np.array([str(stored)] * 3, dtype=object)
    out = stage(batch)
    assert list(out["sku"]) == list(batch["sku"])
    assert list(out["status"]) == ["ok", "ok", "rejected"], out["error"]
    assert out["error"][2] == "seed: bad"  # a row that was not ok passes untouched
    for column in card.outputs:
        produced = images.load(column, out)
        for array in produced[:2]:
            assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] in (3, 4)
        assert produced[2] is None
    for name, kind in card.metrics:
        assert out[name].dtype == np.float64 and np.isfinite(out[name][:2]).all()
    assert f"ms_{card.kind}" in out


def test_registry_names_are_unique_and_complete():
    assert len(REGISTRY) == len(CARDS)
    kinds = {c.kind for c in CARDS}
    assert {"generate", "recolor"} <= kinds


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(UnknownModelError) as err:
        get_card("nope", "recolor")
    assert "unknown model 'nope'" in str(err.value) and "recolor/lab" in str(err.value)
    assert get_card("lab", "recolor") is REGISTRY["recolor/lab"]


@pytest.mark.parametrize("card", [c for c in CARDS if c.hosted is not None],
                         ids=[c.name for c in CARDS if c.hosted is not None])
def test_a_hosted_card_names_its_provider_price_and_limit(card):
    from stages.hosted import _clients, BILLING_UNITS

    assert card.hosted.provider in _clients() and card.hosted.endpoint.count("/") >= 1
    assert card.hosted.unit in BILLING_UNITS and card.hosted.usd_per_unit > 0
    assert card.hosted.price_source and card.hosted.concurrency >= 1
    assert card.cpu_only and card.resources.num_gpus == 0 and card.source == ""


def test_every_model_card_names_its_family():
    for card in CARDS:
        assert (card.family == "") == (card.weight_format == "none"), card.name
        if card.kind in ("generate", "lora", "scene") and card.source:
            assert card.family in FAMILY_MODELS, card.name
    assert {c.family for c in CARDS} >= {"sd", "sdxl", "flux", "swin2sr", "u2net"}


def _modules(stage) -> dict:
    if hasattr(stage, "pipe"):
        return {name: module for name, module in stage.pipe.components.items()
                if isinstance(module, torch.nn.Module)}
    return {"model": stage.model}


@pytest.mark.parametrize("card", TORCH_CARDS, ids=[c.name for c in TORCH_CARDS])
def test_under_cuda_each_family_loads_in_its_cards_dtype(card, models_dir, monkeypatch):
    """CUDA mocked at ``torch.cuda.is_available``; the one ``.to("cuda")`` (``to_device``) is
    recorded and left on the CPU, which cannot hold CUDA tensors. A forward hook sees the
    dtype that reaches the denoiser (or the upscaler) in a real batch."""
    import stages.weights

    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(stages.weights, "to_device", lambda m, d: moved.append(d) or m)
    # every module the runtime's loading runs in (a scene stage loads as the generate stage)
    for module in {sys.modules[c.__module__] for c in card.runtime.__mro__}:
        if hasattr(module, "to_device"):
            monkeypatch.setattr(module, "to_device", lambda m, d: moved.append(d) or m)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        stage = card.runtime(plan=plan_for(card, models_dir, num_gpus=1))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    expected = getattr(torch, card.cuda_dtype)
    assert moved == ["cuda"] and stage.device == "cuda" and stage.dtype is expected
    for name, module in _modules(stage).items():
        assert {p.dtype for p in module.parameters()} == {expected}, name
    seen = []
    core = getattr(stage, "model", None) or getattr(stage.pipe, "transformer", None) \
        or stage.pipe.unet
    core.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        next(v for v in (*args, *kwargs.values()) if torch.is_tensor(v)).dtype),
        with_kwargs=True)
    stage.device = "cpu"  # where the modules really are: the upscaler's tiles follow it
    # small: half precision is slow on a CPU
    out = stage(make_batch(n=2, size=(16, 16), cutout=card.kind == "scene"))
    assert list(out["status"]) == ["ok", "rejected"], out["error"]
    assert seen and set(seen) == {expected}


@pytest.mark.parametrize("card", TORCH_CARDS, ids=[c.name for c in TORCH_CARDS])
def test_on_a_cpu_every_family_loads_in_the_cpu_dtype(card, models_dir):
    """bfloat16 on a CPU with AMX-BF16 or AVX512-BF16, float32 on others (stages.precision)."""
    from stages.precision import cpu_bf16

    expected = torch.bfloat16 if cpu_bf16() else torch.float32
    stage = card.runtime(plan=plan_for(card, models_dir, num_gpus=0))
    assert stage.device == "cpu" and stage.dtype is expected
    for name, module in _modules(stage).items():
        assert {p.dtype for p in module.parameters()} == {expected}, name


def test_the_flux_size_rule_holds_for_rows_too(models_dir):
    flux = get_card("generate/flux-schnell")
    stage = flux.runtime(plan=plan_for(flux, models_dir))
    assert stage.pipe.vae_scale_factor * 2 == flux.params.size_multiple == 16
    batch = make_batch(n=3, size=(32, 32))
    batch["width"] = np.array([40, 48, 0])  # 40 is a multiple of 8, not of 16
    out = stage(batch)
    assert list(out["status"]) == ["failed", "ok", "rejected"]
    assert "needs multiples of 16" in out["error"][0]
    assert images.load("image", out)[1].shape == (32, 48, 3)
    sdxl = get_card("generate/sdxl-turbo")
    out = sdxl.runtime(plan=plan_for(sdxl, models_dir))(batch)
    assert list(out["status"]) == ["ok", "ok", "rejected"]
    assert images.load("image", out)[0].shape == (32, 40, 3)
