"""Images between stages: raw pixels in Arrow columns, never re-encoded until the sink.

An image column ``image`` holds the raw ``uint8`` bytes of an ``H x W x C`` array (C is 3 for
RGB, 4 for RGBA) and a companion column ``image_shape`` holds ``[H, W, C]``. A row whose image
is missing (a failed or rejected SKU) holds nulls in both.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

ENCODINGS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}


def store(column: str, arrays: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """Turn a list of ``HxWxC uint8`` arrays into the raw-bytes and shape columns."""
    data = np.empty(len(arrays), dtype=object)
    shapes = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        if array is None:
            continue
        array = np.ascontiguousarray(array)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"column '{column}' row {i}: expected HxWx3|4 uint8, "
                             f"got {array.dtype} {array.shape}")
        data[i] = array.tobytes()
        shapes[i] = list(array.shape)
    return {column: data, f"{column}_shape": shapes}


def load(column: str, rows: Mapping[str, Any]) -> list[np.ndarray | None]:
    """Inverse of ``store``: zero-copy read-only views over the raw bytes."""
    out: list[np.ndarray | None] = []
    for data, shape in zip(rows[column], rows[f"{column}_shape"]):
        if data is None or shape is None:
            out.append(None)
            continue
        out.append(np.frombuffer(data, dtype=np.uint8).reshape(tuple(int(v) for v in shape)))
    return out


def encode(array: np.ndarray, fmt: str, *, quality: int = 92, png_level: int = 1) -> bytes:
    """Encode once, at the sink. PNG output is deterministic for identical pixels."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "jpeg" and image.mode == "RGBA":
        image = image.convert("RGB")  # JPEG has no alpha; PNG and WebP keep it
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": quality}
    if fmt == "png":
        options = {"compress_level": png_level}
    image.save(buffer, format=ENCODINGS[fmt], **options)
    return buffer.getvalue()
