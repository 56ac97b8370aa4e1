"""The offline demos: tiny models, and a shipped job over the catalog's own photos
(``jobs/product-photos.yaml``) or over a generated text catalog (``jobs/demo.yaml``)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from factory.core import settings

DEMO_JOB = Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml"
#: The catalog's own photos in new scenes: the demo a retailer comes for.
PHOTO_JOB = Path(__file__).resolve().parents[2] / "jobs" / "product-photos.yaml"
PHOTO_CATALOG = Path(__file__).resolve().parents[2] / "manifests" / "product-photos" / "catalog.csv"
CATALOG = Path("build/demo/catalog.csv")

_TITLES = ["tote bag", "sneaker", "desk lamp", "water bottle", "backpack", "armchair",
           "wristwatch", "ceramic mug", "sunglasses", "headphones", "wool scarf", "kettle"]
_COLOURS = ["red", "navy", "forest green", "sand", "charcoal", "mustard", "white", "teal"]
_MATERIALS = ["leather", "canvas", "steel", "oak", "ceramic", "recycled plastic", "wool"]
_CATEGORIES = ["accessories", "footwear", "home", "kitchen", "outdoor", "electronics"]


def write_catalog(path: Path, rows: int, *, seed: int = 7, bad_rows: bool = True) -> Path:
    """A deterministic demo catalog. With ``bad_rows``, three rows are wrong on purpose
    (no SKU, a seed that is not a number, an invalid colour) to show rejections."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "color", "material", "category", "seed", "palette"])
        for i in range(rows):
            row = [f"SKU-{i:05d}", rng.choice(_TITLES), rng.choice(_COLOURS),
                   rng.choice(_MATERIALS), rng.choice(_CATEGORIES), "", ""]
            if i % 25 == 3:
                row[6] = "#1B3A5C #F2E8D5"  # a product line with its own palette
            if bad_rows and rows >= 30:
                if i == 10:
                    row[0] = ""
                elif i == 20:
                    row[5] = "abc"
                elif i == 30:
                    row[6] = "#GGG"
            writer.writerow(row)
    return path


def prepare_demo(*, catalog: str = "photos", rows: int = 200) -> Path:
    """Build the tiny models (once) and, for the text demo, its catalog; return the demo job
    spec's path. The photo demo's catalog ships in ``manifests/product-photos/``."""
    from stages.tiny.models import make_all

    make_all(settings.models_dir())
    if catalog == "photos":
        return PHOTO_JOB
    write_catalog(CATALOG, rows)
    return DEMO_JOB
