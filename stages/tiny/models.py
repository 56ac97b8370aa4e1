"""Tiny random-weight models of real architectures, saved like published weights.

Every builder writes its model in the same on-disk layout as the real published
checkpoint, so production code loads it through the very same calls:

* :func:`make_tiny_sd` -- a Stable Diffusion 1.x pipeline directory (diffusers
  ``save_pretrained`` layout, safetensors), loadable with
  ``AutoPipelineForText2Image`` / ``AutoPipelineForImage2Image``.
* :func:`make_tiny_sdxl` -- an SDXL pipeline directory (two text encoders).
* :func:`make_tiny_flux` -- a Flux pipeline directory (Flux transformer, CLIP and T5).
  These two live in :mod:`stages.tiny.families`.
* :func:`make_tiny_lora` -- a diffusers-format UNet LoRA
  (``pytorch_lora_weights.safetensors``), loadable with ``pipe.load_lora_weights``.
* :func:`make_tiny_swin2sr` -- a transformers ``Swin2SRForImageSuperResolution``
  plus its image processor (``Swin2SRImageProcessorPil``, saved as the published one).
* :func:`make_tiny_u2net_onnx` -- an ONNX file with rembg's u2net input/output
  contract, loadable with ``rembg.new_session("u2net_custom", model_path=...)``.

Nothing is downloaded: the CLIP tokenizer is generated from a byte-level vocab.
All weights are random but deterministic for a given seed. Heavy libraries are
imported inside the functions so importing this module is cheap. The shared
helpers live in :mod:`stages.tiny.common`; every name other code imports from
this module (``MARKER``, ``is_complete``, ``CLIP_MAX_LENGTH``, ``_clip_vocab``,
``_t5_vocab``, the SDXL and Flux builders) is re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from stages.tiny.common import (
    CLIP_MAX_LENGTH, _clip_vocab, _fresh_dir, is_complete, _mark_complete, quiet_build,
    _tiny_clip_config, _tiny_sd_unet, _tiny_vae, _write_clip_vocab,
)
from stages.tiny.families import make_tiny_flux, make_tiny_sdxl
from stages.tiny import inpaint as tiny_inpaint

#: Side length of the square input of rembg's u2net-family models.
U2NET_SIZE = 320


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
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    out_dir = _fresh_dir(out_dir)
    vocab = _clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)

    torch.manual_seed(seed)
    unet = _tiny_sd_unet(in_channels=4)
    torch.manual_seed(seed)
    vae = _tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_tiny_clip_config(vocab, tokenizer))
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
    from transformers import (
        Swin2SRConfig,
        Swin2SRForImageSuperResolution,
        Swin2SRImageProcessorPil,  # the PIL backend: torchvision is not a dependency
    )

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
    # Saved as published ("image_processor_type": "Swin2SRImageProcessor"); nothing in the
    # upscale stage loads it, AutoImageProcessor does (tests).
    processor = Swin2SRImageProcessorPil(do_rescale=True, rescale_factor=1 / 255, do_pad=True,
                                         pad_size=window)
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
        graph, producer_name="stages.tiny.models", opset_imports=[helper.make_opsetid("", 17)]
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
               "swin2sr-tiny-x2", "swin2sr-tiny-x4", "u2net-tiny.onnx", "sd-inpaint-tiny",
               "sdxl-inpaint-tiny", "flux-fill-tiny")
#: The tiny stand-in of each model family (``StageCard.family``), and of its LoRA.
FAMILY_MODELS = {"sd": "sd-tiny", "sdxl": "sdxl-tiny", "flux": "flux-tiny",
                 "u2net": "u2net-tiny.onnx", "isnet": "u2net-tiny.onnx",
                 "sd-inpaint": "sd-inpaint-tiny", "sdxl-inpaint": "sdxl-inpaint-tiny",
                 "flux-fill": "flux-fill-tiny"}
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
        "sd-inpaint-tiny": lambda p: tiny_inpaint.make_tiny_sd_inpaint(p),
        "sdxl-inpaint-tiny": lambda p: tiny_inpaint.make_tiny_sdxl_inpaint(p),
        "flux-fill-tiny": lambda p: tiny_inpaint.make_tiny_flux_fill(p),
    }
    wanted = set(only or TINY_MODELS)
    for lora, base in (("sd-tiny-lora", "sd-tiny"), ("sdxl-tiny-lora", "sdxl-tiny")):
        if lora in wanted:
            wanted.add(base)  # the LoRA is built against the base model
    missing = [name for name in builders if name in wanted and not is_complete(paths[name])]
    if missing:
        with quiet_build():
            for name in missing:
                builders[name](paths[name])
    return paths
