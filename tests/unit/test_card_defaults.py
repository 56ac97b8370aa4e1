"""Cards carry defaults (params and resources); a spec overrides them key by key; ``dtype:
auto`` is the card's half precision on CUDA and float32 on a CPU; TF32 is on under CUDA."""

from __future__ import annotations

import pytest
import torch

from factory.spec.job import SpecError, parse_job
from stages import weights
from stages.generate_diffusers import FluxGenerateParams
from stages.registry import CARDS, REGISTRY


def spec(*stages: dict) -> dict:
    return {"name": "t", "manifest": {"uri": "m.csv"}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }}"}, "stages": list(stages)}


def test_a_spec_overrides_card_defaults_key_by_key():
    job = parse_job(spec({"kind": "generate", "model": "flux-schnell",
                          "params": {"steps": 2}, "resources": {"batch_size": 2}}))
    plan = job.stages[0]
    card = REGISTRY["generate/flux-schnell"]
    assert (plan.params.width, plan.params.height) == (1024, 1024)  # the card's
    assert plan.params.steps == 2 and plan.params.guidance == 0.0  # the spec's, the card's
    assert plan.params.dtype == "auto" and card.cuda_dtype == "bfloat16"
    assert plan.resources.batch_size == 2  # the spec's
    assert plan.resources.num_gpus == card.resources.num_gpus  # the card's
    turbo = parse_job(spec({"kind": "generate", "model": "sd-turbo"})).stages[0].params
    assert (turbo.width, turbo.steps, turbo.guidance) == (512, 1, 0.0)


def test_every_card_default_is_a_valid_param():
    for card in CARDS:
        params = card.make_params(card.example_params)
        for key, value in card.defaults.items():
            assert getattr(params, key) == value, (card.name, key)


@pytest.mark.parametrize("key", ["width", "height"])
def test_flux_sizes_must_be_multiples_of_16_naming_the_key(key):
    with pytest.raises(SpecError, match=rf"stages\[0\]\.params\.{key}: .*multiple of 16"):
        parse_job(spec({"kind": "generate", "model": "flux-schnell", "params": {key: 1000}}))
    parse_job(spec({"kind": "generate", "model": "sdxl-turbo", "params": {key: 1000}}))
    assert FluxGenerateParams.size_multiple == 16


def test_diffusion_and_upscale_cards_name_a_half_precision_for_cuda():
    for card in CARDS:
        if card.family in ("sd", "sdxl", "flux", "swin2sr"):
            assert card.cuda_dtype in ("float16", "bfloat16"), card.name
            assert card.make_params(card.example_params).dtype == "auto", card.name
    assert REGISTRY["generate/flux-schnell"].cuda_dtype == "bfloat16"


@pytest.fixture
def tf32_off():
    """TF32 off for the test, and as it was afterwards (the flags are process-wide)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_forced_cuda_turns_tf32_on(monkeypatch, tf32_off):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert weights.torch_device(1) == "cpu" and not torch.backends.cuda.matmul.allow_tf32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert weights.torch_device(0) == "cpu"  # no GPU reserved: no CUDA
    assert weights.torch_device(0.5) == "cuda"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


CPU_ONLY = [c for c in CARDS if c.cpu_only]


def test_every_model_free_card_but_the_gpu_stand_in_is_cpu_only():
    # a card without weights has nothing to put on a GPU; generate/synthetic may hold one: it
    # stands in for a GPU stage in the placement and pricing tests, and the simulated GPU
    # stages (stages.simulated) hold theirs while they sleep a GPU's time
    model_free = {c.name for c in CARDS if c.weight_format == "none"}
    gpu_stand_ins = {"generate/synthetic", "generate/sim-flux-schnell", "segment/sim-u2net",
                     "lora/sim-sdxl-turbo-brand", "upscale/sim-swin2sr-x2"}
    assert {c.name for c in CPU_ONLY} == model_free - gpu_stand_ins
    assert {c.name for c in CPU_ONLY} >= {"recolor/lab", "upscale/lanczos",
                                          "identity/passthrough"}
    parse_job(spec({"kind": "generate", "model": "synthetic", "resources": {"num_gpus": 1}}))


@pytest.mark.parametrize("card", CPU_ONLY, ids=[c.name for c in CPU_ONLY])
@pytest.mark.parametrize("gpus", [1, 0.5])
def test_a_model_free_card_reserving_a_gpu_is_rejected_naming_the_key(card, gpus):
    kind, model = card.name.split("/")
    first = {"kind": "generate", "model": "synthetic"}
    stage = {"kind": kind, "model": model, "params": dict(card.example_params)}
    chain = [stage] if kind in ("generate", "source") else [first, stage]
    if kind == "scene":  # a scene builds around a cut-out (the hosted scene card)
        chain = [first, {"kind": "segment", "model": "studio-key"}, stage]
    at = len(chain) - 1
    parse_job(spec(*chain))  # the card's own resources: no GPU
    stage["resources"] = {"num_gpus": gpus}
    with pytest.raises(SpecError) as err:
        parse_job(spec(*chain))
    assert (f"stages[{at}].resources.num_gpus: {card.name} runs on the CPU and cannot use a "
            "GPU; set it to 0") in str(err.value)
    stage["resources"] = {"num_gpus": 0}
    parse_job(spec(*chain))


def test_models_list_shows_the_card_defaults():
    from click.testing import CliRunner

    from factory.cli.main import main

    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("generate/flux-schnell "))
    flux = lines[at] + lines[at + 1]  # the card's line, then its defaults' line
    assert "black-forest-labs/FLUX.1-schnell" in flux and "gpus=1 " in flux
    for shown in ("width=1024", "height=1024", "steps=4", "guidance=0.0", "bfloat16 on CUDA"):
        assert shown in flux, shown
    names = {line.split()[0] for line in lines if line[:1].strip()}
    assert names == {card.name for card in CARDS}  # every card is listed
