"""``shopify-csv``: a hand-built run of a Shopify export published back, and read again by the
project's own Shopify reader: the export's handles, images on the right variants, the
export's header style, positions, alt text."""

from __future__ import annotations

import csv
import io
from collections import defaultdict

import pytest

from factory.catalog.commerce_formats import SKIP_IMAGE_ROW, CatalogOptions, read_shopify
from factory.publish.publisher import publish_run
from factory.publish.run_assets import PublishError
from factory.publish.shopify_csv import MAX_ALT
from factory.spec.publish import PublishConfig
from factory.store.storage import Store
from tests.support.published_runs import (MERCHANT_TSV, SHOPIFY_CURRENT, SHOPIFY_LEGACY, Row,
                                          write_run)

CHANNELS = ("meta-square", "google-shopping")
#: The legacy fixture's rendered rows (tests/integration/test_shopify_run.py has the same five).
LEGACY = {1: "TOTE-NAVY", 2: "TOTE-SAND", 4: "SHIRT-S-WHT", 5: "linen-shirt.m.white",
          12: "desk-lamp"}
HANDLES = {"TOTE-NAVY": "canvas-tote", "TOTE-SAND": "canvas-tote",
           "SHIRT-S-WHT": "linen-shirt", "linen-shirt.m.white": "linen-shirt",
           "desk-lamp": "desk-lamp"}
BASE = "https://cdn.example.com/{key}"


def _run(tmp_path, skus=LEGACY, catalog=SHOPIFY_LEGACY, **config) -> tuple[Store, bytes]:
    rows = [Row(row, sku, channel=c) for row, sku in skus.items() for c in CHANNELS]
    write_run(tmp_path, "r1", rows, channels=CHANNELS, catalog=catalog)
    store = Store(str(tmp_path))
    result = publish_run(store, "r1", PublishConfig(formats=("shopify-csv",), base_url=BASE,
                                                    **config))
    assert [f.path for f in result.files] == [store.path("runs/r1/publish/shopify.csv")]
    return store, (tmp_path / "runs" / "r1" / "publish" / "shopify.csv").read_bytes()


def test_the_csv_reads_back_as_the_same_products_with_each_variant_on_its_main_image(tmp_path):
    _, data = _run(tmp_path)
    records = list(read_shopify("shopify.csv", io.BytesIO(data), CatalogOptions()))
    variants = [r for r in records if not r.skip and not r.parse_error]
    assert {r.fields["sku"]: r.fields["group"] for r in variants} == HANDLES
    for r in variants:  # the variant image is its google-shopping asset (the main channel)
        key = Row(0, r.fields["sku"], channel="google-shopping").key
        assert r.fields["image_url"] == BASE.replace("{key}", key)
    # one image-only row per other image, which the reader skips as Shopify does
    assert [r.skip for r in records if r.skip] == [SKIP_IMAGE_ROW] * len(LEGACY)
    assert not [r for r in records if r.parse_error]


def test_the_legacy_export_gets_legacy_columns_and_positions_run_per_product(tmp_path):
    _, data = _run(tmp_path)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert list(rows[0]) == ["Handle", "Title", "Option1 Name", "Option1 Value", "Option2 Name",
                             "Option2 Value", "Option3 Name", "Option3 Value", "Variant SKU",
                             "Image Src", "Image Position", "Image Alt Text", "Variant Image"]
    positions = defaultdict(list)
    for row in rows:
        positions[row["Handle"]].append(int(row["Image Position"]))
    assert {h: sorted(p) for h, p in positions.items()} == {
        "canvas-tote": [1, 2, 3, 4], "linen-shirt": [1, 2, 3, 4], "desk-lamp": [1, 2]}
    first = rows[0]  # the product's first row: title and option names, as Shopify exports
    assert (first["Handle"], first["Title"], first["Option1 Name"], first["Option1 Value"],
            first["Variant SKU"]) == ("canvas-tote", "Canvas Tote", "Color", "Navy", "TOTE-NAVY")
    assert first["Image Position"] == "1" and first["Variant Image"] == first["Image Src"]
    derived = next(r for r in rows if r["Handle"] == "linen-shirt" and r["Option1 Value"] == "M")
    assert derived["Variant SKU"] == "" and derived["Option2 Value"] == "White"
    # every image of the file is one of the run's assets, once
    assert len({r["Image Src"] for r in rows}) == len(rows) == 2 * len(LEGACY)
    assert all(r["Title"] == "" for r in rows if r is not first and r["Handle"] == "canvas-tote")


def test_the_current_export_gets_current_columns(tmp_path):
    _, data = _run(tmp_path, skus={1: "RUN-42-BLK", 2: "RUN-43-BLK", 6: "PIN-1"},
                   catalog=SHOPIFY_CURRENT)
    header = data.decode().splitlines()[0].split(",")
    assert header[:2] == ["URL handle", "Title"] and header[-5:] == [
        "SKU", "Product image URL", "Image position", "Image alt text", "Variant image URL"]
    records = [r for r in read_shopify("s.csv", io.BytesIO(data), CatalogOptions())
               if not r.skip]
    assert {r.fields["sku"]: r.fields["group"] for r in records} == {
        "RUN-42-BLK": "trail-runner", "RUN-43-BLK": "trail-runner", "PIN-1": "enamel-pin"}


def test_alt_text_is_the_template_over_the_catalog_row_cut_to_shopifys_limit(tmp_path):
    _, data = _run(tmp_path, alt_text="{{ title }} in {{ channel }}{{ ' more' * 200 }}")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert rows[0]["Image Alt Text"].startswith("Canvas Tote in google-shopping more")
    assert max(len(r["Image Alt Text"]) for r in rows) == MAX_ALT


def test_a_run_of_another_catalog_does_not_publish_a_shopify_csv(tmp_path):
    write_run(tmp_path, "m", [Row(1, "TEE-RED-S", channel="google-shopping")],
              channels=("google-shopping",), catalog=MERCHANT_TSV, catalog_format="merchant-tsv")
    with pytest.raises(PublishError, match="shopify-csv writes images back to a Shopify"):
        publish_run(Store(str(tmp_path)), "m", PublishConfig(formats=("shopify-csv",)))
    assert not (tmp_path / "runs" / "m" / "publish").exists()
