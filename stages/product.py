"""The product layer: the customer's own pixels, carried beside the image they sit in.

A scene stage places the product's cut-out on a canvas and generates the scene around it. From
then on a row carries two image columns: ``image`` (what the next stage works on) and
``PRODUCT`` (an RGBA layer of the canvas's size: the product's own pixels where its alpha is,
transparent elsewhere). A later stage that may change pixels (upscale, recolor, the brand LoRA)
resizes the layer to its output's size and, unless its spec says otherwise, composites it back
over what it made: the product leaves the chain as it came in. ``fidelity_delta_e`` measures
that per asset (mean CIEDE2000 over the eroded cut-out, at the asset's resolution).
"""

from __future__ import annotations

import numpy as np

from stages.colour import delta_e_2000, srgb_to_lab

#: The product layer's column (an image column: ``HxWx4 uint8``).
PRODUCT = "product"
#: The per-asset fidelity figure (lineage column, QA metric).
FIDELITY = "fidelity_delta_e"
#: Pixels measured: alpha above this fraction, then eroded by ``FIDELITY_ERODE`` pixels.
FIDELITY_ALPHA = 0.5
FIDELITY_ERODE = 2
#: Pixels measured at most (a fixed stride beyond): the figure's cost is bounded.
_MAX_FIDELITY_PIXELS = 262_144


def resize_layer(layer: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``layer`` (HxWx4 uint8) at ``size`` (height, width), Lanczos. Pillow resamples RGBA
    premultiplied, so no dark fringe grows where the cut-out meets its transparent pixels."""
    height, width = size
    if layer.shape[:2] == (height, width):
        return layer
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(layer)).resize(
        (width, height), Image.LANCZOS))


def composite(image: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """``layer`` over ``image`` (same height and width): where the layer is opaque the result
    is the layer's pixels exactly; an RGBA ``image`` keeps its own alpha."""
    if layer.shape[:2] != image.shape[:2]:
        raise ValueError(f"product layer {layer.shape[:2]} and image {image.shape[:2]} differ")
    alpha = layer[..., 3:].astype(np.float32) / 255.0
    rgb = layer[..., :3].astype(np.float32) * alpha + image[..., :3].astype(np.float32) * (
        1.0 - alpha)
    out = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    opaque = layer[..., 3] == 255
    out[opaque] = layer[..., :3][opaque]
    if image.shape[2] == 4:
        out = np.concatenate([out, image[..., 3:]], axis=2)
    return np.ascontiguousarray(out)


def product_mask(layer: np.ndarray, *, erode: int = FIDELITY_ERODE) -> np.ndarray:
    """The pixels the fidelity figure measures: alpha > 0.5, eroded by ``erode`` pixels."""
    mask = layer[..., 3] > int(FIDELITY_ALPHA * 255)
    if erode > 0 and mask.any():
        from scipy.ndimage import binary_erosion

        mask = binary_erosion(mask, iterations=erode, border_value=0)
    return mask


def fidelity_delta_e(image: np.ndarray, layer: np.ndarray) -> float:
    """Mean CIEDE2000 between the product's own pixels (``layer``, resized to the image) and
    ``image`` over the eroded cut-out; NaN where the layer holds no product."""
    layer = resize_layer(layer, image.shape[:2])
    mask = product_mask(layer)
    if not mask.any():
        return float("nan")
    source = layer[..., :3][mask]
    made = image[..., :3][mask]
    stride = max(1, -(-source.shape[0] // _MAX_FIDELITY_PIXELS))
    return float(delta_e_2000(srgb_to_lab(source[::stride]), srgb_to_lab(made[::stride])).mean())
