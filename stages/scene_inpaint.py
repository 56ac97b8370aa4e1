"""scene: generate the background around the customer's own product with diffusers inpainting.

The row's cut-out (an RGBA image from a segment stage) is cropped to its alpha, scaled and placed
on a canvas: that is the product layer (``stages.product``). An inpainting model (SD, SDXL or
Flux Fill, whichever pipeline the card's weights are) generates everything that is not solidly
product, a classical contact shadow darkens the floor under it, and the product's own pixels go
back on top exactly. Any pipeline ``AutoPipelineForInpainting`` or ``FluxFillPipeline`` loads is
a card with this runtime.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar, NamedTuple, Sequence

import numpy as np
from pydantic import Field, field_validator

from stages.base import StageParams, render_by_size
from stages.colour import parse_hex_colour
from stages.generate_diffusers import DiffusersGenerator
from stages.lora_diffusers import schedule_length
from stages.precision import Dtype
from stages.product import FIDELITY, PRODUCT, composite, fidelity_delta_e, resize_layer

#: What a scene card adds, and the per-asset figure it records (the cards use these).
SCENE_OUTPUTS = ("image", PRODUCT)
SCENE_METRICS = ((FIDELITY, "float64"),)
#: XORed into each row's seed: the scene's noise is independent of other stages' noise.
SEED_SALT = 0x5CE7E
#: Alpha from which a pixel is solid product, kept as it is; below it the model generates, so
#: what lies under a soft edge (which lets the background show through) is scene, not fill.
SOLID_ALPHA = 250
#: Alpha from which a pixel counts toward the product's box: a segmenter's faint specks in the
#: background would otherwise stretch it.
BOX_ALPHA = 16
#: The shadow's footprint: the product's bottom rows (this fraction of its height) ...
FOOT_BAND = 0.08
#: ... squashed into an ellipse this much wider than the footprint, and this flat.
SHADOW_SPREAD = 1.1
SHADOW_FLATNESS = 0.12


class Box(NamedTuple):
    """A rectangle of pixels: its top row, left column, height and width."""

    top: int
    left: int
    height: int
    width: int


class PlacementParams(StageParams):
    """Where the product goes on a scene's canvas and how it is put back: the params every
    scene stage shares, local or hosted (``SceneParams`` documents each)."""

    scale: float = Field(0.6, gt=0.0, le=1.0)
    x: float = Field(0.5, ge=0.0, le=1.0)
    y: float = Field(0.55, ge=0.0, le=1.0)
    margin: float = Field(0.05, ge=0.0, le=0.45)
    shadow: bool = True
    shadow_opacity: float = Field(0.5, ge=0.0, le=1.0)
    shadow_blur: float = Field(0.04, ge=0.0, le=1.0)
    fill: str = "#FFFFFF"

    @field_validator("fill")
    @classmethod
    def _check_fill(cls, value: str) -> str:
        parse_hex_colour(value)
        return value


class SceneParams(PlacementParams):
    """Parameters of a scene stage; a card's ``defaults`` replace these defaults.

    Rows may override ``width`` and ``height`` with manifest columns of the same name (multiples
    of ``size_multiple`` too, or the row fails).

    Attributes:
        strength: inpaint strength; below 1 the model starts from ``fill`` where it generates.
        steps: denoising steps actually run (at any ``strength``).
        scale: the product's box as a fraction of the canvas (each side), at most.
        x, y: the product's centre as fractions of the canvas's width and height.
        margin: the product stays this fraction of each side away from the canvas's edges.
        shadow: darken the floor under the product (a soft contact shadow, no model).
        shadow_opacity: the darkest point's darkening (1: black).
        shadow_blur: the shadow's Gaussian blur, as a fraction of the product's width.
        fill: hex colour under the generated region; it tints the scene when ``strength`` < 1.
        dtype: the precision, as the generate stage's (``stages.precision``); the product's
            pixels are composited back exactly whatever it is.
        compile: ``torch.compile`` the denoiser at load.
    """

    #: Image sides are multiples of this: SD and SDXL VAEs downsample by 8.
    size_multiple: ClassVar[int] = 8

    width: int = Field(512, ge=8, le=8192, multiple_of=8)
    height: int = Field(512, ge=8, le=8192, multiple_of=8)
    steps: int = Field(25, ge=1, le=200)
    guidance: float = Field(7.5, ge=0.0, le=50.0)
    strength: float = Field(1.0, gt=0.0, le=1.0)
    dtype: Dtype = "auto"
    compile: bool = False


class FluxSceneParams(SceneParams):
    """Flux packs 2x2 patches of latents from a VAE that downsamples by 8: sides are
    multiples of 16."""

    size_multiple: ClassVar[int] = 16

    width: int = Field(1024, ge=16, le=8192, multiple_of=16)
    height: int = Field(1024, ge=16, le=8192, multiple_of=16)


def alpha_box(alpha: np.ndarray, *, threshold: int = BOX_ALPHA) -> Box | None:
    """The bounding box of ``alpha >= threshold``; None when no pixel reaches it."""
    solid = alpha >= threshold
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    if not rows.size:
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))


def place(size: tuple[int, int], canvas: tuple[int, int], *, scale: float, x: float, y: float,
          margin: float) -> Box:
    """Where a product of ``size`` (height, width) goes on a ``canvas`` (height, width).

    Its aspect is kept; it is scaled (up or down) to fit a box of ``scale`` times the canvas and
    the canvas less ``margin`` on every side, centred at (``x``, ``y``) and moved back inside
    the margins if that centre would push it out.
    """
    (height, width), (rows, cols) = size, canvas
    limit = min(scale, 1.0 - 2.0 * margin)
    factor = min(limit * cols / width, limit * rows / height)
    h = min(rows, max(1, _round(height * factor)))
    w = min(cols, max(1, _round(width * factor)))
    return Box(_clamp(_round(y * rows - h / 2), h, rows, margin),
               _clamp(_round(x * cols - w / 2), w, cols, margin), h, w)


def product_layer(cutout: np.ndarray, canvas: tuple[int, int], *, scale: float, x: float,
                  y: float, margin: float) -> np.ndarray:
    """The product layer: ``cutout`` (HxWx4) cropped to its alpha and placed (``place``) on a
    transparent canvas (height, width), resized on premultiplied colour; all transparent when
    the cut-out holds no product."""
    if cutout.ndim != 3 or cutout.shape[2] != 4:
        raise ValueError(f"a scene needs an RGBA cut-out (a segment stage before it); the row's "
                         f"image is {cutout.shape}")
    layer = np.zeros((*canvas, 4), dtype=np.uint8)
    box = alpha_box(cutout[..., 3])
    if box is None:
        return layer
    crop = cutout[box.top:box.top + box.height, box.left:box.left + box.width]
    spot = place((box.height, box.width), canvas, scale=scale, x=x, y=y, margin=margin)
    layer[spot.top:spot.top + spot.height, spot.left:spot.left + spot.width] = resize_layer(
        crop, (spot.height, spot.width))
    return layer


def inpaint_mask(alpha: np.ndarray, *, grow: int) -> np.ndarray:
    """Where the model generates (255) and keeps (0): everything but solid product
    (``SOLID_ALPHA``), grown ``grow`` pixels into the product. With ``grow`` the VAE's
    downsampling, no kept latent cell holds any background, which would come back as fill."""
    keep = alpha >= SOLID_ALPHA
    if grow > 0 and keep.any():
        from scipy.ndimage import minimum_filter

        # a square erosion (a latent cell is square), separable: ~10x faster than iterating
        keep = minimum_filter(keep, size=2 * grow + 1, mode="constant", cval=1)
    return np.where(keep, 0, 255).astype(np.uint8)


def contact_shadow(alpha: np.ndarray, *, blur: float) -> np.ndarray:
    """A soft contact shadow (0..1, 1 darkest) for the product whose layer alpha is ``alpha``.

    The product's bottom rows (``FOOT_BAND``) give the footprint; it becomes a flat ellipse
    centred on the base line, darkest at its middle, Gaussian-blurred by ``blur`` times the
    product's width. A vertical ramp fades it out above the base, so it lies on the floor
    and never climbs the product's sides past the ellipse's own top.
    """
    shadow = np.zeros(alpha.shape, dtype=np.float32)
    box = alpha_box(alpha)
    if box is None:
        return shadow
    base = box.top + box.height - 1
    band = alpha[base - max(1, _round(FOOT_BAND * box.height)) + 1:base + 1] >= BOX_ALPHA
    cols = np.flatnonzero(band.any(axis=0))
    centre = (cols[0] + cols[-1]) / 2.0
    rx = max(1.0, SHADOW_SPREAD * (cols[-1] - cols[0] + 1) / 2.0)
    ry = max(1.0, SHADOW_FLATNESS * rx)
    sigma = blur * box.width
    reach = 4.0 * sigma + 1.0  # gaussian_filter's own truncation: the window holds it all
    top, bottom = max(0, int(base - ry - reach)), min(alpha.shape[0], int(base + ry + reach) + 2)
    left = max(0, int(centre - rx - reach))
    right = min(alpha.shape[1], int(centre + rx + reach) + 2)
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    window = np.clip(1.0 - ((xx - centre) / rx) ** 2 - ((yy - base) / ry) ** 2, 0.0, None)
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        window = gaussian_filter(window, sigma, mode="constant")
    window *= np.clip((yy - (base - ry)) / ry, 0.0, 1.0)
    if window.max() > 0:
        shadow[top:bottom, left:right] = window / window.max()
    return shadow


def finish(generated: np.ndarray, layer: np.ndarray, *, shadow: bool, opacity: float,
           blur: float) -> np.ndarray:
    """The scene: ``generated`` (HxWx3) darkened by the product's contact shadow, then the
    product layer over it; where the layer is opaque the result is the product's pixels."""
    if shadow and opacity > 0:
        dark = 1.0 - opacity * contact_shadow(layer[..., 3], blur=blur)
        generated = np.clip(generated * dark[..., None] + 0.5, 0, 255).astype(np.uint8)
    return composite(generated, layer)


def flatten(layer: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """The layer's RGB over ``fill``: the image the inpainting model is given."""
    alpha = layer[..., 3:].astype(np.float32) / 255.0
    rgb = layer[..., :3] * alpha + np.asarray(fill, dtype=np.float32) * (1.0 - alpha)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def fill_schedule_length(steps: int, strength: float) -> int:
    """``schedule_length`` for Flux Fill, which runs ``n - int(n - n * strength)`` of ``n``
    scheduled steps (SD and SDXL run ``int(n * strength)``)."""
    n = steps
    while n - int(max(n - min(n * strength, n), 0)) < steps:
        n += 1
    return n


class DiffusersScene(DiffusersGenerator):
    """The product placed, the scene generated around it, the product put back exactly.

    It loads its pipeline as the generate stage does (device, precision, memory layout,
    compile); only which pipeline class and what a batch becomes differ."""

    image_columns: ClassVar[tuple[str, ...]] = SCENE_OUTPUTS

    def _load(self) -> None:
        from diffusers import FluxFillPipeline

        super()._load()
        self.fill = parse_hex_colour(self.params.fill)
        self.grow = int(self.pipe.vae_scale_factor)
        self.negatives = "negative_prompt" in inspect.signature(self.pipe.__call__).parameters
        flux_fill = isinstance(self.pipe, FluxFillPipeline)
        self.schedule = (fill_schedule_length if flux_fill else schedule_length)(
            self.params.steps, self.params.strength)

    def _from_pretrained(self, dtype: Any) -> Any:
        """The pipeline, on the CPU, in ``dtype``: the class the weights' ``model_index.json``
        names. The inpainting task's class maps SD and SDXL inpainting (and turns a
        text-to-image checkpoint into its inpainting pipeline: ``stages.pipelines``); diffusers
        has no inpainting entry for ``FluxFillPipeline``, which is loaded by name."""
        from stages.pipelines import checkpoint_class, pipeline_loader

        options = {
            "revision": None if self.plan.revision in ("", "local") else self.plan.revision,
            "use_safetensors": True if not self.plan.allow_pickle else None,  # None: prefer
        }
        name = checkpoint_class(self.plan.source, revision=options["revision"])
        if name == "FluxFillPipeline":
            import diffusers

            loader = diffusers.FluxFillPipeline
        else:
            loader = pipeline_loader("inpainting", name)
        return loader.from_pretrained(self.plan.source, dtype=dtype, **options)

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        n = len(rows["sku"])
        sizes = [self._size(rows, i) for i in range(n)]
        p = self.params
        layers = [product_layer(rows["image"][i], (sizes[i][1], sizes[i][0]), scale=p.scale,
                                x=p.x, y=p.y, margin=p.margin) for i in range(n)]
        scenes = render_by_size(sizes, lambda idx, size: self._render(rows, layers, idx, size))
        return {"image": scenes, PRODUCT: layers,
                FIDELITY: [fidelity_delta_e(scene, layer) for scene, layer in zip(scenes, layers)]}

    def _render(self, rows: dict[str, Any], layers: list[np.ndarray], idx: list[int],
                size: tuple[int, int]) -> list[np.ndarray]:
        import torch
        from PIL import Image

        p = self.params
        generators = [torch.Generator("cpu").manual_seed(int(rows["seed"][i]) ^ SEED_SALT)
                      for i in idx]
        negative = [rows["negative_prompt"][i] or "" for i in idx]
        kwargs: dict[str, Any] = {}
        if self.negatives and any(negative) and p.guidance > 1.0:
            kwargs["negative_prompt"] = negative
        with torch.inference_mode():
            result = self.pipe(
                prompt=[str(rows["prompt"][i]) for i in idx],
                image=[Image.fromarray(flatten(layers[i], self.fill)) for i in idx],
                mask_image=[Image.fromarray(inpaint_mask(layers[i][..., 3], grow=self.grow))
                            for i in idx],
                width=size[0],
                height=size[1],
                strength=p.strength,
                num_inference_steps=self.schedule,
                guidance_scale=p.guidance,
                generator=generators,
                output_type="np",
                **kwargs,
            )
        pixels = np.clip(np.asarray(result.images) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return [finish(rgb, layers[i], shadow=p.shadow, opacity=p.shadow_opacity,
                       blur=p.shadow_blur) for i, rgb in zip(idx, pixels)]


def _round(value: float) -> int:
    return math.floor(value + 0.5)  # half up, not Python's half to even


def _clamp(start: int, length: int, side: int, margin: float) -> int:
    """``start`` moved so ``length`` pixels lie inside ``side`` less ``margin`` at each end
    (inside ``side`` when rounding left no room between the margins)."""
    low = _round(margin * side)
    high = side - length - low
    if high < low:
        low, high = 0, side - length
    return min(max(start, low), high)
