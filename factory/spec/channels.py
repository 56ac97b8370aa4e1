"""Channel variants: each SKU's finished image framed, sized and checked for one sales channel.

A ``Channel`` is data: the frame (``width`` x ``height``, or a ``ratio`` and a ``longest``
side), the background (``white``, ``keep`` or ``transparent``), how much of the frame the
product fills, the encoding, and the limits the result is measured against. ``PRESETS`` holds
the channels the README's table sources; a job lists presets by name or declares its own
channels with the same fields (``{preset: amazon-main, width: 2400, height: 2400}`` starts
from a preset).

``render`` frames the subject found in the image's alpha (the segment stage's cutout; the
bounding box of the pixels at least half opaque), expanded to the frame's ratio around the
subject's centre so that it fills ``fill`` of the frame along its binding side, and padded with
the background where the frame runs past the image. An image without alpha (a chain without a
segment stage) is its own subject: the whole image is framed the same way. Resampling is
Pillow's (``Image.resize`` with LANCZOS), compositing is Pillow's ``paste`` with the alpha as
mask. ``measure`` then measures what will be written: size, fill and background purity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from factory.core.strict import Strict

if TYPE_CHECKING:
    from PIL import Image

#: Alpha at or above this is the subject when finding its bounding box.
SUBJECT_ALPHA = 128
#: Colour levels a background pixel may differ from its target (JPEG rounding).
PURITY_LEVELS = 1
WHITE = (255, 255, 255)


class Channel(Strict):
    """One channel's frame, background, encoding and rules.

    Attributes:
        name: the channel's name; it is part of each asset's key.
        width, height: the frame in pixels (or give ``ratio`` and ``longest``).
        ratio: ``"W:H"``, with ``longest`` the longer side of the frame.
        background: ``white`` (the subject on RGB 255), ``keep`` (the image's own background;
            padding takes the median colour of its edge) or ``transparent`` (PNG or WebP).
        fill: the fraction of the frame the subject's box fills along its binding side; None
            keeps as much of the image around the subject as the frame holds.
        fill_tolerance: how far the measured fill may be from ``fill``.
        format, quality: the encoding (``quality`` for JPEG and WebP).
        min_quality: the lowest quality the channel accepts.
        min_longest, max_longest: limits on the frame's longer side.
        max_bytes, max_megapixels: limits on the file and the frame.
        min_purity: the fraction of the background (everything outside the subject's box and a
            small margin) that must be within one level of white, or transparent.
        edge_clear: the frame's outer band must be pure background (no shadow at the edge).
        cutout: the channel needs the subject cut out (alpha from a segment stage).
        metadata: the file must carry the ``trainedAlgorithmicMedia`` XMP packet.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    width: int = Field(0, ge=0, le=10_000)
    height: int = Field(0, ge=0, le=10_000)
    ratio: str | None = Field(None, pattern=r"^\d{1,3}:\d{1,3}$")
    longest: int | None = Field(None, ge=16, le=10_000)
    background: Literal["white", "keep", "transparent"] = "white"
    fill: float | None = Field(0.85, gt=0, le=1)
    fill_tolerance: float = Field(0.03, ge=0, le=1)
    format: Literal["jpeg", "webp", "png"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    min_quality: int = Field(1, ge=1, le=100)
    min_longest: int = Field(16, ge=1, le=10_000)
    max_longest: int = Field(10_000, ge=1, le=10_000)
    max_bytes: int | None = Field(None, ge=1)
    max_megapixels: float | None = Field(None, gt=0)
    min_purity: float = Field(1.0, ge=0, le=1)
    edge_clear: bool = False
    cutout: bool = False
    metadata: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Channel:
        if self.ratio is not None:
            if self.longest is None or self.width or self.height:
                raise ValueError("give 'ratio' with 'longest', or 'width' and 'height'")
            w, h = (int(x) for x in self.ratio.split(":"))
            if not w or not h:
                raise ValueError(f"ratio '{self.ratio}' has a zero side")
            size = (self.longest, round(self.longest * h / w)) if w >= h else (
                round(self.longest * w / h), self.longest)
            object.__setattr__(self, "width", size[0])
            object.__setattr__(self, "height", size[1])
            object.__setattr__(self, "ratio", None)
            object.__setattr__(self, "longest", None)
        if not self.width or not self.height:
            raise ValueError("a channel needs 'width' and 'height' (or 'ratio' and 'longest')")
        longest = max(self.width, self.height)
        if not self.min_longest <= longest <= self.max_longest:
            raise ValueError(f"the frame's longest side is {longest} px; this channel takes "
                             f"{self.min_longest} to {self.max_longest} px")
        if self.max_megapixels and self.width * self.height > self.max_megapixels * 1e6:
            raise ValueError(f"{self.width}x{self.height} is over {self.max_megapixels} MP")
        if self.quality < self.min_quality:
            raise ValueError(f"quality {self.quality} is below this channel's minimum "
                             f"{self.min_quality}")
        if self.background == "transparent" and self.format == "jpeg":
            raise ValueError("a transparent background needs format png or webp (JPEG has no "
                             "alpha)")
        return self

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else self.format

    def fingerprint_text(self) -> str:
        """Everything about the channel that changes its bytes or its checks, as JSON."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _preset(**fields: Any) -> dict[str, Any]:
    return fields


#: Figures marked "channel" in the README are the channel's published rules; the others
#: (fill for the social presets, white backgrounds outside Amazon) are this project's choices.
PRESETS: dict[str, dict[str, Any]] = {
    "amazon-main": _preset(width=1600, height=1600, fill=0.85, min_longest=1600,
                           max_longest=10_000, edge_clear=True, cutout=True),
    "google-shopping": _preset(width=1500, height=1500, fill=0.85, min_longest=1500,
                               max_bytes=16 * 1024 * 1024, max_megapixels=64.0),
    "meta-square": _preset(width=1080, height=1080, fill=0.80, min_longest=1080),
    "instagram-portrait": _preset(width=1080, height=1350, fill=0.80, min_longest=1350),
    "story": _preset(width=1080, height=1920, fill=0.80, min_longest=1920),
    "pinterest": _preset(width=1000, height=1500, fill=0.80, min_longest=1500),
    "ebay": _preset(width=1600, height=1600, fill=0.85, min_longest=1600, quality=90,
                    min_quality=90),
}


class ChannelError(ValueError):
    """Channel entries of a spec that cannot be used; ``problems`` are ``key: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def resolve(entries: list[Any]) -> tuple[Channel, ...]:
    """The spec's ``channels:`` list (preset names or mappings) as validated channels."""
    channels: list[Channel] = []
    problems: list[str] = []
    for i, entry in enumerate(entries):
        where = f"channels[{i}]"
        if isinstance(entry, str):
            entry = {"preset": entry}
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a preset name or a mapping")
            continue
        fields = dict(entry)
        preset = fields.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                problems.append(f"{where}.preset: unknown channel preset '{preset}' "
                                f"(presets: {', '.join(PRESETS)})")
                continue
            overrides = fields
            fields = {**PRESETS[preset], "name": preset}
            if "ratio" in overrides:
                fields.pop("width"), fields.pop("height")
            fields.update(overrides)
        try:
            channels.append(Channel.model_validate(fields))
        except ValidationError as exc:
            for err in exc.errors():
                key = ".".join(str(p) for p in err["loc"])
                message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{where}{'.' + key if key else ''}: {message}")
    names = [c.name for c in channels]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"channels: '{name}' is listed twice; give each channel its own name")
    if problems:
        raise ChannelError(problems)
    return tuple(channels)


class NoSubject(ValueError):
    """The cutout holds no product: nothing to frame."""


@dataclass(frozen=True)
class Framed:
    """A rendered frame: the pixels to encode and the subject's box in them."""

    pixels: Image.Image  # RGB or RGBA
    #: the box of the product (alpha at least half), ``(x0, y0, x1, y1)`` exclusive
    subject: tuple[int, int, int, int] | None
    #: the box of every pixel the product touches at all (soft edges, resampling's reach)
    footprint: tuple[int, int, int, int] | None
    has_alpha: bool


@dataclass(frozen=True)
class Measures:
    """What a rendered asset measured; ``rule``/``reason`` name the first rule it broke."""

    width: int
    height: int
    fill: float | None
    purity: float | None
    rule: str = ""
    reason: str = ""


def subject_box(alpha: np.ndarray, *,
                threshold: int = SUBJECT_ALPHA) -> tuple[int, int, int, int] | None:
    """The box of the pixels with alpha at least ``threshold``, ``(x0, y0, x1, y1)``, or None."""
    solid = alpha >= threshold
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def frame_box(box: tuple[int, int, int, int], image_size: tuple[int, int],
              channel: Channel) -> tuple[float, float, float, float]:
    """The source region the frame shows: the subject's box grown to the frame's ratio."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    ratio = channel.width / channel.height
    if channel.fill is not None:
        fh = max(bw / ratio, bh) / channel.fill
    else:  # as much of the image as the frame's ratio allows, and at least the subject
        w, h = image_size
        fh = max(min(h, w / ratio), bw / ratio, bh)
    fw = fh * ratio
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = cx - fw / 2, cy - fh / 2
    if channel.fill is None:  # slide the frame inside the image where it fits
        w, h = image_size
        left = min(max(left, 0.0), max(w - fw, 0.0)) if fw <= w else (w - fw) / 2
        top = min(max(top, 0.0), max(h - fh, 0.0)) if fh <= h else (h - fh) / 2
    return left, top, left + fw, top + fh


def render(array: np.ndarray, channel: Channel) -> Framed:
    """Frame one finished ``HxWx3|4 uint8`` image for ``channel`` (Pillow does the pixels)."""
    from PIL import Image

    height, width = array.shape[:2]
    has_alpha = array.shape[2] == 4
    alpha = array[..., 3] if has_alpha else np.full((height, width), 255, np.uint8)
    box = subject_box(alpha)
    if box is None:
        raise NoSubject("no pixel of the cutout is at least half opaque")
    left, top, right, bottom = frame_box(box, (width, height), channel)
    scale = channel.width / (right - left)
    # Outside the subject's box nothing is product: weak alpha there is a shadow or noise, and
    # the channel's background replaces it (the box's own edges stay as the cutout has them).
    keep = np.zeros_like(alpha)
    keep[box[1]:box[3], box[0]:box[2]] = 1
    alpha = alpha * keep
    # The part of the frame the image covers, resampled in one step (float box, no rounding).
    src = (max(left, 0.0), max(top, 0.0), min(right, float(width)), min(bottom, float(height)))
    at = (round((src[0] - left) * scale), round((src[1] - top) * scale))
    size = (max(1, min(channel.width - at[0], round((src[2] - src[0]) * scale))),
            max(1, min(channel.height - at[1], round((src[3] - src[1]) * scale))))
    rgba = Image.fromarray(np.dstack([array[..., :3], alpha]), "RGBA")
    part = rgba.resize(size, Image.Resampling.LANCZOS, box=src)
    frame = (channel.width, channel.height)
    if channel.background == "transparent":
        canvas = Image.new("RGBA", frame, (0, 0, 0, 0))
        canvas.paste(part, at)
    elif channel.background == "white":
        canvas = Image.new("RGB", frame, WHITE)
        canvas.paste(part, at, mask=part)  # the part's alpha is the mask
    else:  # the image's own pixels, whatever the cutout says
        canvas = Image.new("RGB", frame, _edge_colour(array[..., :3]))
        rgb = Image.fromarray(np.ascontiguousarray(array[..., :3]), "RGB")
        canvas.paste(rgb.resize(size, Image.Resampling.LANCZOS, box=src), at)
    placed = np.zeros((channel.height, channel.width), np.uint8)
    placed[at[1]:at[1] + size[1], at[0]:at[0] + size[0]] = np.asarray(part.getchannel("A"))
    # The product's box in the frame: the cutout's box through the same scale and offset
    # (thresholding the resampled alpha again would move it by a noisy mask's soft edge).
    subject = (round((box[0] - left) * scale), round((box[1] - top) * scale),
               round((box[2] - left) * scale), round((box[3] - top) * scale))
    return Framed(pixels=canvas, subject=subject,
                  footprint=subject_box(placed, threshold=1) or subject, has_alpha=has_alpha)


def _edge_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def measure(pixels: np.ndarray, framed: Framed, channel: Channel, *,
            encoded: bytes | None = None) -> Measures:
    """Measure a frame (``HxWx3|4 uint8``, decoded from the bytes written) against its
    channel's rules; the first rule broken is named. The fill is the product's box (from the
    placed alpha) over the frame, along the side where it is larger."""
    from factory.core.provenance import carries_source_type

    height, width = pixels.shape[:2]
    subject, has_alpha = framed.subject, framed.has_alpha
    fill = None
    if subject is not None:
        fill = max((subject[2] - subject[0]) / width, (subject[3] - subject[1]) / height)
    purity, edge = _purity(pixels, framed.footprint, channel)
    m = Measures(width=width, height=height, fill=fill, purity=purity)
    longest = max(width, height)
    broken: list[tuple[str, str]] = []
    if (width, height) != (channel.width, channel.height):
        broken.append(("size", f"{width}x{height}, not {channel.width}x{channel.height}"))
    if not channel.min_longest <= longest <= channel.max_longest:
        broken.append(("size", (f"longest side {longest} px outside {channel.min_longest}-"
                                f"{channel.max_longest}")))
    if channel.max_megapixels and width * height > channel.max_megapixels * 1e6:
        broken.append(("megapixels", f"{width * height / 1e6:.1f} MP > {channel.max_megapixels}"))
    if channel.cutout and not has_alpha:
        broken.append(("cutout", ("the chain gave no alpha (add a segment stage): the "
                                  "background cannot be replaced")))
    if channel.fill is not None and fill is not None and abs(
            fill - channel.fill) > channel.fill_tolerance:
        broken.append(("fill", (f"product fills {fill:.1%} of the frame, not "
                                f"{channel.fill:.0%} ± {channel.fill_tolerance:.0%}")))
    if purity is not None and purity < channel.min_purity:
        broken.append(("background", (f"{1 - purity:.2%} of the background is not pure "
                                      f"{channel.background}")))
    if channel.edge_clear and edge is not None and edge < 1.0:
        broken.append(("edge", (f"{1 - edge:.2%} of the frame's edge is not background "
                                "(a shadow or the product touches it)")))
    if encoded is not None:
        if channel.max_bytes and len(encoded) > channel.max_bytes:
            broken.append(("bytes", f"{len(encoded)} bytes > {channel.max_bytes}"))
        if channel.metadata and not carries_source_type(encoded):
            broken.append(("metadata", "no trainedAlgorithmicMedia XMP packet in the file"))
    if broken:
        m = Measures(**{**m.__dict__, "rule": broken[0][0], "reason": broken[0][1]})
    return m


def _purity(pixels: np.ndarray, footprint: tuple[int, int, int, int] | None,
            channel: Channel) -> tuple[float | None, float | None]:
    """(background purity, edge purity): the fractions of the background (outside the box the
    product touches, plus a JPEG block) and of the frame's outer band (1% of its short side)
    within ``PURITY_LEVELS`` of the target colour, or of transparent."""
    if channel.background == "keep":
        return None, None
    if channel.background == "white":
        lowest = np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])
        pure = lowest >= 255 - PURITY_LEVELS
    else:
        pure = pixels[..., 3] <= PURITY_LEVELS
    height, width = pure.shape
    impure = ~pure
    bad, cells = int(np.count_nonzero(impure)), height * width
    if footprint is not None:  # lossy blocks (JPEG's 4:2:0 chroma, WebP's macroblocks: 16
        margin = 16            # px) ring around the product's edge: not background
        x0, y0, x1, y1 = footprint
        inside = impure[max(y0 - margin, 0):y1 + margin, max(x0 - margin, 0):x1 + margin]
        bad, cells = bad - int(np.count_nonzero(inside)), cells - inside.size
    band = max(2, round(0.01 * min(width, height)))
    rows, cols = np.r_[0:band, height - band:height], np.r_[0:band, width - band:width]
    edge_bad = (np.count_nonzero(impure[rows]) + np.count_nonzero(impure[band:-band, cols]))
    edge_cells = rows.size * width + (height - 2 * band) * cols.size
    return (1.0 - bad / cells if cells else 1.0), 1.0 - edge_bad / edge_cells
