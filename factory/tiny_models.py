"""Tiny random-weight models of real architectures, saved like published weights.

Every builder writes its model in the same on-disk layout as the real published
checkpoint, so production code loads it through the very same calls:

* :func:`make_tiny_sd` -- a Stable Diffusion 1.x pipeline directory (diffusers
  ``save_pretrained`` layout, safetensors), loadable with
  ``AutoPipelineForText2Image`` / ``AutoPipelineForImage2Image``.
* :func:`make_tiny_sdxl` -- an SDXL pipeline directory (two text encoders).
* :func:`make_tiny_flux` -- a Flux pipeline directory (Flux transformer, CLIP and T5).
* :func:`make_tiny_lora` -- a diffusers-format UNet LoRA
  (``pytorch_lora_weights.safetensors``), loadable with ``pipe.load_lora_weights``.
* :func:`make_tiny_swin2sr` -- a transformers ``Swin2SRForImageSuperResolution``
  plus its ``Swin2SRImageProcessor``.
* :func:`make_tiny_u2net_onnx` -- an ONNX file with rembg's u2net input/output
  contract, loadable with ``rembg.new_session("u2net_custom", model_path=...)``.

Nothing is downloaded: the CLIP tokenizer is generated from a byte-level vocab.
All weights are random but deterministic for a given seed. Heavy libraries are
imported inside the functions so importing this module is cheap.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: File written last into each built directory; its presence means "complete".
MARKER = ".tiny_model_complete"
#: CLIP's context length; the tokenizer pads prompts to this many tokens.
CLIP_MAX_LENGTH = 77
#: Side length of the square input of rembg's u2net-family models.
U2NET_SIZE = 320


def _bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2/CLIP's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_vocab() -> dict[str, int]:
    """Return a merge-free byte-level CLIP vocabulary.

    The layout mirrors the real CLIP vocab: 256 byte symbols, their ``</w>``
    (end-of-word) forms, then ``<|startoftext|>`` (512) and ``<|endoftext|>``
    (513). With no merges every word splits into single bytes, so any text
    (accents, emoji) tokenizes without unknown tokens.
    """
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def _write_clip_vocab(tok_dir: Path, vocab: dict[str, int]) -> None:
    """Write ``vocab.json`` and a header-only ``merges.txt`` (SD 1.x layout)."""
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tok_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _fresh_dir(out_dir: Path) -> Path:
    """Remove ``out_dir`` if present and recreate it empty."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def _mark_complete(out_dir: Path) -> None:
    """Write the completion marker (always the last file written)."""
    (Path(out_dir) / MARKER).write_text("ok\n", encoding="utf-8")


def is_complete(path: Path) -> bool:
    """Return whether ``path`` holds a fully built model.

    Args:
        path: A model directory, or a single-file model such as the ONNX file.

    Returns:
        True for a directory containing :data:`MARKER` or an existing file.
    """
    path = Path(path)
    return (path / MARKER).is_file() if path.is_dir() else path.is_file()


def make_tiny_sd(out_dir: Path, *, seed: int = 0) -> Path:
    """Build and save a tiny random Stable Diffusion 1.x pipeline.

    Mirrors ``get_dummy_components()`` in diffusers' own Stable Diffusion tests
    (2-block UNet/VAE, 2-layer CLIP text encoder), with an offline byte-level
    CLIP tokenizer and an Euler scheduler configured like SD 1.5. The VAE
    downsamples by 2, so the default 64x64 image maps to 32x32 latents.

    Args:
        out_dir: Directory to write the pipeline into (replaced if it exists).
        seed: Seed for the random weights; equal seeds give identical files.

    Returns:
        ``out_dir``, which then loads with
        ``diffusers.AutoPipelineForText2Image.from_pretrained(out_dir)``.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            projection_dim=32,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; add the classic SD 1.x files too.
    _write_clip_vocab(out_dir / "tokenizer", vocab)
    _mark_complete(out_dir)
    return out_dir


def _tiny_clip_config(vocab: dict[str, int], tokenizer):
    """The 2-layer, 32-wide CLIP text config of diffusers' own dummy components."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=32,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop ids + pooled text
        cross_attention_dim=32 + 32,  # both encoders' hidden states
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )
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
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

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
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(t5_vocab), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0))
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),  # 3 downsamples: a factor of 8, as Flux's VAE
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
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _write_clip_vocab(out_dir / "tokenizer", vocab)
    _mark_complete(out_dir)
    return out_dir


def make_tiny_lora(sd_dir: Path, out_dir: Path, *, rank: int = 4, seed: int = 0) -> Path:
    """Build a tiny random UNet LoRA for the pipeline made by :func:`make_tiny_sd`.

    Targets the attention projections (``to_q``, ``to_k``, ``to_v``,
    ``to_out.0``) like a typical style/brand LoRA, with non-zero random A and B
    matrices, and saves it exactly as diffusers' LoRA training scripts do.

    Args:
        sd_dir: Directory of the tiny Stable Diffusion pipeline.
        out_dir: Directory to write ``pytorch_lora_weights.safetensors`` into.
        rank: LoRA rank (``lora_alpha`` equals ``rank``, so the scale is 1).
        seed: Seed for the random LoRA weights.

    Returns:
        ``out_dir``, which then loads with ``pipe.load_lora_weights(out_dir)``.
    """
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(Path(sd_dir), subfolder="unet")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    unet.add_adapter(config)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out_dir = _fresh_dir(out_dir)
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=state, safe_serialization=True
    )
    _mark_complete(out_dir)
    return out_dir


def make_tiny_swin2sr(out_dir: Path, *, upscale: int = 2, seed: int = 0) -> Path:
    """Build and save a tiny random Swin2SR super-resolution model.

    Args:
        out_dir: Directory to write the model and image processor into.
        upscale: Upscaling factor (2 or 4 like the published checkpoints).
        seed: Seed for the random weights.

    Returns:
        ``out_dir``, which then loads with
        ``Swin2SRForImageSuperResolution.from_pretrained(out_dir)`` and
        ``AutoImageProcessor.from_pretrained(out_dir)``.
    """
    import torch
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution
    from transformers import Swin2SRImageProcessor

    window = 8  # as in the published caidas/swin2SR-* checkpoints
    config = Swin2SRConfig(
        image_size=64,
        patch_size=1,
        num_channels=3,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=window,
        mlp_ratio=2.0,
        upscale=upscale,
        img_range=1.0,
        upsampler="pixelshuffle",
        resi_connection="1conv",
    )
    torch.manual_seed(seed)
    model = Swin2SRForImageSuperResolution(config).eval()
    out_dir = _fresh_dir(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor = Swin2SRImageProcessor(do_rescale=True, rescale_factor=1 / 255, do_pad=True, pad_size=window)
    processor.save_pretrained(out_dir)
    _mark_complete(out_dir)
    return out_dir


def make_tiny_u2net_onnx(out_path: Path, *, seed: int = 0) -> Path:
    """Build a tiny ONNX segmentation model with rembg's u2net contract.

    Input ``input.1`` (like the real u2net.onnx): float32 ``(N, 3, 320, 320)``,
    normalised by rembg with ImageNet mean/std. Output ``d0``: float32
    ``(N, 1, 320, 320)`` sigmoid probabilities. The batch axis is dynamic. The
    net is conv3x3(3->8) -> ReLU -> conv3x3(8->1, with bias) -> sigmoid with
    fixed random weights, so the mask depends on the image content.

    Args:
        out_path: Path of the ``.onnx`` file to write (written atomically).
        seed: Seed for the random weights.

    Returns:
        ``out_path``, loadable with
        ``rembg.new_session("u2net_custom", model_path=str(out_path))`` once
        ``out_path`` lies under ``REMBG_HOME`` (rembg refuses other paths).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    hidden = 8
    w1 = rng.normal(0.0, 0.3, (hidden, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, (hidden,)).astype(np.float32)
    w2 = rng.normal(0.0, 0.3, (1, hidden, 3, 3)).astype(np.float32)
    b2 = np.array([0.25], dtype=np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input.1", "w1", "b1"], ["h1"], **conv),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["logits"], **conv),
        helper.make_node("Sigmoid", ["logits"], ["d0"]),
    ]
    size = U2NET_SIZE
    graph = helper.make_graph(
        nodes,
        "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["batch", 1, size, size])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, producer_name="factory.tiny_models", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    onnx.save_model(model, str(tmp))
    tmp.replace(out_path)
    return out_path


def ensure(out_dir: Path, name: str) -> Path:
    """The tiny model ``name`` under ``out_dir``, built here first if it is not complete.

    Used where a ``tiny:NAME`` source is loaded: on a cluster every node builds its own copy
    (the weights are deterministic, so every copy is the same model). A file lock keeps two
    actors of one node from building it at once.

    Raises:
        ValueError: ``name`` is not a tiny model.
    """
    import fcntl

    out_dir = Path(out_dir)
    path = out_dir / name
    if is_complete(path):
        return path
    if name not in TINY_MODELS:
        raise ValueError(f"no tiny model '{name}' (tiny models: {', '.join(TINY_MODELS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        make_all(out_dir, only=(name,))
    return path


#: Every tiny model ``make_all`` builds, by name.
TINY_MODELS = ("sd-tiny", "sd-tiny-lora", "sdxl-tiny", "sdxl-tiny-lora", "flux-tiny",
               "swin2sr-tiny-x2", "swin2sr-tiny-x4", "u2net-tiny.onnx")
#: The tiny stand-in of each model family (``StageCard.family``), and of its LoRA.
FAMILY_MODELS = {"sd": "sd-tiny", "sdxl": "sdxl-tiny", "flux": "flux-tiny",
                 "u2net": "u2net-tiny.onnx", "isnet": "u2net-tiny.onnx"}
FAMILY_LORAS = {"sd": "sd-tiny-lora", "sdxl": "sdxl-tiny-lora"}


def make_all(out_dir: Path, *, only: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build every tiny model under ``out_dir``, skipping complete ones.

    Directories without the :data:`MARKER` file (e.g. an interrupted build)
    are rebuilt from scratch.

    Args:
        out_dir: Parent directory for all models.
        only: build just these (and what they need); default all.

    Returns:
        Mapping of model name (``TINY_MODELS``) to path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in TINY_MODELS}
    builders = {
        "sd-tiny": lambda p: make_tiny_sd(p),
        "sd-tiny-lora": lambda p: make_tiny_lora(paths["sd-tiny"], p),
        "sdxl-tiny": lambda p: make_tiny_sdxl(p),
        "sdxl-tiny-lora": lambda p: make_tiny_lora(paths["sdxl-tiny"], p),
        "flux-tiny": lambda p: make_tiny_flux(p),
        "swin2sr-tiny-x2": lambda p: make_tiny_swin2sr(p, upscale=2),
        "swin2sr-tiny-x4": lambda p: make_tiny_swin2sr(p, upscale=4),
        "u2net-tiny.onnx": lambda p: make_tiny_u2net_onnx(p),
    }
    wanted = set(only or TINY_MODELS)
    for lora, base in (("sd-tiny-lora", "sd-tiny"), ("sdxl-tiny-lora", "sdxl-tiny")):
        if lora in wanted:
            wanted.add(base)  # the LoRA is built against the base model
    for name, build in builders.items():
        if name in wanted and not is_complete(paths[name]):
            build(paths[name])
    return paths
