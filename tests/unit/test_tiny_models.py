"""Tests for stages.tiny.models: tiny real-architecture models load via real loaders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    from stages.tiny import models as tiny_models
except ImportError:  # running plain `pytest` without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from stages.tiny import models as tiny_models

from stages.tiny.common import MARKER  # noqa: E402 - after the path set-up above

PROMPTS = ["a red fox in the snow", "Café au lait, 100% organic! 😀", "", "brand logo on a mug"]
FORBIDDEN_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build every tiny model once for the whole module."""
    return tiny_models.make_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="module")
def init_image():
    """A deterministic 64x64 RGB image for img2img."""
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))


def _generators(n: int = 4) -> list:
    import torch

    return [torch.Generator().manual_seed(i) for i in range(n)]


def _load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _img2img(pipe, image, **kwargs) -> np.ndarray:
    return pipe(
        PROMPTS,
        image=[image] * len(PROMPTS),
        strength=0.6,
        num_inference_steps=2,
        guidance_scale=1.0,
        generator=_generators(),
        output_type="np",
        **kwargs,
    ).images


def test_make_all_layout(models: dict[str, Path]) -> None:
    assert set(models) == {"sd-tiny", "sd-tiny-lora", "sdxl-tiny", "sdxl-tiny-lora", "flux-tiny",
                           "swin2sr-tiny-x2", "swin2sr-tiny-x4", "u2net-tiny.onnx",
                           "sd-inpaint-tiny", "sdxl-inpaint-tiny", "flux-fill-tiny"}
    for name, path in models.items():
        assert tiny_models.is_complete(path), name
    assert models["u2net-tiny.onnx"].is_file()


def test_weights_are_safetensors_only(models: dict[str, Path]) -> None:
    files = [p for path in models.values() if path.is_dir() for p in path.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in FORBIDDEN_SUFFIXES]
    for sub in ("unet", "vae", "text_encoder"):
        assert any((models["sd-tiny"] / sub).glob("*.safetensors")), sub
    assert (models["sd-tiny-lora"] / "pytorch_lora_weights.safetensors").is_file()
    for name in ("swin2sr-tiny-x2", "swin2sr-tiny-x4"):
        assert (models[name] / "model.safetensors").is_file()
    total = sum(p.stat().st_size for p in (models["sd-tiny"]).rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024


def test_tokenizer_pads_arbitrary_text(models: dict[str, Path]) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(models["sd-tiny"], subfolder="tokenizer")
    assert tok.model_max_length == 77
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert [len(row) for row in ids] == [77] * 4
    assert all(row[0] == tok.bos_token_id for row in ids)
    # Byte-level vocab: non-ASCII text maps to real tokens, never to <unk>.
    assert tok.unk_token_id not in tok("wörld 😀 naïve").input_ids[1:-1]
    assert (models["sd-tiny"] / "tokenizer" / "vocab.json").is_file()


def test_text2img_batch(models: dict[str, Path]) -> None:
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    pipe = AutoPipelineForText2Image.from_pretrained(models["sd-tiny"])
    assert isinstance(pipe, StableDiffusionPipeline)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np")
    images = pipe(PROMPTS, generator=_generators(), **kwargs).images
    assert images.shape == (4, 64, 64, 3)
    assert np.isfinite(images).all() and images.min() >= 0.0 and images.max() <= 1.0
    assert not np.allclose(images[0], images[1])  # different seeds/prompts per row
    again = pipe(PROMPTS, generator=_generators(), **kwargs).images
    np.testing.assert_allclose(images, again, atol=1e-5)


def test_img2img_and_lora_changes_output(models: dict[str, Path], init_image) -> None:
    from diffusers import AutoPipelineForImage2Image, StableDiffusionImg2ImgPipeline

    pipe = AutoPipelineForImage2Image.from_pretrained(models["sd-tiny"])
    assert isinstance(pipe, StableDiffusionImg2ImgPipeline)
    pipe.set_progress_bar_config(disable=True)
    base = _img2img(pipe, init_image)
    assert base.shape == (4, 64, 64, 3)

    pipe.load_lora_weights(models["sd-tiny-lora"], adapter_name="brand")
    assert pipe.get_active_adapters() == ["brand"]
    with_lora = _img2img(pipe, init_image)
    assert np.abs(with_lora - base).max() > 5e-3

    pipe.set_adapters(["brand"], adapter_weights=[0.0])
    np.testing.assert_allclose(_img2img(pipe, init_image), base, atol=1e-5)
    pipe.set_adapters(["brand"], adapter_weights=[0.5])
    half = _img2img(pipe, init_image)
    assert np.abs(half - base).max() > 1e-3 and np.abs(half - with_lora).max() > 1e-3


def test_lora_weights_nonzero_diffusers_format(models: dict[str, Path]) -> None:
    tensors = _load_tensors(models["sd-tiny-lora"] / "pytorch_lora_weights.safetensors")
    assert tensors and all(k.startswith("unet.") for k in tensors)
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        assert any(f".{proj}." in k for k in tensors), proj
    assert all(float(t.abs().sum()) > 0 for t in tensors.values())


@pytest.mark.parametrize("upscale", [2, 4])
def test_swin2sr_upscales(models: dict[str, Path], upscale: int) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, Swin2SRForImageSuperResolution

    path = models[f"swin2sr-tiny-x{upscale}"]
    model = Swin2SRForImageSuperResolution.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    assert model.config.upscale == upscale
    image = Image.fromarray((np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8))
    inputs = processor(image, return_tensors="pt")
    height, width = inputs["pixel_values"].shape[-2:]
    assert height % model.config.window_size == 0 and width % model.config.window_size == 0
    with torch.no_grad():
        out = model(**inputs).reconstruction
    assert tuple(out.shape) == (1, 3, height * upscale, width * upscale)
    cropped = out[..., : 32 * upscale, : 32 * upscale]  # drop the processor's padding
    assert tuple(cropped.shape) == (1, 3, 32 * upscale, 32 * upscale)
    assert torch.isfinite(cropped).all()


def test_u2net_onnx_with_rembg(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    onnx_path = models["u2net-tiny.onnx"]
    monkeypatch.delenv("U2NET_HOME", raising=False)
    monkeypatch.setenv("REMBG_HOME", str(onnx_path.parent))  # rembg only loads from under its home
    import rembg

    session = rembg.new_session("u2net_custom", model_path=str(onnx_path))
    image = Image.fromarray((np.random.default_rng(2).random((48, 80, 3)) * 255).astype(np.uint8))
    cut = rembg.remove(image, session=session)
    assert cut.mode == "RGBA" and cut.size == image.size

    name = session.inner_session.get_inputs()[0].name
    feed = session.normalize(image, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320))[name]
    noise = np.random.default_rng(3).normal(size=(3, 3, 320, 320)).astype(np.float32)
    batch = np.concatenate([feed, noise])
    masks = session.inner_session.run(None, {name: batch})[0]
    assert masks.shape == (4, 1, 320, 320) and masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert masks[0].std() > 1e-3 and np.abs(masks[0] - masks[1]).max() > 1e-3


def test_sd_build_is_deterministic(models: dict[str, Path], tmp_path: Path) -> None:
    again = tiny_models.make_tiny_sd(tmp_path / "again", seed=0)
    other = tiny_models.make_tiny_sd(tmp_path / "other", seed=1)
    for sub in ("unet", "vae", "text_encoder"):
        (ref_file,) = (models["sd-tiny"] / sub).glob("*.safetensors")
        ref, same, diff = (_load_tensors(root / sub / ref_file.name) for root in (models["sd-tiny"], again, other))
        assert ref.keys() == same.keys()
        assert all(ref[k].equal(same[k]) for k in ref), sub
        assert not all(ref[k].equal(diff[k]) for k in ref), sub
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    assert (again / unet_file).read_bytes() == (models["sd-tiny"] / unet_file).read_bytes()
    lora = tiny_models.make_tiny_lora(again, tmp_path / "lora", seed=0)
    lora_file = "pytorch_lora_weights.safetensors"
    assert (lora / lora_file).read_bytes() == (models["sd-tiny-lora"] / lora_file).read_bytes()


def test_make_all_is_idempotent_and_rebuilds_partial(models: dict[str, Path]) -> None:
    root = models["sd-tiny"].parent
    stamps = {name: path.stat().st_mtime_ns for name, path in models.items()}
    unet_file = models["sd-tiny"] / "unet" / "diffusion_pytorch_model.safetensors"
    unet_stamp = unet_file.stat().st_mtime_ns
    assert tiny_models.make_all(root) == models
    assert {name: path.stat().st_mtime_ns for name, path in models.items()} == stamps
    assert unet_file.stat().st_mtime_ns == unet_stamp

    partial = models["swin2sr-tiny-x2"]
    (partial / MARKER).unlink()
    (partial / "leftover.tmp").write_text("half-written")
    tiny_models.make_all(root)
    assert tiny_models.is_complete(partial) and not (partial / "leftover.tmp").exists()
    assert (partial / "model.safetensors").is_file()


def test_sdxl_and_flux_are_their_real_architectures(models: dict[str, Path]) -> None:
    from diffusers import AutoPipelineForText2Image, FluxPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    sdxl = AutoPipelineForText2Image.from_pretrained(models["sdxl-tiny"], use_safetensors=True)
    assert isinstance(sdxl, StableDiffusionXLPipeline)
    assert isinstance(sdxl.text_encoder, CLIPTextModel)
    assert isinstance(sdxl.text_encoder_2, CLIPTextModelWithProjection)  # two text encoders
    assert sdxl.unet.config.addition_embed_type == "text_time"
    flux = AutoPipelineForText2Image.from_pretrained(models["flux-tiny"], use_safetensors=True)
    assert isinstance(flux, FluxPipeline) and isinstance(flux.text_encoder_2, T5EncoderModel)
    assert type(flux.transformer).__name__ == "FluxTransformer2DModel"
    assert flux.vae_scale_factor * 2 == 16  # as the real Flux: sides are multiples of 16
    flux.set_progress_bar_config(disable=True)
    images = flux(PROMPTS[:2], width=32, height=48, num_inference_steps=1, guidance_scale=0.0,
                  generator=_generators(2), output_type="np").images
    assert images.shape == (2, 48, 32, 3) and not np.allclose(images[0], images[1])
    total = sum(p.stat().st_size for name in ("sdxl-tiny", "flux-tiny")
                for p in models[name].rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024


def test_inpaint_models_are_their_real_architectures(models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    from diffusers import (AutoPipelineForInpainting, FluxFillPipeline,
                           StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline)
    from transformers import CLIPTextModelWithProjection

    from stages.tiny.inpaint import fill_in_channels, make_tiny_sd_inpaint

    sd = AutoPipelineForInpainting.from_pretrained(models["sd-inpaint-tiny"], use_safetensors=True)
    assert isinstance(sd, StableDiffusionInpaintPipeline)
    # noisy latents + masked-image latents + the mask, as stable-diffusion-2-inpainting's UNet
    assert (sd.unet.config.in_channels, sd.unet.config.out_channels) == (9, 4)
    sdxl = AutoPipelineForInpainting.from_pretrained(models["sdxl-inpaint-tiny"],
                                                     use_safetensors=True)
    assert isinstance(sdxl, StableDiffusionXLInpaintPipeline)
    assert isinstance(sdxl.text_encoder_2, CLIPTextModelWithProjection)
    assert sdxl.unet.config.in_channels == 9 and not sdxl.config.requires_aesthetics_score
    flux = FluxFillPipeline.from_pretrained(models["flux-fill-tiny"], use_safetensors=True)
    config = flux.transformer.config
    assert config.in_channels == fill_in_channels(4, flux.vae_scale_factor) == 16 + 16 + 256
    assert config.out_channels == 16 and config.guidance_embeds
    assert fill_in_channels(16, 8) == 384  # FLUX.1-Fill-dev's transformer
    total = sum(p.stat().st_size for name in ("sd-inpaint-tiny", "sdxl-inpaint-tiny",
                                              "flux-fill-tiny")
                for p in models[name].rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    again = make_tiny_sd_inpaint(tmp_path / "again", seed=0)
    assert (again / unet_file).read_bytes() == (models["sd-inpaint-tiny"] / unet_file).read_bytes()
