"""factory.catalog.product_photos: procedural studio shots with exact masks, and the shipped catalog.

The shipped ``manifests/product-photos`` is checked against a fresh regeneration by content, not
bytes: the CSV and the copied or deliberately bad files byte for byte, each PNG by its decoded
pixels (zlib builds differ in compressed bytes, not pixels), the JPEG by its EXIF orientation
and decoded pixels within a small tolerance (libjpeg builds may round differently).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from factory.catalog.manifest import iter_records
from factory.catalog.product_photos import (
    CATALOG_SIZE, EMPTY, KINDS, MISSING, NOT_AN_IMAGE, REAL_PHOTO, SIDEWAYS, make_product, write_photo_catalog,
)

SHIPPED = Path(__file__).resolve().parents[2] / "manifests" / "product-photos"
SKUS = ["BTL-AUR-TEAL", "BTL-AUR-CORAL", "MUG-HBR-11", "MUG-HBR-15", "SNK-TRL-42", "SNK-TRL-44",
        "BOX-PCL-M", "LMP-ARC-1", "BAL-BNC-1", "AUD-STU-1", "MUG-MIN-1", "LMP-DSK-1",
        "CUP-MRN-1", "VAS-GHS-1", "CND-EMP-1", "PLT-NTS-1", "SCF-BAR-1"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    return write_photo_catalog(tmp_path_factory.mktemp("catalog"))


def test_a_product_is_the_same_for_the_same_kind_size_and_seed():
    photo, mask = make_product("mug", size=96, seed=3)
    again, mask_again = make_product("mug", size=96, seed=3)
    assert np.array_equal(photo, again) and np.array_equal(mask, mask_again)
    other, _ = make_product("mug", size=96, seed=4)
    assert not np.array_equal(photo, other)
    assert photo.shape == (96, 96, 3) and photo.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == bool
    with pytest.raises(ValueError, match="unknown product kind 'vase'; valid: bottle, mug"):
        make_product("vase")


@pytest.mark.parametrize("kind", KINDS)
def test_the_mask_is_where_the_photo_shows_the_product(kind):
    photo, mask = make_product(kind, size=192, seed=1)
    assert 0.05 < mask.mean() < 0.5  # a product, framed with sweep around it
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    outside = ~ndimage.binary_dilation(mask, iterations=2)
    inside = ndimage.binary_erosion(mask, iterations=2)
    # the sweep varies by row (its gradient); each row's median outside the product is its colour
    sweep = np.array([np.median(photo[r][outside[r]], axis=0) for r in range(photo.shape[0])])
    deviation = np.abs(photo.astype(int) - sweep[:, None, :]).max(axis=2)
    assert deviation[outside].max() <= 12  # faint noise and vignette only
    assert (deviation[inside] > 20).mean() > 0.9  # the product is not the sweep
    edge = mask & ~ndimage.binary_erosion(mask)
    assert ((deviation[edge] > 8) & (deviation[edge] < 0.9 * deviation[inside].max())).any()


def test_the_mug_handle_opening_is_background_in_the_truth():
    photo, mask = make_product("mug", size=192, seed=0)
    opening = ndimage.binary_fill_holes(mask) & ~mask
    assert opening.sum() > 100  # the one hole: the sweep seen through the handle


def test_the_catalog_reads_as_a_shopify_export(catalog):
    records = list(iter_records(str(catalog), "shopify"))
    assert [r.fields["sku"] for r in records] == SKUS
    assert not any(r.parse_error or r.skip for r in records)
    urls = {r.fields["sku"]: r.fields["image_url"] for r in records}
    assert urls["BTL-AUR-TEAL"] == "photos/aurora-bottle.png"
    assert urls["BTL-AUR-CORAL"] == "photos/aurora-bottle-coral.png"  # its own Variant Image
    assert urls["MUG-HBR-11"] == urls["MUG-HBR-15"] == "photos/harbor-mug.png"  # shared
    assert urls["LMP-ARC-1"] == f"photos/{SIDEWAYS}"
    assert urls["CUP-MRN-1"] == f"photos/{REAL_PHOTO}"
    assert urls["SCF-BAR-1"] is None  # a product without a photo
    by_sku = {r.fields["sku"]: r.fields for r in records}
    assert by_sku["BTL-AUR-CORAL"]["color"] == "Coral" and by_sku["MUG-HBR-15"]["size"] == "15 oz"
    assert by_sku["AUD-STU-1"]["title"] == "Studio Headphones"


def test_the_photos_are_what_the_rows_claim(catalog):
    folder = catalog.parent
    records = list(iter_records(str(catalog), "shopify"))
    bad = {f"photos/{MISSING}", f"photos/{EMPTY}", f"photos/{NOT_AN_IMAGE}", None}
    for record in records:
        url = record.fields["image_url"]
        if url not in bad:
            with Image.open(folder / url) as image:
                image.load()
    assert not (folder / "photos" / MISSING).exists()
    assert (folder / "photos" / EMPTY).stat().st_size == 0
    with pytest.raises(UnidentifiedImageError):
        Image.open(folder / "photos" / NOT_AN_IMAGE)
    coffee = resources.files("skimage.data") / "coffee.png"
    assert (folder / "photos" / REAL_PHOTO).read_bytes() == coffee.read_bytes()


def test_the_sideways_photo_is_upright_only_through_its_exif_orientation(catalog):
    upright, _ = make_product("lamp", size=CATALOG_SIZE, seed=5)
    with Image.open(catalog.parent / "photos" / SIDEWAYS) as image:
        assert image.getexif()[0x0112] == 6
        stored = np.asarray(image.convert("RGB"), dtype=float)
        shown = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=float)
    assert np.abs(shown - upright).mean() < 2.0  # JPEG's loss only
    assert np.abs(stored - np.rot90(upright)).mean() < 2.0  # a reader ignoring EXIF: sideways
    assert np.abs(stored - upright).mean() > 10.0


def test_the_shipped_catalog_is_what_the_generator_writes(catalog):
    fresh = catalog.parent
    shipped = {p.relative_to(SHIPPED) for p in SHIPPED.rglob("*") if p.is_file()}
    written = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    assert shipped - {Path("README.md")} == written
    assert sum((SHIPPED / p).stat().st_size for p in shipped) < 1_500_000
    as_bytes = {"catalog.csv", REAL_PHOTO, EMPTY, NOT_AN_IMAGE}  # written or copied verbatim
    for path in sorted(written):
        ours, theirs = SHIPPED / path, fresh / path
        if path.name in as_bytes:
            assert ours.read_bytes() == theirs.read_bytes(), path
        elif path.suffix == ".png":
            with Image.open(ours) as a, Image.open(theirs) as b:
                assert np.array_equal(np.asarray(a), np.asarray(b)), path
        elif path.suffix == ".jpg":
            with Image.open(ours) as a, Image.open(theirs) as b:
                assert a.getexif()[0x0112] == b.getexif()[0x0112] == 6
                diff = np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
                assert diff.mean() < 1.0, path
        else:
            pytest.fail(f"the generator wrote {path}, which this test does not compare")
