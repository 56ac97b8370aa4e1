"""segment: a classical key of a white or uniform studio sweep; no weights, CPU only.

Most catalog photos are shot on a sweep. Its colour is estimated from the image border (a band
of ``border`` px) as a low-order polynomial in x and y per Lab channel, fitted robustly (border
pixels far from the fit, where the product touches the frame, are dropped and the fit repeated),
so a sweep that darkens toward the floor or vignettes in the corners is still one background.
A pixel's alpha ramps with its colour distance to the background estimated at its own position:
Euclidean ΔE76 in Lab, for speed (CIEDE2000 costs some twenty times more per pixel, about 0.8 s
for a 1024 px image, and near a neutral sweep, where the threshold lies, the two agree closely
enough that ``tolerance`` absorbs the difference). Cleanup then drops specks, fills holes
enclosed by the product unless the sweep shows through them (a white label stays, a mug's
handle opening goes), and can feather the edge.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import Field

from stages.base import Stage, StageParams
from stages.colour import srgb_to_lab

#: Border pixels a fit uses at most: a handful of coefficients needs thousands, not millions.
_FIT_SAMPLES = 8192
#: A border pixel this close to the fit (ΔE) is always kept as sweep, however tight the spread.
_FIT_FLOOR = 1.5


class StudioKeyParams(StageParams):
    """How the sweep is modelled and the cut-out cleaned.

    Attributes:
        border: width of the frame band the sweep's colour is estimated from, in pixels.
        order: degree of the background polynomial in x and y (0: one flat colour; 2 follows a
            gradient and a vignette).
        tolerance: ΔE76 to the sweep under which a pixel is background (alpha 0).
        softness: the narrowest alpha ramp over ``tolerance``, in ΔE76; a pixel more than
            half of it over ``tolerance`` is product. At the cut-out's edge the ramp runs up
            to the distance of the product beside the pixel, so alpha follows coverage.
        fill_holes: make holes enclosed by the product opaque where they do not look like the
            sweep (a white label inside a mug); holes that do stay transparent.
        hole_match: a hole whose median ΔE76 to the sweep is at most this is the sweep seen
            through the product (a handle's opening). A label as white as the sweep itself
            cannot be told from it by colour and is cut out.
        min_component: product components (and holes) smaller than this fraction of the image
            are specks: dropped (filled).
        feather: Gaussian blur of the final alpha, in pixels (0: none).
    """

    border: int = Field(8, ge=1, le=256)
    order: int = Field(2, ge=0, le=3)
    tolerance: float = Field(6.0, ge=0.0)
    softness: float = Field(16.0, gt=0.0)
    fill_holes: bool = True
    hole_match: float = Field(3.0, ge=0.0)
    min_component: float = Field(0.0005, ge=0.0, le=1.0)
    feather: float = Field(0.0, ge=0.0, le=8.0)


class StudioKeySegmenter(Stage):
    """Keys each image's sweep into alpha and records the alpha's coverage, as rembg's cards do.

    An RGBA input that already has a cut-out (some alpha below 255, an empty canvas included:
    a catalog row without a photo) was delivered cut out and passes through unchanged.
    """

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        out, coverage = [], []
        for image in rows["image"]:
            if image.shape[2] == 4 and image[..., 3].min() < 255:
                cut = image
            else:
                rgb = np.ascontiguousarray(image[..., :3])
                cut = np.dstack([rgb, studio_key(rgb, self.params)])
            out.append(cut)
            coverage.append(float(cut[..., 3].mean()) / 255.0)
        return {"image": out, "alpha_coverage": coverage}


def studio_key(rgb: np.ndarray, params: StudioKeyParams) -> np.ndarray:
    """The ``HxW uint8`` alpha of an ``HxWx3 uint8`` studio shot."""
    from scipy import ndimage

    h, w = rgb.shape[:2]
    lab = srgb_to_lab(rgb).astype(np.float32)
    band = max(1, min(params.border, min(h, w) // 4))
    diff = lab - sweep_model(lab, border=band, order=params.order)
    # channel by channel: several times faster than np.linalg.norm over a length-3 axis
    distance = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2)
    min_area = params.min_component * h * w
    solid = _without_specks(distance > params.tolerance + params.softness / 2, min_area)
    if params.fill_holes:
        solid |= _enclosed_product(solid, distance, min_area=max(min_area, 1.0),
                                   hole_match=params.hole_match)
    # The ramp speaks only at the cut-out's own boundary (inner and outer ring); elsewhere the
    # decision is final, so a filled label is opaque and a dropped speck is gone.
    core = ndimage.binary_erosion(solid, border_value=1)
    edge = ndimage.binary_dilation(solid) & ~core
    alpha = np.where(core, np.float32(1.0), np.float32(0.0))
    ey, ex = np.nonzero(edge)
    # An edge pixel mixes the product beside it with the sweep: its share of the way from the
    # sweep to that product's own distance estimates its coverage better than a fixed ramp,
    # which would put every edge of a strongly coloured product half a pixel too far out.
    product = np.pad(np.where(solid, distance, np.float32(0.0)), 2)
    beside = np.zeros(ey.size, np.float32)
    for dy in range(5):
        for dx in range(5):
            np.maximum(beside, product[ey + dy, ex + dx], out=beside)
    span = np.maximum(beside - params.tolerance, params.softness)
    alpha[ey, ex] = np.clip((distance[ey, ex] - params.tolerance) / span, 0.0, 1.0)
    if params.feather > 0:
        alpha = ndimage.gaussian_filter(alpha, params.feather)
    return np.rint(alpha * 255.0).astype(np.uint8)


def sweep_model(lab: np.ndarray, *, border: int, order: int) -> np.ndarray:
    """The sweep's Lab colour at every pixel, fitted to the frame band of width ``border``.

    A least-squares polynomial of degree ``order`` in x and y per channel, refitted without the
    band pixels more than three robust deviations from the previous fit (the product where it
    crosses the frame), a few times.
    """
    h, w = lab.shape[:2]
    ring = np.ones((h, w), bool)
    ring[border:h - border, border:w - border] = False
    ys, xs = np.nonzero(ring)
    step = max(1, ys.size // _FIT_SAMPLES)
    ys, xs = ys[::step], xs[::step]
    samples = lab[ys, xs].astype(np.float64)
    powers = [(i, j) for j in range(order + 1) for i in range(order + 1 - j)]
    x, y = _unit(xs, w), _unit(ys, h)
    design = np.stack([x ** i * y ** j for i, j in powers], axis=1)
    keep = np.ones(ys.size, bool)
    for _ in range(4):
        coef = np.linalg.lstsq(design[keep], samples[keep], rcond=None)[0]
        residual = np.linalg.norm(samples - design @ coef, axis=1)
        spread = 1.4826 * np.median(residual[keep])
        kept = residual <= max(3.0 * spread, _FIT_FLOOR)
        if np.array_equal(kept, keep) or kept.sum() < 2 * len(powers):
            break
        keep = kept
    # one row polynomial per power of y: order + 1 passes over the image, not one per term
    gx, gy = _unit(np.arange(w), w), _unit(np.arange(h), h)
    model = np.zeros((h, w, 3), np.float32)
    for j in range(order + 1):
        row = sum(np.outer(gx ** i, coef[powers.index((i, j))]) for i in range(order + 1 - j))
        model += (gy ** j).astype(np.float32)[:, None, None] * row.astype(np.float32)[None]
    return model


def _unit(index: np.ndarray, n: int) -> np.ndarray:
    """Pixel positions mapped onto -1..1 (a well-conditioned polynomial basis)."""
    return (2.0 * index + 1.0) / n - 1.0


def _enclosed_product(solid: np.ndarray, distance: np.ndarray, *, min_area: float,
                      hole_match: float) -> np.ndarray:
    """The holes of ``solid`` that are product: pinholes, and holes unlike the sweep."""
    from scipy import ndimage

    labels, n = ndimage.label(~solid)
    if not n:
        return np.zeros_like(solid)
    enclosed = np.ones(n + 1, bool)
    enclosed[[0, *np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0],
                                            labels[:, -1]]))]] = False
    inside = enclosed[labels]
    if not inside.any():
        return inside
    which, values = labels[inside], distance[inside]
    index = np.unique(which)
    sizes = ndimage.sum_labels(np.ones_like(values), which, index)
    median = ndimage.median(values, which, index)
    product = np.zeros(n + 1, bool)
    product[index] = (sizes < min_area) | (np.asarray(median) > hole_match)
    return product[labels]


def _without_specks(mask: np.ndarray, min_area: float) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if not n:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]
