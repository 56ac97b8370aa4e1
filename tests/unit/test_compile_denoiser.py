"""``compile: true`` on a generate stage compiles its denoiser: Flux's is its ``transformer``
(the lora stage's UNet is covered in ``test_lora_stage.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.tiny.models import make_tiny_flux
from stages.base import Resources, StagePlan
from stages.generate_diffusers import DiffusersGenerator
from stages.registry import REGISTRY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def flux_tiny(tmp_path_factory) -> Path:
    return make_tiny_flux(tmp_path_factory.mktemp("compile_models") / "flux-tiny")


def make_stage(source: Path, **params) -> DiffusersGenerator:
    card = REGISTRY["generate/flux-schnell"]
    plan = StagePlan(name="generate", card=card,
                     params=card.make_params({"width": 32, "height": 32, "steps": 1, **params}),
                     source=str(source), revision="local", resources=Resources())
    return DiffusersGenerator(plan=plan)


def test_compile_true_compiles_the_flux_transformer(flux_tiny):
    compiled = make_stage(flux_tiny, compile=True).pipe
    assert type(compiled.transformer).__name__ == "FluxTransformer2DModel"
    assert compiled.transformer._compiled_call_impl is not None
    assert make_stage(flux_tiny).pipe.transformer._compiled_call_impl is None
