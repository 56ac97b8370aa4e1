"""``shopify-csv``: a Shopify product CSV that attaches a run's images to existing products.

Shopify's rules this follows (its help page *Using CSV files to import and export products*):
updating products by CSV needs the ``Handle`` and ``Title`` columns; the rows of one product
are adjacent and share its handle, and an extra row with the handle and image columns only
adds an image; ``Image Position`` orders a product's images from 1; ``Image Alt Text`` is at
most 512 characters; variant columns (``Variant SKU``, ``Variant Image``) depend on the
option columns, so ``Option1 Name`` / ``Option1 Value`` (and the export's other options) come
along; columns left out of the file keep their values in the store.

The factory's choices: the header style (legacy ``Handle``/``Image Src``/``Variant SKU``, or
current ``URL handle``/``Product image URL``/``SKU``) is the export's own; a product's rows
are its variants in the export's order, each with its main image as ``Image Src`` and
``Variant Image``, then one image-only row per other image; positions run over the product's
images in that order; ``Title`` and option names are on the product's first row only, as
Shopify exports them; a variant whose SKU the reader derived keeps an empty SKU column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from factory.publish.catalog import ShopifyExport
from factory.publish.links import SkuImages

NAME = "shopify.csv"
#: Shopify's limit on ``Image Alt Text``.
MAX_ALT = 512

_LEGACY = {"handle": "Handle", "title": "Title", "option": "Option{n} {part}",
           "sku": "Variant SKU", "image": "Image Src", "position": "Image Position",
           "alt": "Image Alt Text", "variant_image": "Variant Image"}
_CURRENT = {"handle": "URL handle", "title": "Title", "option": "Option{n} {part}",
            "sku": "SKU", "image": "Product image URL", "position": "Image position",
            "alt": "Image alt text", "variant_image": "Variant image URL"}


def header(export: ShopifyExport) -> list[str]:
    """The file's columns, in the export's header style."""
    names = _LEGACY if export.legacy else _CURRENT
    parts = ("Name", "Value") if export.legacy else ("name", "value")
    options = [names["option"].format(n=n, part=part) for n in export.options for part in parts]
    return [names["handle"], names["title"], *options, names["sku"], names["image"],
            names["position"], names["alt"], names["variant_image"]]


def write(skus: Sequence[SkuImages], export: ShopifyExport) -> bytes:
    """The CSV of ``skus``' images (UTF-8, one row per image), products in export order."""
    products: dict[str, list[SkuImages]] = {}
    for item in skus:
        handle = export.rows[item.images[0].asset.row].handle
        products.setdefault(handle, []).append(item)
    columns = header(export)
    width = len(export.options)
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(columns)
    for handle, variants in products.items():
        rows, extra, position = [], [], 0
        for item in variants:
            source = export.rows[item.images[0].asset.row]
            for i, image in enumerate(item.images):
                position += 1
                row = [handle, ""] + [""] * (2 * width) + [
                    "", image.url, str(position), image.alt[:MAX_ALT], ""]
                if i == 0:  # the variant's row: its options, SKU and main image
                    for k, value in enumerate(source.option_values):
                        row[3 + 2 * k] = value
                    row[2 + 2 * width] = source.sku
                    row[-1] = image.url
                    rows.append(row)
                else:
                    extra.append(row)
        first = rows[0]
        first[1] = export.titles.get(handle, "")
        for k, name in enumerate(export.option_names.get(handle, ())):
            first[2 + 2 * k] = name
        out.writerows(rows + extra)
    return buffer.getvalue().encode("utf-8")
