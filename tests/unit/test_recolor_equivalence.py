"""The recolor stage's output against the implementation it replaced, on fixed images.

Issue 9 moved the recolor stage's ΔE metric onto a fixed-size sample of pixels and made one Lab
conversion serve the transfer and the "before" figure. Below, between the markers, is a verbatim
copy of the previous ``stages/colour.py`` maths (commit e4f5cba; only the hex/palette parsers,
which did not change, are imported) and of the previous ``LabRecolor._predict`` loop, used as the
reference.

Tolerances, stated:
* toned pixels: identical (0 codes): the transfer's maths did not change.
* ``delta_e_before``/``delta_e_after``: identical for images of at most 4,096 measured pixels;
  above that the sample is a fixed stride of at most 4,096 pixels, and the mean is within
  0.25 ΔE2000 (a quarter of a just-noticeable difference; 0.13 at most observed) of the
  every-pixel mean on these images.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from stages.base import Resources, StagePlan
from stages.colour import RGB, PaletteLike, parse_palette  # noqa: F401 - used by the copy
from stages.recolor_lab import LabRecolor, RecolorParams
from stages.registry import get_card

DELTA_E_TOLERANCE = 0.25

# ----- verbatim copy of the previous implementation (e4f5cba:stages/colour.py) -------------
# sRGB (IEC 61966-2-1) linear RGB -> XYZ, D65. The white point is the matrix row sums,
# (0.95047, 1.0, 1.08883), so sRGB white maps to exactly a = b = 0.
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375],
     [0.2126729, 0.7151522, 0.0721750],
     [0.0193339, 0.1191920, 0.9503041]]
)  # fmt: skip
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE_D65 = _RGB_TO_XYZ.sum(axis=1)
_EPS = 216.0 / 24389.0  # CIE epsilon
_KAPPA = 24389.0 / 27.0  # CIE kappa
# Linearised sRGB for every uint8 code value (fast path for uint8 input).
_CODES = np.arange(256) / 255.0
_LINEAR_LUT = np.where(_CODES <= 0.04045, _CODES / 12.92, ((_CODES + 0.055) / 1.055) ** 2.4)

_HEX_RE = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_MAX_METRIC_PIXELS = 65536
# transfer_to_palette tuning: per-channel (L, a, b) limits on the Reinhard std scale
# (the lower limit is the floor that stops a one-colour palette collapsing the image),
# and the fraction of the way each pixel is pulled toward its nearest palette colour.
_SCALE_MIN = np.array([0.6, 0.35, 0.35])
_SCALE_MAX = np.array([1.5, 2.0, 2.0])
_PULL = np.array([0.25, 0.5, 0.5])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB to CIE Lab (D65 white point).

    Args:
        rgb: Array of shape (..., 3); uint8 values in 0..255, or floats in 0..1.

    Returns:
        float64 array of shape (..., 3) holding L*, a*, b*.
    """
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"expected an array of shape (..., 3), got {rgb.shape}")
    if rgb.dtype == np.uint8:
        linear = _LINEAR_LUT[rgb]
    else:
        c = rgb.astype(np.float64)
        linear = np.where(c <= 0.04045, c / 12.92, ((np.abs(c) + 0.055) / 1.055) ** 2.4)
    xyz = linear @ (_RGB_TO_XYZ / _WHITE_D65[:, None]).T
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16.0) / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """Convert CIE Lab (D65) to sRGB.

    Args:
        lab: Array of shape (..., 3) holding L*, a*, b*.

    Returns:
        uint8 array of shape (..., 3); out-of-gamut values are clipped, then rounded.
    """
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f**3 > _EPS, f**3, (116.0 * f - 16.0) / _KAPPA)
    linear = np.clip(xyz @ (_XYZ_TO_RGB * _WHITE_D65[None, :]).T, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.rint(np.clip(srgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005; kL = kC = kH = 1).

    Args:
        lab1: Lab array of shape (..., 3).
        lab2: Lab array of shape (..., 3), broadcastable against ``lab1``.

    Returns:
        float64 array of the broadcast shape without the last axis.
    """
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2.0
    c_bar7 = c_bar**7
    g = 0.5 * (1.0 - np.sqrt(c_bar7 / (c_bar7 + 25.0**7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360.0
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360.0
    chroma_zero = (c1p * c2p) == 0.0
    dlp, dcp = l2 - l1, c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180.0, dh - 360.0, np.where(dh < -180.0, dh + 360.0, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    dhp = 2.0 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2.0)
    lp_bar, cp_bar = (l1 + l2) / 2.0, (c1p + c2p) / 2.0
    h_sum = h1p + h2p
    wrap = np.where(h_sum < 360.0, 360.0, -360.0)
    hp_bar = np.where(np.abs(h1p - h2p) <= 180.0, h_sum, h_sum + wrap) / 2.0
    hp_bar = np.where(chroma_zero, h_sum, hp_bar)
    hr = np.radians(hp_bar)
    t = (1.0 - 0.17 * np.cos(hr - np.radians(30.0)) + 0.24 * np.cos(2.0 * hr)
         + 0.32 * np.cos(3.0 * hr + np.radians(6.0)) - 0.20 * np.cos(4.0 * hr - np.radians(63.0)))
    d_theta = 30.0 * np.exp(-(((hp_bar - 275.0) / 25.0) ** 2))
    cp_bar7 = cp_bar**7
    r_c = 2.0 * np.sqrt(cp_bar7 / (cp_bar7 + 25.0**7))
    l50 = (lp_bar - 50.0) ** 2
    s_l = 1.0 + 0.015 * l50 / np.sqrt(20.0 + l50)
    s_c = 1.0 + 0.045 * cp_bar
    s_h = 1.0 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2.0 * d_theta)) * r_c
    tl, tc, th = dlp / s_l, dcp / s_c, dhp / s_h
    return np.sqrt(tl**2 + tc**2 + th**2 + r_t * tc * th)


def _palette_lab(palette: PaletteLike) -> np.ndarray:
    """Return the palette as a (K, 3) float64 Lab array."""
    if isinstance(palette, str) or (len(palette) > 0 and isinstance(palette[0], str)):
        colours = parse_palette(palette)  # type: ignore[arg-type]
    else:
        colours = tuple(tuple(int(v) for v in c) for c in palette)  # type: ignore[union-attr]
    arr = np.asarray(colours, dtype=np.int64).reshape(-1, 3)
    if arr.shape[0] == 0 or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"invalid palette {palette!r}: need >= 1 colour in 0..255")
    return srgb_to_lab(arr.astype(np.uint8))


def _selected_pixels(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Flatten ``rgb`` to (N, 3), keeping only pixels where ``mask`` is True."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"expected an RGB array of shape (..., 3), got {rgb.shape}")
    flat = rgb.reshape(-1, 3)
    if mask is None:
        return flat
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:-1]:
        raise ValueError(f"mask shape {mask.shape} does not match image {rgb.shape[:-1]}")
    return flat[mask.reshape(-1)]


def mean_delta_e_to_palette(
    rgb: np.ndarray, palette: PaletteLike, mask: np.ndarray | None = None
) -> float:
    """Mean CIEDE2000 distance from each pixel to its nearest palette colour.

    Images over 65536 selected pixels are subsampled with a fixed stride (no randomness).

    Args:
        rgb: sRGB image of shape (..., 3) (uint8 0..255 or float 0..1).
        palette: Palette (hex string, hex strings, or (r, g, b) triples).
        mask: Optional boolean array of shape ``rgb.shape[:-1]``; only pixels where it
            is True (e.g. alpha > 0) are measured.

    Returns:
        The mean ΔE2000, or NaN if no pixel is selected.
    """
    pal = _palette_lab(palette)
    pixels = _selected_pixels(rgb, mask)
    if pixels.shape[0] == 0:
        return float("nan")
    stride = -(-pixels.shape[0] // _MAX_METRIC_PIXELS)
    lab = srgb_to_lab(pixels[::stride])
    de = delta_e_2000(lab[:, None, :], pal[None, :, :])
    return float(de.min(axis=1).mean())


def transfer_to_palette(
    rgb: np.ndarray, palette: PaletteLike, *, strength: float = 1.0, mask: np.ndarray | None = None
) -> np.ndarray:
    """Tone-match an image toward a palette in Lab space.

    Reinhard statistics transfer: each Lab channel of the selected pixels is shifted
    and scaled to the palette's mean and std (the std scale is clamped per channel,
    so a one-colour palette cannot collapse the image), then every pixel is pulled
    part of the way toward its nearest palette colour (Euclidean Lab). The result is
    blended with the original by ``strength``.

    Args:
        rgb: uint8 sRGB image of shape (H, W, 3).
        palette: Palette (hex string, hex strings, or (r, g, b) triples).
        strength: Blend factor in [0, 1]; 0 returns the input bytes unchanged.
        mask: Optional boolean (H, W) array; only pixels where it is True change.

    Returns:
        A new uint8 (H, W, 3) array. Deterministic for a given input.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"invalid strength {strength!r}: expected a value in [0, 1]")
    pal = _palette_lab(palette)
    out = rgb.copy()
    pixels = _selected_pixels(rgb, mask)
    if strength == 0.0 or pixels.shape[0] == 0:
        return out

    lab = srgb_to_lab(pixels)
    mu_i, sd_i = lab.mean(axis=0), lab.std(axis=0)
    mu_p, sd_p = pal.mean(axis=0), pal.std(axis=0)
    flat = sd_i < 1e-6
    scale = np.where(flat, 1.0, np.clip(sd_p / np.where(flat, 1.0, sd_i), _SCALE_MIN, _SCALE_MAX))
    moved = (lab - mu_i) * scale + mu_p
    # Nearest palette colour by squared Euclidean Lab distance, via |x|^2 - 2x.p + |p|^2.
    d2 = (pal**2).sum(axis=1)[None, :] - 2.0 * (moved @ pal.T)
    nearest = pal[np.argmin(d2, axis=1)]
    moved += (nearest - moved) * _PULL
    result = lab_to_srgb(lab + strength * (moved - lab))
    if mask is None:
        out.reshape(-1, 3)[:] = result
    else:
        out.reshape(-1, 3)[np.asarray(mask, dtype=bool).reshape(-1)] = result
    return out


# ----- end of the verbatim copy ---------------------------------------------------------------


def _reference_predict(images: list[np.ndarray], palettes: list[str], default: tuple[str, ...],
                       strength: float) -> tuple[list[np.ndarray], list[float], list[float]]:
    """The previous ``LabRecolor._predict`` loop (e4f5cba:stages/recolor_lab.py)."""
    out, before, after = [], [], []
    for i, image in enumerate(images):
        palette = parse_palette(default)
        if palettes[i]:
            palette = parse_palette(palettes[i])
        rgb = image[..., :3]
        mask = image[..., 3] > 0 if image.shape[2] == 4 else None
        before.append(mean_delta_e_to_palette(rgb, palette, mask=mask))
        toned = transfer_to_palette(rgb, palette, strength=strength, mask=mask)
        after.append(mean_delta_e_to_palette(toned, palette, mask=mask))
        if image.shape[2] == 4:
            toned = np.concatenate([toned, image[..., 3:]], axis=2)
        out.append(toned)
    return out, before, after


def _fixed_images() -> dict[str, np.ndarray]:
    """Deterministic images shaped like the stage's real inputs."""
    from PIL import Image

    rng = np.random.default_rng(20240901)
    yy, xx = np.mgrid[0:256, 0:256]
    gradient = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)
    disc = (((yy - 128) ** 2 + (xx - 120) ** 2) < 100**2).astype(np.uint8) * 255
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    upscaled = np.asarray(Image.fromarray(small).resize((256, 256), Image.BICUBIC))
    soft = np.clip((110**2 - (yy - 128) ** 2 - (xx - 128) ** 2) / 40.0, 0, 255).astype(np.uint8)
    flat = np.full((48, 40, 4), (90, 140, 60, 255), dtype=np.uint8)
    clear = np.zeros((32, 32, 4), dtype=np.uint8)
    return {
        "gradient-cutout-256": np.dstack([gradient, disc]),
        "upscaled-soft-alpha-256": np.dstack([upscaled, soft]),
        "noise-rgb-64": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "noise-rgb-300x200": rng.integers(0, 256, (200, 300, 3), dtype=np.uint8),
        "flat-rgba": flat,
        "transparent": clear,
    }


PALETTE = ("#C8553D", "#F28F3B", "#FFD5C2", "#2D3047")


@pytest.mark.parametrize("strength", [0.8, 0.0, 1.0])
def test_recolor_stage_matches_previous_implementation(strength: float) -> None:
    images = _fixed_images()
    names = list(images)
    arrays = [images[n] for n in names]
    # the second image carries its own palette, as a manifest row may
    palettes = ["", "#1B3A5C #F2E8D5", "", "", "", ""]
    card = get_card("recolor/lab")
    plan = StagePlan(name="recolor", card=card,
                     params=RecolorParams(palette=PALETTE, strength=strength),
                     source="", revision="", resources=Resources())
    got = LabRecolor(plan=plan)._predict({"sku": np.array(names, dtype=object),
                                         "image": arrays,
                                         "palette": np.array(palettes, dtype=object)})
    want_images, want_before, want_after = _reference_predict(arrays, palettes, PALETTE, strength)
    for name, array, new, old in zip(names, arrays, got["image"], want_images):
        assert new.dtype == np.uint8 and new.shape == old.shape, name
        assert np.array_equal(new, old), f"{name}: {np.abs(new.astype(int) - old).max()} codes"
    for figure, new_values, old_values in (("before", got["delta_e_before"], want_before),
                                           ("after", got["delta_e_after"], want_after)):
        for name, array, new, old in zip(names, arrays, new_values, old_values):
            if math.isnan(old):
                assert math.isnan(new), (figure, name)
                continue
            measured = array.shape[0] * array.shape[1]
            if measured <= 4096:
                assert new == pytest.approx(old, abs=1e-9), (figure, name)
            else:
                assert abs(new - old) <= DELTA_E_TOLERANCE, (figure, name, new, old)
