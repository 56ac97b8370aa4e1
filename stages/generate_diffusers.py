"""generate: diffusers text-to-image, one deterministic seed per SKU.

Any pipeline ``AutoPipelineForText2Image`` can load (SD 1.x/2.x, SD-Turbo, SDXL, Flux) is a card
with this runtime; the card's source names the weights.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import Field

from stages.base import Stage, StageParams, render_by_size
from stages.precision import Dtype, channels_last_pays, resolve, to_channels_last, torch_dtype
from stages.weights import (check_local_weights, compile_denoiser, quiet_loaders, to_device,
                            torch_device)


class GenerateParams(StageParams):
    """Parameters of a text-to-image stage; a card's ``defaults`` replace these defaults.

    Rows may override ``width`` and ``height`` with manifest columns of the same name; they
    must then be multiples of ``size_multiple`` too (the row fails otherwise).

    Attributes:
        dtype: the precision (``stages.precision``): ``auto`` is the card's advised dtype on
            CUDA, bfloat16 on a CPU with native bf16 (AMX or AVX512-BF16), float32 on other
            CPUs; a dtype name pins it.
        compile: ``torch.compile`` the denoiser at load (pays off over long runs of one size).
    """

    #: Image sides are multiples of this: SD and SDXL VAEs downsample by 8.
    size_multiple: ClassVar[int] = 8

    width: int = Field(512, ge=8, le=8192, multiple_of=8)
    height: int = Field(512, ge=8, le=8192, multiple_of=8)
    steps: int = Field(4, ge=1, le=200)
    guidance: float = Field(0.0, ge=0.0, le=50.0)
    dtype: Dtype = "auto"
    compile: bool = False


class FluxGenerateParams(GenerateParams):
    """Flux packs 2x2 patches of latents from a VAE that downsamples by 8: sides are
    multiples of 16."""

    size_multiple: ClassVar[int] = 16

    width: int = Field(1024, ge=16, le=8192, multiple_of=16)
    height: int = Field(1024, ge=16, le=8192, multiple_of=16)


class DiffusersGenerator(Stage):
    """Batched prompts through one pipeline loaded once per actor."""

    def _load(self) -> None:
        quiet_loaders()  # before the hub libraries' imports, which warn on import
        check_local_weights(self.plan.source, allow_pickle=self.plan.allow_pickle)
        self.device = torch_device(self.plan.resources.num_gpus)
        self.precision = resolve(self.params.dtype, device=self.device,
                                 cuda_dtype=self.plan.card.cuda_dtype)
        self.dtype = torch_dtype(self.precision)
        self.pipe = to_device(self._from_pretrained(self.dtype), self.device)
        self.pipe.set_progress_bar_config(disable=True)
        if channels_last_pays(self.device, self.precision):
            to_channels_last(self.pipe)
        if self.params.compile:
            compile_denoiser(self.pipe)

    def _from_pretrained(self, dtype: Any) -> Any:
        """The pipeline, on the CPU, in ``dtype``."""
        from stages.pipelines import load_pipeline

        return load_pipeline(
            "text2image", self.plan.source,
            revision=None if self.plan.revision in ("", "local") else self.plan.revision,
            dtype=dtype,
            use_safetensors=True if not self.plan.allow_pickle else None,  # None: prefer safetensors
        )

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        n = len(rows["sku"])
        sizes = [self._size(rows, i) for i in range(n)]
        return {"image": render_by_size(sizes, lambda idx, size: self._render(rows, idx, size))}

    def _render(self, rows: dict[str, Any], idx: list[int], size: tuple[int, int]):
        import torch

        generators = [torch.Generator("cpu").manual_seed(int(rows["seed"][i])) for i in idx]
        negative = [rows["negative_prompt"][i] or "" for i in idx]
        kwargs: dict[str, Any] = {}
        if any(negative) and self.params.guidance > 1.0:
            kwargs["negative_prompt"] = negative
        with torch.inference_mode():
            result = self.pipe(
                prompt=[str(rows["prompt"][i]) for i in idx],
                width=size[0],
                height=size[1],
                num_inference_steps=self.params.steps,
                guidance_scale=self.params.guidance,
                generator=generators,
                output_type="np",
                **kwargs,
            )
        pixels = np.clip(np.asarray(result.images) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return list(pixels)

    def _size(self, rows: dict[str, Any], i: int) -> tuple[int, int]:
        width = _row_int(rows, "width", i) or self.params.width
        height = _row_int(rows, "height", i) or self.params.height
        multiple = self.params.size_multiple
        if width % multiple or height % multiple:
            raise ValueError(f"size {width}x{height} (row width/height): "
                             f"'{self.plan.card.name}' needs multiples of {multiple}")
        return width, height


def _row_int(rows: dict[str, Any], column: str, i: int) -> int | None:
    if column not in rows or rows[column][i] is None:
        return None
    return int(rows[column][i])
