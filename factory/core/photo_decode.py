"""Decoding a product photo defensively into an 8-bit sRGB (or sRGBA) array.

The size is checked from the header before any pixel is decoded, against this module's own
cap (PIL's global ``Image.MAX_IMAGE_PIXELS`` is neither relied on nor changed: other code in
the process may set it). Then EXIF orientation is applied, an embedded ICC profile (CMYK
included) is converted to sRGB, and 16-bit, palette, gray and gray+alpha images become 8-bit
RGB(A). Every failure is a ``PhotoError`` with the reason: that SKU's problem, not the run's.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError


class PhotoError(Exception):
    """A photo that cannot be had (or decoded); ``reason`` names the cause in one sentence."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_PIXELS = 64_000_000

# What PIL raises on bytes it cannot make sense of, at open or at load (the TypeError: a
# TIFF tag of the wrong type, found by fuzzing).
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
           zlib.error)
_SIXTEEN = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _bomb(size: tuple[int, int] | str, max_pixels: int) -> PhotoError:
    pixels = f"{size[0]}x{size[1]}" if isinstance(size, tuple) else size
    return PhotoError(f"decompression bomb: {pixels} pixels over the {max_pixels / 1e6:g} MP cap")


def _header_size(data: bytes) -> tuple[int, int] | None:
    """The declared size of an image PIL refused to open as a bomb (its global cap, twice
    ``MAX_IMAGE_PIXELS``, is checked inside ``Image.open``): the same plugin lookup that
    ``Image.open`` makes, reading the header only."""
    Image.init()
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        verdict = accept(data[:16]) if accept is not None else True
        if not verdict or isinstance(verdict, str):
            continue
        try:
            with factory(io.BytesIO(data), "") as image:
                return image.size
        except _BROKEN + (Image.DecompressionBombError,):
            continue
    return None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image, opened lazily (header read, no pixels), with its size checked."""
    if not data:
        raise PhotoError("0 bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        count = re.search(r"\((\d+) pixels\)", str(exc))  # when the header gives no size
        raise _bomb(_header_size(data) or (count.group(1) if count else "too many"),
                    max_pixels) from None
    except UnidentifiedImageError:
        raise PhotoError(f"not an image (no known image format in {len(data)} bytes)") from None
    except _BROKEN as exc:
        raise PhotoError(f"not a readable image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _bomb((width, height), max_pixels)
    if width <= 0 or height <= 0:
        image.close()
        raise PhotoError(f"empty image ({width}x{height})")
    return image


def probe_photo(data: bytes, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int, str]:
    """Width, height and format of a photo, from its header alone (cheap).

    Args:
        data: the photo's bytes.
        max_pixels: largest ``width * height`` accepted.

    Returns:
        ``(width, height, format)``, e.g. ``(800, 600, "JPEG")``.

    Raises:
        PhotoError: 0 bytes, not an image, or a decompression bomb.
    """
    with _open(data, max_pixels) as image:
        return image.width, image.height, str(image.format)


def decode_photo(data: bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo into an ``HxWx3`` (RGB) or ``HxWx4`` (RGBA) ``uint8`` sRGB array.

    The size is checked before pixels are decoded; EXIF orientation is applied; an embedded
    ICC profile is converted to sRGB (one that cannot be used is ignored, as browsers do);
    16-bit images are scaled to 8 bits; palette, gray and gray+alpha images become RGB(A).
    An alpha channel that is fully opaque everywhere is dropped.

    Args:
        data: the photo's bytes.
        max_pixels: largest ``width * height`` accepted.

    Raises:
        PhotoError: 0 bytes, not an image, a decompression bomb, truncated or corrupt data,
            or a pixel mode with no sRGB meaning (floating point, LAB).
    """
    with _open(data, max_pixels) as image:
        try:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
        except Image.DecompressionBombError as exc:  # a plugin checking its own frames
            raise PhotoError(f"decompression bomb: {exc}") from None
        except _BROKEN as exc:
            raise PhotoError(f"corrupt or truncated {image.format} image: {exc}") from None
        converted = _to_srgb(image)
        if converted.mode == "RGBA" and converted.getextrema()[3] == (255, 255):
            converted = converted.convert("RGB")
        return np.array(converted)  # a writable array of its own (asarray's is read-only)


def _to_srgb(image: Image.Image) -> Image.Image:
    """An RGB or RGBA image in sRGB."""
    mode, info = image.mode, image.info
    if mode in _SIXTEEN:
        image = _to_eight_bits(image)
    has_alpha = mode in _ALPHA or info.get("transparency") is not None
    alpha = image.convert("RGBA").getchannel("A") if has_alpha else None
    try:
        if image.mode == "RGBa":  # premultiplied: un-premultiply on the way
            image = image.convert("RGBA").convert("RGB")
        elif image.mode in ("RGBA", "P", "PA", "YCbCr", "HSV", "RGBX"):
            image = image.convert("RGB")
        elif image.mode in ("LA", "La", "1"):
            image = image.convert("L")
        elif image.mode not in ("RGB", "L", "CMYK"):
            raise ValueError(mode)
    except ValueError:
        raise PhotoError(f"unsupported pixel mode {mode}") from None
    image = _apply_profile(image, info.get("icc_profile")) or (
        image if image.mode == "RGB" else image.convert("RGB"))
    if alpha is not None:
        image.putalpha(alpha)
    return image


def _apply_profile(image: Image.Image, icc: bytes | None) -> Image.Image | None:
    """``image`` (RGB, L or CMYK) converted through its embedded profile to sRGB, or None
    when it has none that fits: a broken or mismatched profile is common in the wild, and
    the plain conversion is then what every viewer shows."""
    if not icc:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        # A fresh sRGB profile per call: LittleCMS profile handles are not shared across threads.
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None


def _to_eight_bits(image: Image.Image) -> Image.Image:
    """A 16-bit gray image (``I;16*``, or ``I`` holding 16-bit values) as 8-bit ``L``,
    rounded (65535 -> 255, 32896 -> 128), its ICC profile kept."""
    wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
    narrow = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    if image.info.get("icc_profile"):
        narrow.info["icc_profile"] = image.info["icc_profile"]
    return narrow
