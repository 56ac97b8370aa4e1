"""upscale: Swin2SR super-resolution, tiled with feathered overlaps, or plain Lanczos.

Swin2SR runs on the RGB channels only; an alpha channel is resized with Lanczos to the same size
and re-attached, so RGB stays RGB and RGBA stays RGBA. Large images are cut into tiles that
overlap by a few pixels; across each overlap the two tiles cross-fade with a linear ramp that
ignores each tile's outermost pixels (the outer quarter of the overlap), so no seam shows. A
tile size that runs out of GPU memory is halved (down to ``min_tile``) and the image run again.

The image is padded once, to a multiple of the model's attention window, and tile sizes, strides
and overlaps are multiples of the window too. Every tile's windows then sit on the same grid as
an untiled run's windows, and tiled output differs from untiled output only near tile edges,
which is where the feather gives a tile the least weight.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Any, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from stages.base import Stage, StageParams
from stages.precision import Dtype, resolve, torch_dtype
from stages.weights import check_local_weights, quiet_loaders, to_device, torch_device

log = logging.getLogger(__name__)

# Weight of a tile's discarded edge pixels: tiny, but never 0, so no pixel divides by 0.
_FLOOR = 1e-4


class UpscaleParams(StageParams):
    """Parameters of a Swin2SR upscale stage.

    Attributes:
        scale: output size over input size. A Swin2SR checkpoint has one fixed factor (its
            config's ``upscale``); ``None`` means that one, and a given value must match it.
        tile: tile side in input pixels, rounded down to a multiple of the model's window;
            0 runs the whole image at once.
        overlap: overlap of neighbouring tiles in input pixels, rounded up to a multiple of
            the window; the outputs cross-fade over it.
        min_tile: smallest tile side the out-of-memory retry may halve down to.
        tile_batch: tiles per forward pass; tiles of one shape from every image of a batch
            share passes.
        dtype: weights and activations dtype (``stages.precision``; ``auto``: the card's
            advised dtype on CUDA, bfloat16 on a CPU with native bf16, float32 on other CPUs);
            blending is always float32.
        protect_product: in a row with a product layer (``stages.product``), the product's
            incoming pixels, Lanczos-resized, go back over the model's output: the model
            upscales the scene and never changes the product. ``false`` keeps the model's
            product pixels (``fidelity_delta_e`` then measures how far they moved).
    """

    key_added: ClassVar[frozenset[str]] = frozenset({"protect_product"})

    scale: Literal[2, 4] | None = None
    tile: int = Field(256, ge=0)
    overlap: int = Field(16, ge=0)
    min_tile: int = Field(64, ge=8)
    tile_batch: int = Field(4, ge=1)
    dtype: Dtype = "auto"
    protect_product: bool = True

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> UpscaleParams:
        if self.tile and self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tile ({self.tile})")
        return self


class LanczosParams(StageParams):
    """Parameters of the model-free upscale.

    Attributes:
        scale: output size over input size.
        protect_product: as ``UpscaleParams.protect_product``.
    """

    key_added: ClassVar[frozenset[str]] = frozenset({"protect_product"})

    scale: int = Field(2, ge=1, le=8)
    protect_product: bool = True


class Swin2SRUpscaler(Stage):
    """A ``Swin2SRForImageSuperResolution`` checkpoint, loaded once per actor."""

    def _load(self) -> None:
        quiet_loaders()  # before the hub libraries' imports, which warn on import
        check_local_weights(self.plan.source, allow_pickle=self.plan.allow_pickle)
        self.device = torch_device(self.plan.resources.num_gpus)
        self.precision = resolve(self.params.dtype, device=self.device,
                                 cuda_dtype=self.plan.card.cuda_dtype)
        self.dtype = torch_dtype(self.precision)
        model = self._from_pretrained(self.dtype)
        model_scale = int(model.config.upscale)
        if self.params.scale is not None and self.params.scale != model_scale:
            raise ValueError(
                f"params.scale is {self.params.scale} but model '{self.plan.source}' upscales "
                f"by {model_scale} (config.upscale); leave scale unset to use the model's own "
                f"factor, or pick a x{self.params.scale} model"
            )
        self.scale = model_scale
        self.window = int(model.config.window_size)
        self.model = to_device(model, self.device).eval()

    def _from_pretrained(self, dtype: Any) -> Any:
        """The model, on the CPU, in ``dtype``."""
        from transformers import Swin2SRForImageSuperResolution

        return Swin2SRForImageSuperResolution.from_pretrained(
            self.plan.source,
            revision=None if self.plan.revision in ("", "local") else self.plan.revision,
            use_safetensors=True if not self.plan.allow_pickle else None,  # None: prefer safetensors
            dtype=dtype,
        )

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        return {"image": self.upscale_batch(list(rows["image"]))}

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """Upscale one ``HxWxC`` uint8 image (C 3 or 4) by ``self.scale``.

        Args:
            image: the input pixels.

        Returns:
            A ``(H*scale)x(W*scale)xC`` uint8 array; alpha, if any, is Lanczos-resized.
        """
        return self.upscale_batch([image])[0]

    def upscale_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Upscale a batch: the tiles of all images share forward passes (``tile_batch`` tiles
        of one shape each), the feathered blend stays on the device, and the results come
        back to the host in one transfer.

        Args:
            images: ``HxWxC`` uint8 arrays, C 3 or 4, of any sizes.

        Returns:
            One ``(H*scale)x(W*scale)xC`` uint8 array per image.
        """
        rgbs = self._upscale_rgb([np.ascontiguousarray(image[..., :3]) for image in images])
        out = []
        for image, rgb in zip(images, rgbs):
            height, width, channels = image.shape
            if channels == 4:
                size = (width * self.scale, height * self.scale)
                alpha = lanczos_resize(np.ascontiguousarray(image[..., 3]), size)
                rgb = np.concatenate([rgb, alpha[..., None]], axis=2)
            out.append(rgb)
        return out

    def _upscale_rgb(self, rgbs: list[np.ndarray]) -> list[np.ndarray]:
        padded = []
        for rgb in rgbs:
            height, width = rgb.shape[:2]
            padded.append(np.pad(rgb, ((0, -height % self.window), (0, -width % self.window),
                                       (0, 0)),
                                 mode="reflect" if min(height, width) > 1 else "edge"))
        tile = self.params.tile
        floor = max(self.params.min_tile, self.window)
        while True:
            try:
                with _inference_mode():
                    outs = self._run_tiles(padded, tile)
                return [out[: rgb.shape[0] * self.scale, : rgb.shape[1] * self.scale]
                        for out, rgb in zip(outs, rgbs)]
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not _is_out_of_memory(exc):
                    raise
                current = max(self._tile_size(p.shape[:2], tile) for p in padded)
                smaller = max(self._tile_size(p.shape[:2], current // 2) for p in padded)
                if smaller < floor or smaller >= current:
                    raise
                log.warning("stage %s: out of memory at tile %d; retrying at tile %d",
                            self.plan.name, current, smaller)
            # Outside the except block, so the failed attempt's tensors are already released.
            _release_cuda_cache()
            tile = smaller

    def _tile_size(self, shape: tuple[int, ...], tile: int) -> int:
        """A tile side: a multiple of the window, at most the padded image's longer side."""
        longest = max(shape)
        if tile <= 0 or tile >= longest:
            return longest
        return max(self.window, tile - tile % self.window)

    def _run_tiles(self, padded: list[np.ndarray], tile: int) -> list[np.ndarray]:
        """Run every tile of window-aligned images and feather-blend the outputs on the device.

        Tiles of equal shape, from any image, share forward passes of up to ``tile_batch``.
        Each image accumulates ``sum(weight * tile)`` and ``sum(weight)`` in float32 on the
        device; the uint8 results cross to the host in one copy, the batch's only sync.
        """
        import torch

        s = self.scale
        work: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # shape -> (image, y, x)
        plans = []
        for i, image in enumerate(padded):
            height, width = image.shape[:2]
            size = self._tile_size((height, width), tile)
            tile_h, tile_w = min(size, height), min(size, width)
            overlap = -(-self.params.overlap // self.window) * self.window  # round up
            overlap = min(overlap, size - self.window)
            boxes = [(y, x) for y in _starts(height, tile_h, tile_h - overlap)
                     for x in _starts(width, tile_w, tile_w - overlap)]
            plans.append((height, width, tile_h, tile_w, overlap, len(boxes)))
            work.setdefault((tile_h, tile_w), []).extend((i, y, x) for y, x in boxes)
        sources = [torch.from_numpy(image).to(self.device).permute(2, 0, 1) for image in padded]
        totals: list[Any] = [None] * len(padded)
        weights: list[Any] = [None] * len(padded)
        ramps: dict[tuple[int, int, bool, bool], Any] = {}

        def ramp(size: int, overlap: int, lead: bool, trail: bool) -> Any:
            key = (size, overlap, lead, trail)
            if key not in ramps:
                ramps[key] = torch.from_numpy(_feather(size, overlap, lead, trail)).to(self.device)
            return ramps[key]

        for (tile_h, tile_w), tiles in work.items():
            for first in range(0, len(tiles), self.params.tile_batch):
                chunk = tiles[first: first + self.params.tile_batch]
                batch = torch.stack([sources[i][:, y: y + tile_h, x: x + tile_w]
                                     for i, y, x in chunk])
                for (i, y, x), pixels in zip(chunk, self._forward(batch)):
                    height, width, _, _, overlap, count = plans[i]
                    if count == 1:  # the whole image in one tile: nothing to blend
                        totals[i] = pixels
                        continue
                    if totals[i] is None:
                        totals[i] = torch.zeros((3, height * s, width * s),
                                                dtype=torch.float32, device=self.device)
                        weights[i] = torch.zeros((1, height * s, width * s),
                                                 dtype=torch.float32, device=self.device)
                    weight = torch.outer(
                        ramp(tile_h * s, overlap * s, y > 0, y + tile_h < height),
                        ramp(tile_w * s, overlap * s, x > 0, x + tile_w < width))[None]
                    box = (slice(None), slice(y * s, (y + tile_h) * s),
                           slice(x * s, (x + tile_w) * s))
                    totals[i][box] += pixels * weight
                    weights[i][box] += weight
        outs = [total if weight is None else total / weight
                for total, weight in zip(totals, weights)]
        pixels = [out.mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
                  for out in outs]
        flat = torch.cat([p.reshape(-1) for p in pixels]).cpu().numpy()  # the one sync
        results, offset = [], 0
        for p in pixels:
            n = p.numel()
            results.append(flat[offset: offset + n].reshape(tuple(p.shape)))
            offset += n
        return results

    def _forward(self, tiles: Any) -> Any:
        """NCHW uint8 tiles (window multiples) -> NCHW float32 [0, 1] outputs on the device,
        cropped to scale."""
        import torch

        height, width = tiles.shape[2:]
        with torch.inference_mode():
            pixel_values = tiles.to(self.dtype).div_(255.0)
            out = self.model(pixel_values=pixel_values).reconstruction
            out = out[:, :, : height * self.scale, : width * self.scale]
            return out.float().clamp_(0.0, 1.0)


class LanczosUpscaler(Stage):
    """PIL Lanczos resize of every channel: the no-model upscale."""

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        s = self.params.scale
        return {"image": [lanczos_resize(np.ascontiguousarray(image),
                                         (image.shape[1] * s, image.shape[0] * s))
                          for image in rows["image"]]}


def lanczos_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``HxW`` or ``HxWxC`` array with PIL's Lanczos filter.

    Args:
        pixels: the image (one channel, RGB or RGBA).
        size: ``(width, height)`` of the result.

    Returns:
        The resized uint8 array, with the same channel count.
    """
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def _starts(length: int, size: int, step: int) -> list[int]:
    """Tile offsets along one axis; the last tile ends at the edge, so all tiles are equal."""
    if size >= length:
        return [0]
    return [*range(0, length - size, step), length - size]


def _feather(size: int, overlap: int, lead: bool, trail: bool) -> np.ndarray:
    """Per-pixel weight along one tile axis: 1 inside, ramps on edges shared with a tile.

    A tile's outermost pixels are its least reliable (its convolutions saw padding there, not
    the neighbour's pixels), so the outer quarter of the overlap gets a near-zero weight and
    the ramp runs linearly across the middle half. A leading ramp and the neighbour's trailing
    ramp over the same ``overlap`` pixels sum to 1 (the ``_FLOOR`` aside, which keeps every
    weight positive).
    """
    weight = np.ones(size, dtype=np.float32)
    overlap = min(overlap, size)
    if overlap:
        margin = overlap // 4
        up = (np.arange(overlap, dtype=np.float32) + 0.5 - margin) / (overlap - 2 * margin)
        up = np.clip(up, _FLOOR, 1.0)
        if lead:
            weight[:overlap] = np.minimum(weight[:overlap], up)
        if trail:
            weight[size - overlap:] = np.minimum(weight[size - overlap:], up[::-1])
    return weight


def _inference_mode() -> Any:
    import torch

    return torch.inference_mode()


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
