"""Helpers shared by the tiny-model builders of :mod:`stages.tiny.models` and
:mod:`stages.tiny.families`.

The completion marker and :func:`is_complete`, the offline byte-level CLIP vocabulary (nothing is
downloaded: the CLIP tokenizer is generated from it), and the tiny CLIP text config of diffusers'
own dummy components. Heavy libraries are imported inside the functions so importing this module
is cheap.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: File written last into each built directory; its presence means "complete".
MARKER = ".tiny_model_complete"
#: CLIP's context length; the tokenizer pads prompts to this many tokens.
CLIP_MAX_LENGTH = 77


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


@contextmanager
def quiet_build() -> Iterator[None]:
    """Build without the hub libraries' progress bars (``save_pretrained``'s "Writing model
    shards" bar per component) and with the PIL image processors chosen up front (the
    fallback warnings, ``factory.core.console.pil_image_processors``). The bars' switches are
    process-wide: each library's is put back as it was when the build ends."""
    from factory.core.console import pil_image_processors

    pil_image_processors()
    import diffusers
    import huggingface_hub.utils as hub_utils
    import transformers

    switches = [(transformers.utils.logging, transformers.utils.logging.is_progress_bar_enabled(),
                 "enable_progress_bar", "disable_progress_bar"),
                (diffusers.utils.logging, diffusers.utils.logging.is_progress_bar_enabled(),
                 "enable_progress_bar", "disable_progress_bar"),
                (hub_utils, not hub_utils.are_progress_bars_disabled(),
                 "enable_progress_bars", "disable_progress_bars")]
    for module, _, _, off in switches:
        getattr(module, off)()
    try:
        yield
    finally:  # hub last: transformers' switch also flips the hub's
        for module, was_on, on, off in switches:
            getattr(module, on if was_on else off)()


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


def _tiny_vae():
    """The 2-block, 8/16-channel SD VAE of diffusers' own dummy components (SD and SDXL)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _tiny_sd_unet(*, in_channels: int):
    """The tiny SD UNet (sd-tiny's shapes); ``in_channels`` 4 for text-to-image, 9 for
    inpainting (latents, masked-image latents, mask). The caller seeds torch first."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def _tiny_sdxl_unet(*, in_channels: int):
    """The tiny SDXL UNet (two text encoders, ``text_time`` conditioning); ``in_channels`` as
    for ``_tiny_sd_unet``. The caller seeds torch first."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
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
