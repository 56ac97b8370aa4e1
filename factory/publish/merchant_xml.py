"""``merchant-xml``: the supplemental feed of ``merchant-tsv`` as RSS 2.0 XML.

The same items (``factory.publish.merchant_tsv.merchant_items``), each an ``<item>`` with
``<g:id>``, ``<g:image_link>`` and one ``<g:additional_image_link>`` per additional image (the
``g:`` namespace is ``http://base.google.com/ns/1.0``, as Merchant Center's XML feeds use and
``factory.catalog.commerce_formats`` reads). Text is escaped by ElementTree.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree

from factory.publish.merchant_tsv import MerchantItem

NAME = "merchant.xml"
NAMESPACE = "http://base.google.com/ns/1.0"


def write(items: Sequence[MerchantItem], *, title: str) -> bytes:
    """The RSS document (UTF-8, with its XML declaration); ``title`` names the channel."""
    ElementTree.register_namespace("g", NAMESPACE)
    rss = ElementTree.Element("rss", {"version": "2.0"})
    channel = ElementTree.SubElement(rss, "channel")
    ElementTree.SubElement(channel, "title").text = title
    ElementTree.SubElement(channel, "description").text = (
        "Supplemental feed: generated product images")
    for item in items:
        element = ElementTree.SubElement(channel, "item")
        ElementTree.SubElement(element, f"{{{NAMESPACE}}}id").text = item.id
        ElementTree.SubElement(element, f"{{{NAMESPACE}}}image_link").text = item.image_link
        for url in item.additional:
            ElementTree.SubElement(element, f"{{{NAMESPACE}}}additional_image_link").text = url
    ElementTree.indent(rss)
    return ElementTree.tostring(rss, encoding="utf-8", xml_declaration=True) + b"\n"
