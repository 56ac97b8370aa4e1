"""Tiny random-weight SDXL and Flux pipelines, saved like the published checkpoints.

* :func:`make_tiny_sdxl` -- an SDXL pipeline directory (two text encoders).
* :func:`make_tiny_flux` -- a Flux pipeline directory (Flux transformer, CLIP and T5).

Nothing is downloaded: the CLIP tokenizer comes from a byte-level vocab and the T5 tokenizer from
:func:`_t5_vocab`. Weights are random but deterministic for a given seed. Heavy libraries are
imported inside the functions so importing this module is cheap. :mod:`stages.tiny.models`
re-exports both builders and builds them in ``make_all``.
"""

from __future__ import annotations

from pathlib import Path

from stages.tiny.common import (
    CLIP_MAX_LENGTH, _clip_vocab, _fresh_dir, _mark_complete, _tiny_clip_config, _tiny_sdxl_unet,
    _tiny_vae, _write_clip_vocab,
)


def make_tiny_sdxl(out_dir: Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random SDXL pipeline: two text encoders (CLIP-L's and OpenCLIP's
    roles: ``CLIPTextModel`` + ``CLIPTextModelWithProjection``, whose hidden states are
    concatenated for cross-attention) and a UNet with SDXL's ``text_time`` conditioning, as in
    diffusers' SDXL ``get_dummy_components()``. The VAE downsamples by 2, like sd-tiny's.

    Returns:
        ``out_dir``, loadable with ``AutoPipelineForText2Image`` (``StableDiffusionXLPipeline``)
        and ``AutoPipelineForImage2Image``.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    torch.manual_seed(seed)
    unet = _tiny_sdxl_unet(in_channels=4)
    torch.manual_seed(seed)
    vae = _tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(vocab, tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(vocab, tokenizer))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        _write_clip_vocab(out_dir / sub, vocab)
    _mark_complete(out_dir)
    return out_dir


def _t5_vocab() -> list[tuple[str, float]]:
    """A unigram vocab of T5's special tokens and single characters (SentencePiece's ``▁``
    word marker included): any ASCII text tokenizes; other characters become ``<unk>``."""
    chars = ["▁"] + [chr(c) for c in range(33, 127)] + ["▁" + chr(c) for c in range(33, 127)]
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in chars]


def make_tiny_flux(out_dir: Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random Flux pipeline: a ``FluxTransformer2DModel`` (one double and
    one single stream block), CLIP for the pooled prompt, T5 for the sequence, and a VAE with 4
    latent channels that downsamples by 8 like Flux's, so sides must be multiples of 16 as
    for the real model. Mirrors diffusers' Flux ``get_dummy_components()``
    with an offline T5 tokenizer.

    Returns:
        ``out_dir``, loadable with ``AutoPipelineForText2Image`` (``FluxPipeline``).
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    t5_vocab = _t5_vocab()
    tokenizer_2 = T5Tokenizer(vocab=t5_vocab, extra_ids=0, model_max_length=512)
    latent_channels = 4
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,  # latents are packed in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=32,  # CLIP's hidden size
        axes_dims_rope=[4, 4, 8],  # sums to attention_head_dim
        guidance_embeds=False,  # schnell: guidance-distilled away
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(vocab, tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = _tiny_t5(len(t5_vocab))
    torch.manual_seed(seed)
    vae = _tiny_flux_vae(latent_channels)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _write_clip_vocab(out_dir / "tokenizer", vocab)
    _mark_complete(out_dir)
    return out_dir


def _tiny_t5(vocab_size: int):
    """flux-tiny's T5 encoder (T5-XXL's architecture at toy width). The caller seeds torch."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0))


def _tiny_flux_vae(latent_channels: int):
    """flux-tiny's VAE: three downsamples, a factor of 8 as Flux's own. The caller seeds."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
