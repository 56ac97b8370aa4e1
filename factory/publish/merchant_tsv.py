"""``merchant-tsv``: a Merchant Center supplemental feed (tab-separated) of a run's images.

A supplemental feed updates attributes of products a primary feed already holds, matched by
``id``: here ``id`` is the SKU (``factory.catalog.commerce_formats`` reads ``id`` as the SKU, so
a run of a Merchant Center feed publishes back to its own ids), ``image_link`` is the SKU's
main image (the main channel's, ``factory.spec.publish.main_channel``) and
``additional_image_link`` the others. Merchant Center's product data specification, *Additional
image link [additional_image_link]*: up to 10 additional images, comma-separated in text
feeds, a comma inside a URL encoded as ``%2C``; URLs are ASCII and RFC 3986.

Merchant Center has no feed attribute for a generated image: its policy requires every
AI-generated image linked by ``image_link`` or ``additional_image_link`` to carry the IPTC
digital source type ``trainedAlgorithmicMedia`` in the file's own metadata, which every channel
asset does (``factory.core.provenance``); ``factory.publish.publisher`` checks it before it
writes a Merchant feed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from factory.publish.links import SkuImages

NAME = "merchant.tsv"
#: Merchant Center takes up to 10 additional images per product.
MAX_ADDITIONAL = 10
COLUMNS = ("id", "image_link", "additional_image_link")


@dataclass(frozen=True)
class MerchantItem:
    """One product of the feed: its id, main image, and up to ``MAX_ADDITIONAL`` others."""

    id: str
    image_link: str
    additional: tuple[str, ...]
    #: images past ``MAX_ADDITIONAL``, left out
    dropped: int = 0


def merchant_items(skus: Sequence[SkuImages]) -> list[MerchantItem]:
    """One item per SKU, in catalog order."""
    items = []
    for item in skus:
        urls = [image.url for image in item.images]
        items.append(MerchantItem(id=item.sku, image_link=urls[0],
                                  additional=tuple(urls[1:1 + MAX_ADDITIONAL]),
                                  dropped=max(0, len(urls) - 1 - MAX_ADDITIONAL)))
    return items


def write(items: Sequence[MerchantItem]) -> bytes:
    """The TSV (UTF-8, a header row of attribute names, one row per item)."""
    buffer = io.StringIO()
    out = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    out.writerow(COLUMNS)
    for item in items:
        out.writerow([item.id, item.image_link,
                      ",".join(url.replace(",", "%2C") for url in item.additional)])
    return buffer.getvalue().encode("utf-8")
