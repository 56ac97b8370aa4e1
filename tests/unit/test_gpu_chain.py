"""benchmarks/gpu_chain.py (P5, P6) runs its toy shapes on the CPU, so it cannot rot; its real
shapes build (on the meta device: no memory) into the published parameter counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_chain  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_toy_chain_runs_all_five_stages_and_reports_p5_p6(capsys):
    result = gpu_chain.main(["--toy", "--assets", "2"])
    runs = result["stages"]
    assert [r.name for r in runs] == ["generate", "segment", "lora", "recolor", "upscale"]
    assert [r.card for r in runs] == ["generate/flux-schnell", "segment/u2net",
                                      "lora/sdxl-turbo-brand", "recolor/lab",
                                      "upscale/swin2sr-x2"]
    assert all(r.seconds_per_asset > 0 and r.device == "cpu" for r in runs)
    assert [r.batch_size for r in runs] == [4, 16, 4, 8, 4]  # the cards' batch sizes
    assert result["assets_per_hour_per_gpu"] > 0 and result["bottleneck_busy"] is None
    printed = capsys.readouterr().out
    assert "assets/hour/GPU" in printed and "not a P5 figure" in printed
    assert f"P6 bottleneck {result['bottleneck']}: GPU busy n/a" in printed


def test_without_cuda_the_real_run_refuses_and_says_use_toy(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_chain.main([])


def test_real_shapes_are_the_published_architectures():
    def billions(module) -> float:
        return round(sum(p.numel() for p in module.parameters()) / 1e9, 2)

    flux = gpu_chain.build_flux(gpu_chain.REAL, torch.bfloat16, "meta")
    assert billions(flux.transformer) == 11.89 and billions(flux.text_encoder_2) == 4.76
    assert flux.transformer.dtype == torch.bfloat16 and flux.vae_scale_factor == 8
    sdxl = gpu_chain.build_sdxl_img2img(gpu_chain.REAL, torch.float16, "meta")
    assert billions(sdxl.unet) == 2.57 and billions(sdxl.text_encoder_2) == 0.69
    assert sdxl.scheduler.sigmas.device.type == "cpu"  # scheduler state is not the weights'
    assert billions(gpu_chain.build_swin2sr(gpu_chain.REAL, torch.bfloat16, "meta")) == 0.01
