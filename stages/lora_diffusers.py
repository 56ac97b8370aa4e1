"""lora: restyle product images toward a brand with diffusers img2img and a LoRA adapter.

Any pipeline ``AutoPipelineForImage2Image`` can load (SD 1.x/2.x, SD-Turbo, SDXL) is a card with
this runtime; the card's source names the base weights and the job spec's ``lora`` param names the
brand adapter. Transparent inputs are flattened onto a background colour for diffusion and get
their own alpha back, byte for byte, afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import Field, field_validator, model_validator

from stages.base import Stage, StageParams, render_by_size
from stages.colour import parse_hex_colour
from stages.precision import Dtype, channels_last_pays, resolve, to_channels_last, torch_dtype
from stages.weights import (PICKLE_SUFFIXES, WeightsError, check_local_weights,
                            compile_denoiser, quiet_loaders, resolve_source, to_device,
                            torch_device)

ADAPTER_NAME = "brand"
#: XORed into each row's seed so img2img noise is independent of the generate stage's noise.
SEED_SALT = 0x5EED
#: Inputs are resized up to a multiple of this (SD and SDXL VAEs downsample by 8).
SIZE_MULTIPLE = 8


class LoraParams(StageParams):
    """Parameters of a LoRA img2img stage.

    Attributes:
        lora: the brand LoRA: ``tiny:NAME``, a local directory or ``.safetensors`` file, or a hub
            id. ``None`` runs plain img2img with the base weights.
        weight_name: file inside a LoRA directory or hub repo, when it holds several.
        adapter_scale: LoRA weight; 0 is the base model.
        strength: img2img denoise strength: how far from the input the result may move.
        steps: denoising steps actually run (UNet passes per image, as in the generate stage);
            the scheduler is set to ``ceil(steps / strength)`` points so that ``strength`` picks
            where on it they start, and ``steps * strength < 1`` cannot silently run zero steps.
        guidance: classifier-free guidance scale; negative prompts apply only above 1.
        dtype: the pipeline's precision (``stages.precision``): ``auto`` is the card's advised
            dtype on CUDA, bfloat16 on a CPU with native bf16 (AMX or AVX512-BF16), float32 on
            other CPUs; a dtype name pins it.
        background: hex colour RGBA inputs are composited over before diffusion.
        fuse: fuse the adapter into the base weights at load (``fuse_lora``), so it costs
            nothing per denoising step. The scale is fixed for a run (a season with its own
            ``lora_scale`` is its own run); ``false`` keeps the adapter as a separate layer.
        compile: ``torch.compile`` the denoiser at load.
        protect_product: in a row with a product layer (``stages.product``), the product's
            incoming pixels go back over the styled image: the brand style reaches the scene,
            never the product. ``false`` styles the product too.
    """

    key_added: ClassVar[frozenset[str]] = frozenset({"protect_product"})

    lora: str | None = None
    weight_name: str | None = None
    adapter_scale: float = Field(1.0, ge=0.0, le=2.0)
    strength: float = Field(0.35, gt=0.0, le=1.0)
    steps: int = Field(4, ge=1, le=200)
    guidance: float = Field(0.0, ge=0.0, le=50.0)
    dtype: Dtype = "auto"
    background: str = "#FFFFFF"
    fuse: bool = True
    compile: bool = False
    protect_product: bool = True

    @field_validator("background")
    @classmethod
    def _check_background(cls, value: str) -> str:
        parse_hex_colour(value)
        return value

    @model_validator(mode="after")
    def _check_weight_name(self) -> LoraParams:
        if self.weight_name and not self.lora:
            raise ValueError("'weight_name' needs 'lora'")
        return self


class LoraImg2Img(Stage):
    """Batched img2img through one pipeline with the brand adapter, loaded once per actor."""

    def _load(self) -> None:
        quiet_loaders()  # before the hub libraries' imports, which warn on import
        allow_pickle = self.plan.allow_pickle
        # diffusers reads use_safetensors=False as "pickle files only"; None means "prefer
        # safetensors, fall back to pickle", which is what allow_pickle should widen to.
        use_safetensors = None if allow_pickle else True
        check_local_weights(self.plan.source, allow_pickle=allow_pickle)
        self.device = torch_device(self.plan.resources.num_gpus)
        self.precision = resolve(self.params.dtype, device=self.device,
                                 cuda_dtype=self.plan.card.cuda_dtype)
        self.dtype = torch_dtype(self.precision)
        self.pipe = to_device(self._from_pretrained(self.dtype, use_safetensors), self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.fused = False
        if self.params.lora:
            self._load_lora(use_safetensors)
        if channels_last_pays(self.device, self.precision):  # after fusing: the final weights
            to_channels_last(self.pipe)
        if self.params.compile:
            compile_denoiser(self.pipe)
        self.multiple = math.lcm(SIZE_MULTIPLE, int(self.pipe.vae_scale_factor))
        self.schedule = schedule_length(self.params.steps, self.params.strength)
        self.background = np.array(parse_hex_colour(self.params.background), dtype=np.float32)

    def _from_pretrained(self, dtype: Any, use_safetensors: bool | None) -> Any:
        """The base pipeline, on the CPU, in ``dtype``."""
        from stages.pipelines import load_pipeline

        return load_pipeline(
            "image2image", self.plan.source,
            revision=None if self.plan.revision in ("", "local") else self.plan.revision,
            dtype=dtype,
            use_safetensors=use_safetensors,
        )

    def _load_lora(self, use_safetensors: bool | None) -> None:
        ref = self.fetch(resolve_source(self.params.lora, Path(self.plan.models_dir)),
                         ref=self.params.lora)
        check_local_weights(ref, allow_pickle=self.plan.allow_pickle)
        location, weight_name = ref, self.params.weight_name
        if Path(ref).is_file():  # the loader takes a directory plus a file name
            location, weight_name = str(Path(ref).parent), Path(ref).name
        if (weight_name and Path(weight_name).suffix.lower() in PICKLE_SUFFIXES
                and not self.plan.allow_pickle):
            raise WeightsError(
                f"LoRA '{self.params.lora}' weight file '{weight_name}' is a pickle file; "
                "convert it to safetensors, or set 'allow_pickle: true' if you trust it."
            )
        self.pipe.load_lora_weights(location, adapter_name=ADAPTER_NAME, weight_name=weight_name,
                                    use_safetensors=use_safetensors)
        if self.params.fuse:
            # W + scale * BA once, then drop the adapter layers: plain weights at every step
            self.pipe.fuse_lora(lora_scale=self.params.adapter_scale, adapter_names=[ADAPTER_NAME])
            self.pipe.unload_lora_weights()
            self.fused = True
        else:
            self.pipe.set_adapters([ADAPTER_NAME], adapter_weights=[self.params.adapter_scale])

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        n = len(rows["sku"])
        sizes = [tuple(rows["image"][i].shape[:2]) for i in range(n)]
        return {"image": render_by_size(sizes, lambda idx, size: self._render(rows, idx, size))}

    def _render(
        self, rows: dict[str, Any], idx: list[int], size: tuple[int, int]
    ) -> list[np.ndarray]:
        import torch
        from PIL import Image

        height, width = size
        padded = (_round_up(width, self.multiple), _round_up(height, self.multiple))
        inputs = []
        for i in idx:
            image = Image.fromarray(self._flatten(rows["image"][i]))
            inputs.append(image if image.size == padded else image.resize(padded, Image.LANCZOS))
        generators = [torch.Generator("cpu").manual_seed(int(rows["seed"][i]) ^ SEED_SALT)
                      for i in idx]
        negative = [rows["negative_prompt"][i] or "" for i in idx]
        kwargs: dict[str, Any] = {}
        if any(negative) and self.params.guidance > 1.0:
            kwargs["negative_prompt"] = negative
        with torch.inference_mode():
            result = self.pipe(
                prompt=[str(rows["prompt"][i]) for i in idx],
                image=inputs,
                strength=self.params.strength,
                num_inference_steps=self.schedule,
                guidance_scale=self.params.guidance,
                generator=generators,
                output_type="np",
                **kwargs,
            )
        pixels = np.clip(np.asarray(result.images) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        out = []
        for i, rgb in zip(idx, pixels):
            if rgb.shape[:2] != (height, width):
                rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.LANCZOS))
            source = rows["image"][i]
            if source.shape[2] == 4:  # the incoming alpha, unchanged
                rgb = np.concatenate([rgb, source[..., 3:]], axis=2)
            out.append(np.ascontiguousarray(rgb))
        return out

    def _flatten(self, image: np.ndarray) -> np.ndarray:
        """RGB of ``image``, with RGBA composited over the background colour."""
        if image.shape[2] == 3:
            return np.ascontiguousarray(image)
        alpha = image[..., 3:].astype(np.float32) / 255.0
        rgb = image[..., :3].astype(np.float32) * alpha + self.background * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def schedule_length(steps: int, strength: float) -> int:
    """The scheduler length on which img2img at ``strength`` runs exactly ``steps`` steps.

    diffusers runs ``min(int(n * strength), n)`` of ``n`` scheduled steps.
    """
    n = math.ceil(steps / strength)
    while min(int(n * strength), n) < steps:  # float rounding in steps / strength
        n += 1
    return n


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
