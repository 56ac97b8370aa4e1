"""Procedural studio product photos with exact ground truth, and the shipped photo catalog.

``make_product`` draws a product (bottle, mug, sneaker, ...) in flat saturated colours with
simple lighting, a highlight and sometimes a printed white label, on a light-grey studio sweep
with a gentle vertical gradient and faint sensor noise. Parts are painted at 4x and box-filtered
down, so edges are anti-aliased as a camera's are; the ground-truth mask is the pixels whose
coverage is over one half. Everything is drawn from ``(kind, seed)``: the same call gives the
same bytes.

``write_photo_catalog`` writes a Shopify product export whose ``Image Src`` values are photo
paths relative to the CSV, including the bad photos a retailer meets. ``manifests/product-photos``
is its output, regenerated with ``python -m factory.catalog.product_photos manifests/product-photos``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

#: Side of the shipped catalog's photos: what keeps it, the real photo included, near 1 MB.
CATALOG_SIZE = 256
KINDS = ("bottle", "mug", "sneaker", "box", "lamp", "ball", "headphones")
SUPERSAMPLE = 4
#: Saturated product colours (sRGB); a product takes one as its main colour, one as accent.
PALETTE = ((196, 38, 52), (0, 122, 128), (34, 84, 196), (232, 112, 24), (36, 148, 72),
           (118, 52, 160), (204, 32, 120), (28, 44, 104), (214, 162, 24))
WHITE = (250, 250, 248)
DARK = (40, 40, 46)


class _Canvas:
    """The product at 4x: colour and coverage, painted part by part (later parts on top).

    Coordinates are the product's own, ``0..1`` across the frame before the per-seed offset and
    scale, so a part's geometry reads the same whatever the output size.
    """

    def __init__(self, n: int, *, offset: tuple[float, float], scale: float) -> None:
        c = (np.arange(n, dtype=np.float32) + 0.5) / n
        # a row and a column vector: every region below broadcasts to n x n
        self.x = ((c - offset[0]) / scale + 0.5)[None, :]
        self.y = ((c - offset[1]) / scale + 0.5)[:, None]
        self.rgb = np.zeros((n, n, 3), np.float32)
        self.mask = np.zeros((n, n), bool)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2 <= 1.0

    def rrect(self, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
        qx = np.abs(self.x - (x0 + x1) / 2) - (x1 - x0) / 2 + r
        qy = np.abs(self.y - (y0 + y1) / 2) - (y1 - y0) / 2 + r
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) <= r

    def polygon(self, points: list[tuple[float, float]]) -> np.ndarray:
        """A convex polygon: inside every edge's half-plane (either winding)."""
        signs = []
        for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
            signs.append((x1 - x0) * (self.y - y0) - (y1 - y0) * (self.x - x0) >= 0)
        return np.logical_and.reduce(signs) | ~np.logical_or.reduce(signs)

    def cylinder(self, xc: float, half: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shade and gloss of an upright cylinder lit from the upper left front."""
        t = np.clip((self.x - xc) / half, -1.0, 1.0)
        lambert = np.clip(-0.45 * t + 0.89 * np.sqrt(1.0 - t * t), 0.0, 1.0)
        return 0.5 + 0.55 * lambert, 0.55 * np.exp(-(((t + 0.4) / 0.1) ** 2))

    def paint(self, region: np.ndarray, colour: np.ndarray) -> None:
        region = np.broadcast_to(region, self.mask.shape)
        self.rgb[region] = np.broadcast_to(colour, self.rgb.shape)[region]
        self.mask |= region

    def erase(self, region: np.ndarray) -> None:
        self.mask &= ~region


def _tone(base: tuple[int, ...] | np.ndarray, shade: float | np.ndarray = 1.0,
          gloss: float | np.ndarray = 0.0) -> np.ndarray:
    """A lit colour field: ``base`` scaled by ``shade``, blended toward white by ``gloss``."""
    base = np.asarray(base, np.float32) / 255.0
    lit = np.clip(base * np.asarray(shade, np.float32)[..., None], 0.0, 1.0)
    return lit + np.asarray(gloss, np.float32)[..., None] * (1.0 - lit)


def _label(c: _Canvas, x0: float, y0: float, x1: float, y1: float, accent: tuple) -> None:
    """A printed white label (the white a naive key would cut out): a logo and text lines."""
    c.paint(c.rrect(x0, y0, x1, y1, 0.012), _tone(WHITE))
    w, h = x1 - x0, y1 - y0
    c.paint(c.ellipse(x0 + w / 2, y0 + 0.32 * h, 0.14 * w, 0.14 * w), _tone(accent))
    for row, width in ((0.66, 0.7), (0.8, 0.45)):
        c.paint(c.rrect(x0 + w * (1 - width) / 2, y0 + row * h, x0 + w * (1 + width) / 2,
                        y0 + (row + 0.06) * h, 0.002), _tone(DARK))


def _bottle(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    shade, gloss = c.cylinder(0.5, 0.14)
    body = c.rrect(0.36, 0.40, 0.64, 0.88, 0.05) | c.ellipse(0.5, 0.42, 0.14, 0.11)
    c.paint(body | c.rrect(0.45, 0.18, 0.55, 0.36, 0.02), _tone(main, shade, gloss))
    c.paint(c.rrect(0.44, 0.12, 0.56, 0.20, 0.015), _tone(accent, *c.cylinder(0.5, 0.06)))
    _label(c, 0.40, 0.54, 0.60, 0.76, accent)


def _mug(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    bx = 0.44
    # the handle's inner ellipse is never painted: the sweep shows through it
    handle = (c.ellipse(bx + 0.18, 0.54, 0.13, 0.16) & ~c.ellipse(bx + 0.18, 0.54, 0.075, 0.095)
              & (c.x > bx + 0.15))
    c.paint(handle, _tone(main, 0.78))
    c.paint(c.rrect(bx - 0.18, 0.30, bx + 0.18, 0.80, 0.035), _tone(main, *c.cylinder(bx, 0.18)))
    c.paint(c.ellipse(bx, 0.31, 0.17, 0.025), _tone(main, 0.45))  # the inside, seen over the rim
    _label(c, bx - 0.11, 0.44, bx + 0.11, 0.66, accent)


def _sneaker(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    upper = (c.ellipse(0.29, 0.56, 0.13, 0.17) | c.ellipse(0.56, 0.60, 0.30, 0.12)
             | c.ellipse(0.45, 0.50, 0.09, 0.11)) & (c.y < 0.65)
    c.paint(upper, _tone(main, 1.15 - 0.5 * (c.y - 0.39)))
    c.erase(c.ellipse(0.365, 0.39, 0.06, 0.04))  # the ankle opening: a notch, not a hole
    stripe = np.abs(((c.x - 0.52) / 0.24) ** 2 + ((c.y - 0.76) / 0.22) ** 2 - 1) < 0.2
    c.paint(stripe & c.ellipse(0.47, 0.56, 0.20, 0.055), _tone(WHITE))
    for k in range(3):
        x, y = 0.50 + 0.05 * k, 0.48 + 0.025 * k
        c.paint(c.rrect(x - 0.018, y - 0.006, x + 0.018, y + 0.006, 0.004), _tone(WHITE))
    sole = ((176, 120, 70), DARK)[int(rng.integers(2))]
    c.paint(c.rrect(0.15, 0.63, 0.87, 0.71, 0.035), _tone(sole, 1.05 - 0.6 * (c.y - 0.63)))


def _box(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    cx, base, w, h, d = 0.5, 0.86, 0.25, 0.34, 0.11
    front_b, front_t = (cx, base), (cx, base - h)
    left_b, left_t = (cx - w, base - d), (cx - w, base - d - h)
    right_b, right_t = (cx + w, base - d), (cx + w, base - d - h)
    back_t = (cx, base - 2 * d - h)
    c.paint(c.polygon([left_t, front_t, right_t, back_t]), _tone(main, 1.12))
    c.paint(c.polygon([left_b, front_b, front_t, left_t]), _tone(main, 0.85))
    c.paint(c.polygon([front_b, right_b, right_t, front_t]), _tone(main, 0.62))
    # tape along the top face, and a white shipping label on the left face
    c.paint(c.polygon([(cx - 0.55 * w, base - h - 1.45 * d), (cx - 0.45 * w, base - h - 1.55 * d),
                       (cx + 0.55 * w, base - h - 0.45 * d), (cx + 0.45 * w, base - h - 0.55 * d)]),
            _tone(accent, 1.05))

    def on_left(u: float, v: float) -> tuple[float, float]:
        return (left_b[0] + u * w, left_b[1] + u * d - v * h)

    c.paint(c.polygon([on_left(0.2, 0.3), on_left(0.8, 0.3), on_left(0.8, 0.7), on_left(0.2, 0.7)]),
            _tone(WHITE))
    c.paint(c.polygon([on_left(0.3, 0.5), on_left(0.7, 0.5), on_left(0.7, 0.58),
                       on_left(0.3, 0.58)]), _tone(DARK))


def _lamp(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    metal = ((72, 72, 80), (176, 136, 56))[int(rng.integers(2))]
    c.paint(c.rrect(0.485, 0.40, 0.515, 0.84, 0.008), _tone(metal, *c.cylinder(0.5, 0.015)))
    c.paint(c.rrect(0.36, 0.82, 0.64, 0.89, 0.025), _tone(metal, *c.cylinder(0.5, 0.14)))
    half = 0.1 + (c.y - 0.14) / 0.30 * 0.1  # the shade is a cone: its width grows downward
    c.paint(c.polygon([(0.40, 0.14), (0.60, 0.14), (0.70, 0.44), (0.30, 0.44)]),
            _tone(main, *c.cylinder(0.5, half)))


def _ball(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    cx, cy, r = 0.5, 0.56, 0.30
    dx, dy = (c.x - cx) / r, (c.y - cy) / r
    nz = np.sqrt(np.clip(1.0 - dx * dx - dy * dy, 0.0, 1.0))
    shade = 0.4 + 0.75 * np.clip(-0.4 * dx - 0.45 * dy + 0.8 * nz, 0.0, 1.0)
    gloss = 0.7 * np.exp(-((dx + 0.35) ** 2 + (dy + 0.4) ** 2) / 0.02)
    third = PALETTE[int(rng.integers(len(PALETTE)))]
    segment = (np.floor((np.arctan2(dy, dx) + np.pi) / (np.pi / 3)).astype(int) % 3)
    colours = np.asarray((main, accent, third), np.float32)[segment]
    c.paint(c.ellipse(cx, cy, r, r), _tone(colours, shade, gloss))


def _headphones(c: _Canvas, main: tuple, accent: tuple, rng: np.random.Generator) -> None:
    band = c.ellipse(0.5, 0.5, 0.30, 0.32) & ~c.ellipse(0.5, 0.5, 0.25, 0.27) & (c.y < 0.53)
    c.paint(band, _tone(DARK, 1.0 + 0.6 * (0.5 - c.y)))
    for x0, x1, pad in ((0.15, 0.29, (0.27, 0.32)), (0.71, 0.85, (0.68, 0.73))):
        xc = (x0 + x1) / 2
        c.paint(c.rrect(pad[0], 0.53, pad[1], 0.74, 0.025), _tone(DARK, 0.8))
        c.paint(c.rrect(x0, 0.50, x1, 0.77, 0.06), _tone(main, *c.cylinder(xc, 0.07)))
        c.paint(c.ellipse(xc, 0.635, 0.025, 0.025), _tone(WHITE))  # a white logo on each cup


_DRAW = {"bottle": _bottle, "mug": _mug, "sneaker": _sneaker, "box": _box, "lamp": _lamp,
         "ball": _ball, "headphones": _headphones}


def make_product(kind: str, *, size: int = 384, seed: int = 0,
                 colour: tuple[int, int, int] | None = None,
                 sweep: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A studio photo of one procedural product and its exact cut-out.

    Args:
        kind: one of ``KINDS``.
        size: side of the square photo, in pixels.
        seed: draws the product's colours, placement and the sweep.
        colour: the product's main colour (sRGB); default: drawn from ``PALETTE``.
        sweep: grey levels of the sweep at the top and bottom of the frame; default: a
            light grey, drawn, a little darker toward the bottom.

    Returns:
        ``(photo, mask)``: an ``HxWx3 uint8`` photo and the ``HxW bool`` ground truth (the
        pixels the product covers more than half of).
    """
    if kind not in _DRAW:
        raise ValueError(f"unknown product kind '{kind}'; valid: {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
    picks = rng.choice(len(PALETTE), 2, replace=False)
    main = colour or tuple(int(v) for v in np.clip(
        np.asarray(PALETTE[picks[0]]) + rng.integers(-12, 13, 3), 0, 255))
    canvas = _Canvas(size * SUPERSAMPLE, offset=(0.5 + rng.uniform(-0.04, 0.04),
                                                 0.5 + rng.uniform(-0.02, 0.02)),
                     scale=rng.uniform(0.88, 1.0))
    _DRAW[kind](canvas, main, PALETTE[picks[1]], rng)

    def down(a: np.ndarray) -> np.ndarray:
        return a.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, *a.shape[2:]).mean(axis=(1, 3))

    coverage = down(canvas.mask.astype(np.float32))
    product = down(canvas.rgb * canvas.mask[..., None]) * 255.0
    top, bottom = sweep or (rng.uniform(228, 240), 0.0)
    if sweep is None:
        bottom = top - rng.uniform(6, 16)
    t = (np.arange(size) + 0.5) / size
    grey = top + (bottom - top) * t[:, None] ** 1.3 - 6.0 * (t[None, :] - 0.5) ** 2
    tint = rng.uniform(-2.0, 2.0, 3)  # a sweep is never quite neutral
    background = grey[..., None] + tint
    photo = product + (1.0 - coverage)[..., None] * background
    photo += rng.normal(0.0, 1.2, photo.shape)
    return np.clip(np.rint(photo), 0, 255).astype(np.uint8), coverage > 0.5


# --- the shipped catalog ------------------------------------------------------------------

#: Generated photos: file -> (kind, seed, main colour or None for the seed's own).
_PHOTOS = {
    "aurora-bottle.png": ("bottle", 1, (0, 122, 128)),
    "aurora-bottle-coral.png": ("bottle", 1, (232, 96, 80)),
    "harbor-mug.png": ("mug", 2, None),
    "trail-sneaker.png": ("sneaker", 3, None),
    "parcel-box.png": ("box", 4, None),
    "arc-lamp.jpg": ("lamp", 5, None),
    "bounce-ball.png": ("ball", 6, None),
    "studio-headphones.png": ("headphones", 7, None),
    "mini-mug.png": ("mug", 8, None),
    "desk-lamp.png": ("lamp", 9, None),
}
#: The photo stored sideways with EXIF orientation 6: upright only for a reader that obeys it.
SIDEWAYS = "arc-lamp.jpg"
REAL_PHOTO = "morning-coffee.png"  # scikit-image's coffee.png, CC0: not a studio shot
#: Photos that are bad on purpose: the file is missing, empty, or text named .png.
MISSING, EMPTY, NOT_AN_IMAGE = "ghost-vase.png", "empty-candle.png", "notes-planter.png"
_NOT_AN_IMAGE_TEXT = "<html><body>404 Not Found</body></html>\n"  # a CDN error page, saved
_MUGS, _LAMPS = "Home & Garden > Kitchen & Dining > Drinkware", "Home & Garden > Lighting > Lamps"
_DECOR = "Home & Garden > Decor"
#: handle, title, type, category, photo, and the variants: a SKU (a product without options),
#: or (option name, ((value, SKU, the variant's own photo or ""), ...)).
_PRODUCTS = (
    ("aurora-bottle", "Aurora Water Bottle", "Bottles", "Home & Garden > Kitchen & Dining > "
     "Water Bottles", "aurora-bottle.png", ("Colour", (("Teal", "BTL-AUR-TEAL", ""), (
         "Coral", "BTL-AUR-CORAL", "aurora-bottle-coral.png")))),
    ("harbor-mug", "Harbor Mug", "Mugs", _MUGS, "harbor-mug.png",
     ("Size", (("11 oz", "MUG-HBR-11", ""), ("15 oz", "MUG-HBR-15", "")))),
    ("trail-sneaker", "Trail Sneaker", "Sneakers", "Apparel & Accessories > Shoes",
     "trail-sneaker.png", ("Size", (("42", "SNK-TRL-42", ""), ("44", "SNK-TRL-44", "")))),
    ("parcel-box", "Parcel Gift Box", "Gift Boxes", "Arts & Entertainment > Gift Boxes",
     "parcel-box.png", "BOX-PCL-M"),
    ("arc-lamp", "Arc Table Lamp", "Lamps", _LAMPS, SIDEWAYS, "LMP-ARC-1"),
    ("bounce-ball", "Bounce Beach Ball", "Balls", "Sporting Goods > Outdoor Recreation",
     "bounce-ball.png", "BAL-BNC-1"),
    ("studio-headphones", "Studio Headphones", "Headphones", "Electronics > Audio > "
     "Headphones", "studio-headphones.png", "AUD-STU-1"),
    ("mini-mug", "Mini Espresso Mug", "Mugs", _MUGS, "mini-mug.png", "MUG-MIN-1"),
    ("desk-lamp", "Desk Lamp", "Lamps", _LAMPS, "desk-lamp.png", "LMP-DSK-1"),
    ("morning-coffee", "Morning Coffee Cup", "Cups", _MUGS, REAL_PHOTO, "CUP-MRN-1"),
    ("ghost-vase", "Ghost Vase", "Vases", f"{_DECOR} > Vases", MISSING, "VAS-GHS-1"),
    ("empty-candle", "Empty Candle", "Candles", f"{_DECOR} > Candles", EMPTY, "CND-EMP-1"),
    ("notes-planter", "Notes Planter", "Planters", f"{_DECOR} > Planters", NOT_AN_IMAGE,
     "PLT-NTS-1"),
    ("bare-scarf", "Bare Scarf", "Scarves", "Apparel & Accessories > Scarves", "", "SCF-BAR-1"),
)
#: The Shopify product export columns, legacy header style, in Shopify's order.
HEADER = ("Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags",
          "Published", "Option1 Name", "Option1 Value", "Variant SKU", "Variant Price",
          "Image Src", "Image Position", "Image Alt Text", "Variant Image", "Status")


def write_photo_catalog(folder: Path, *, size: int = CATALOG_SIZE) -> Path:
    """Write the photo catalog into ``folder``: ``photos/`` and ``catalog.csv``.

    Args:
        folder: where to write (created if missing; files of the same names are replaced).
        size: side of the generated photos, in pixels.

    Returns:
        The path of ``catalog.csv``, a Shopify export whose ``Image Src`` and ``Variant Image``
        are paths relative to it.
    """
    from PIL import Image

    photos = Path(folder) / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name, (kind, seed, colour) in _PHOTOS.items():
        photo = Image.fromarray(make_product(kind, size=size, seed=seed, colour=colour)[0])
        if name == SIDEWAYS:
            exif = Image.Exif()
            exif[0x0112] = 6  # Orientation: the stored pixels are rotated 90° counter-clockwise
            photo.transpose(Image.Transpose.ROTATE_90).save(photos / name, quality=90,
                                                            optimize=True, exif=exif)
        else:
            photo.save(photos / name, optimize=True)
    shutil.copyfile(Path(str(resources.files("skimage.data") / "coffee.png")),
                    photos / REAL_PHOTO)
    (photos / EMPTY).write_bytes(b"")
    (photos / NOT_AN_IMAGE).write_text(_NOT_AN_IMAGE_TEXT, encoding="utf-8")
    (photos / MISSING).unlink(missing_ok=True)
    path = Path(folder) / "catalog.csv"
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(HEADER)
        for handle, title, product_type, category, photo, variants in _PRODUCTS:
            if isinstance(variants, str):  # a product without options, as Shopify exports one
                variants = ("Title", (("Default Title", variants, ""),))
            option, values = variants
            for i, (value, sku, own_photo) in enumerate(values):
                row = dict.fromkeys(HEADER, "")
                row.update({"Handle": handle, "Option1 Value": value, "Variant SKU": sku,
                            "Variant Price": "24.00",
                            "Variant Image": f"photos/{own_photo}" if own_photo else ""})
                if i == 0:  # a product's own fields are on its first row only
                    row.update({"Title": title, "Vendor": "Northwind Studio",
                                "Body (HTML)": f"<p>The {title.lower()}, on a studio sweep.</p>",
                                "Product Category": category, "Type": product_type,
                                "Tags": product_type.lower(), "Published": "TRUE",
                                "Option1 Name": option, "Status": "active"})
                    if photo:
                        row.update({"Image Src": f"photos/{photo}", "Image Position": "1",
                                    "Image Alt Text": title})
                writer.writerow(row.values())
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m factory.catalog.product_photos FOLDER [--size N]``: (re)write the catalog."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=CATALOG_SIZE)
    args = parser.parse_args(argv)
    print(write_photo_catalog(args.folder, size=args.size))


if __name__ == "__main__":
    main()
