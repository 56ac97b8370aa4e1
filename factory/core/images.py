"""Images between stages: raw pixels in Arrow tensor columns, never re-encoded until the sink.

An image column holds one ``H x W x C`` ``uint8`` array per row (C is 3 for RGB, 4 for RGBA).
When every row of a batch has the same shape the column is one ``N x H x W x C`` array, which
Ray Data stores as a fixed-shape Arrow tensor column and hands to the next stage as a zero-copy
view; otherwise it is an array of arrays (a variable-shape tensor column). A row with no image
(a failure or rejection) holds zeros, and ``load`` returns None for it: a row's ``status``, not
its pixels, says whether it has an image.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

ENCODINGS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
from factory.core.status import STATUS_OK


def store(column: str, arrays: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """Turn a list of ``HxWxC uint8`` arrays (None for rows without one) into a column."""
    present = [a for a in arrays if a is not None]
    for i, array in enumerate(arrays):
        if array is not None and (array.dtype != np.uint8 or array.ndim != 3
                                  or array.shape[2] not in (3, 4)):
            raise ValueError(f"column '{column}' row {i}: expected HxWx3|4 uint8, "
                             f"got {array.dtype} {array.shape}")
    shapes = {a.shape for a in present}
    if len(shapes) <= 1:
        shape = shapes.pop() if shapes else (1, 1, 3)
        out = np.zeros((len(arrays), *shape), dtype=np.uint8)
        for i, array in enumerate(arrays):
            if array is not None:
                out[i] = array
        return {column: out}
    channels = present[0].shape[2]
    out = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        out[i] = np.ascontiguousarray(array) if array is not None else np.zeros(
            (1, 1, channels), dtype=np.uint8)
    return {column: out}


def load(column: str, rows: Mapping[str, Any]) -> list[np.ndarray | None]:
    """Inverse of ``store``: one array per row (views, no copies), None for rows not ``ok``."""
    status = rows.get("status")
    return [None if status is not None and status[i] != STATUS_OK else np.asarray(array)
            for i, array in enumerate(rows[column])]


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
