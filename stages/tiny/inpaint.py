"""Tiny random-weight inpainting pipelines, saved like the published checkpoints.

* :func:`make_tiny_sd_inpaint` -- SD inpainting (``StableDiffusionInpaintPipeline``): a UNet
  whose input is 4 noisy latents + 4 masked-image latents + 1 mask channel, as in
  ``stabilityai/stable-diffusion-2-inpainting``.
* :func:`make_tiny_sdxl_inpaint` -- SDXL inpainting (``StableDiffusionXLInpaintPipeline``): the
  same 9-channel UNet with SDXL's two text encoders and ``text_time`` conditioning.
* :func:`make_tiny_flux_fill` -- Flux Fill (``FluxFillPipeline``): a ``FluxTransformer2DModel``
  whose input is the packed latents, packed masked-image latents and the packed full-resolution
  mask (``fill_in_channels``).

They share the shapes of the text-to-image builders (:mod:`stages.tiny.models`,
:mod:`stages.tiny.families`) so the same toy sizes run on them. Nothing is downloaded; weights
are random but deterministic for a given seed; heavy libraries are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

from stages.tiny.common import (
    CLIP_MAX_LENGTH, _clip_vocab, _fresh_dir, _mark_complete, _tiny_clip_config, _tiny_sd_unet,
    _tiny_sdxl_unet, _tiny_vae, _write_clip_vocab,
)

#: Latent channels of every tiny VAE here (SD's 4; the real Flux VAE has 16).
LATENT_CHANNELS = 4
#: UNet input of SD/SDXL inpainting: noisy latents, masked-image latents, one mask channel.
INPAINT_UNET_CHANNELS = 2 * LATENT_CHANNELS + 1
#: The tiny Flux VAE's downsampling (three downsampling blocks, as Flux's own VAE).
FLUX_VAE_SCALE = 8


def fill_in_channels(latent_channels: int, vae_scale: int) -> int:
    """The Flux Fill transformer's input width, as ``FluxFillPipeline`` concatenates it.

    Latents are packed in 2x2 patches (``4 * latent_channels``); so are the masked image's
    latents; the mask stays at full resolution, its ``vae_scale x vae_scale`` pixels per latent
    folded into channels and then packed 2x2 too (``4 * vae_scale ** 2``). FLUX.1-Fill-dev:
    16 latent channels, scale 8 -> 64 + 64 + 256 = 384.
    """
    return 4 * latent_channels + 4 * latent_channels + 4 * vae_scale**2


def _scheduler(spacing: str):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing=spacing)


def make_tiny_sd_inpaint(out_dir: Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random SD inpainting pipeline (sd-tiny's shapes, 9-channel UNet).

    Returns:
        ``out_dir``, loadable with ``AutoPipelineForInpainting``
        (``StableDiffusionInpaintPipeline``).
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    torch.manual_seed(seed)
    unet = _tiny_sd_unet(in_channels=INPAINT_UNET_CHANNELS)
    torch.manual_seed(seed)
    vae = _tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(vocab, tokenizer))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler("leading"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _write_clip_vocab(out_dir / "tokenizer", vocab)
    _mark_complete(out_dir)
    return out_dir


def make_tiny_sdxl_inpaint(out_dir: Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random SDXL inpainting pipeline (sdxl-tiny's shapes, 9-channel
    UNet), without the aesthetic-score conditioning, as
    ``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``.

    Returns:
        ``out_dir``, loadable with ``AutoPipelineForInpainting``
        (``StableDiffusionXLInpaintPipeline``).
    """
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    torch.manual_seed(seed)
    unet = _tiny_sdxl_unet(in_channels=INPAINT_UNET_CHANNELS)
    torch.manual_seed(seed)
    vae = _tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(vocab, tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(vocab, tokenizer))
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler("trailing"),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        _write_clip_vocab(out_dir / sub, vocab)
    _mark_complete(out_dir)
    return out_dir


def make_tiny_flux_fill(out_dir: Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random Flux Fill pipeline: flux-tiny's text encoders and VAE
    (downsampling by 8, so sides are multiples of 16) and a transformer that takes the fill
    inputs (``fill_in_channels``) and predicts packed latents, with guidance embeddings as the
    guidance-distilled FLUX.1-Fill-dev.

    Returns:
        ``out_dir``, loadable with ``FluxFillPipeline.from_pretrained`` (diffusers'
        ``AutoPipelineForInpainting`` has no entry for it).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer

    from stages.tiny.families import _t5_vocab, _tiny_flux_vae, _tiny_t5

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    t5_vocab = _t5_vocab()
    tokenizer_2 = T5Tokenizer(vocab=t5_vocab, extra_ids=0, model_max_length=512)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=fill_in_channels(LATENT_CHANNELS, FLUX_VAE_SCALE),
        out_channels=LATENT_CHANNELS * 4,  # the packed latents only
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=32,  # CLIP's hidden size
        axes_dims_rope=[4, 4, 8],  # sums to attention_head_dim
        guidance_embeds=True,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(vocab, tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = _tiny_t5(len(t5_vocab))
    torch.manual_seed(seed)
    vae = _tiny_flux_vae(LATENT_CHANNELS)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxFillPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                            tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                            tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _write_clip_vocab(out_dir / "tokenizer", vocab)
    _mark_complete(out_dir)
    return out_dir
