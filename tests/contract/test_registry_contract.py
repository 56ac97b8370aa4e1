"""The contract every registry card keeps, run with a tiny model of its family.

Cards that name hub weights (which cannot be downloaded here) run their runtime class on the
tiny model of the same architecture: the card's params, columns and metrics are what is tested.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from factory import images
from stages.base import STAGE_KINDS, Stage, StagePlan
from stages.registry import CARDS, REGISTRY, UnknownModelError, get_card
from stages.weights import resolve_source


def tiny_source(card, params, models_dir: Path) -> str:
    """The tiny stand-in for a card's weights ('' for model-free cards)."""
    if not card.source:
        return ""
    if card.source.startswith("tiny:"):
        return resolve_source(card.source, models_dir)
    family = {"generate": "sd-tiny", "lora": "sd-tiny", "segment": "u2net-tiny.onnx"}
    if card.kind == "upscale":
        scale = getattr(params, "scale", None) or (4 if "x4" in card.name else 2)
        return str(models_dir / f"swin2sr-tiny-x{scale}")
    return str(models_dir / family[card.kind])


def make_batch(n: int = 3, size: tuple[int, int] = (40, 48)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
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
    params = card.params.model_validate(dict(card.example_params))
    with pytest.raises(ValidationError):
        card.params.model_validate({**card.example_params, "no_such_param": 1})
    with pytest.raises(ValidationError):
        params.__class__.model_validate(params.model_dump()).__setattr__("x", 1)


@pytest.mark.parametrize("card", CARDS, ids=[c.name for c in CARDS])
def test_card_runs_a_batch_with_a_tiny_model(card, models_dir):
    params = card.params.model_validate(dict(card.example_params))
    if card.kind == "generate" and hasattr(params, "width"):
        params = params.model_copy(update={"width": 32, "height": 32, "steps": 1}
                                   if hasattr(params, "steps") else {"width": 32, "height": 32})
    if card.kind == "lora" and getattr(params, "steps", None):
        params = params.model_copy(update={"steps": 2})
    plan = StagePlan(name=card.kind, card=card, params=params,
                     source=tiny_source(card, params, models_dir), revision="local",
                     resources=replace(card.resources, num_gpus=0), models_dir=str(models_dir))
    stage = card.runtime(plan=plan)
    batch = make_batch()
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
