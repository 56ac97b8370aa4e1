"""Catalogs as commerce platforms export them: Shopify product CSV, Merchant Center TSV and XML.

Each reader streams one export and yields ``Record``s carrying the manifest's own fields, so a
Shopify or Merchant Center catalog feeds the same validation, rejects, fingerprint and accounting
as a hand-made CSV. Every format fills the same vocabulary (``CATALOG_FIELDS``): ``sku``,
``title``, ``description`` (HTML reduced to text), ``brand``, ``product_type``, ``category``,
``tags``, ``color``, ``size``, ``material``, ``pattern``, ``gender``, ``age_group``, ``options``,
``group`` and ``image_url``; a field the export lacks is None (a prompt template that reads it
rejects the row naming the field). ``variant`` stays the job's render variant, never a product
option.

A record is one of three things: work (a product variant), a reject (a row that is not a
product row, with its reason) or skipped (an image-only row, a product whose status the job
filters out): skipped rows are not manifest rows, so assets + failed + rejected = rows holds
over the rows that are. Rows keep their number in the export (data records from 1).
"""

from __future__ import annotations

import hashlib
import html
import html.parser
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from factory.catalog.bounded_text import (
    CsvFault, CsvRecords, field_label, has_surrogate, safe_text,
)
from factory.catalog.records import ManifestError, Record

#: Formats this module reads (``manifest.format``).
COMMERCE_FORMATS = ("shopify", "merchant-tsv", "merchant-xml")
#: The manifest fields every commerce record carries, in this order.
CATALOG_FIELDS = ("sku", "title", "description", "brand", "product_type", "category", "tags",
                  "color", "size", "material", "pattern", "gender", "age_group", "options",
                  "group", "image_url")
#: Product attributes a Shopify option may fill by its name (``Colour`` fills ``color``).
_OPTION_FIELDS = {"color": "color", "colour": "color", "size": "size", "material": "material",
                  "pattern": "pattern", "gender": "gender", "age_group": "age_group"}
#: Names an option must not take (the row validator reads them, or the vocabulary holds them).
_RESERVED = set(CATALOG_FIELDS) | {"variant", "seed", "width", "height", "palette"}
#: Skip reasons, as ``ManifestInfo.skipped`` counts them.
SKIP_IMAGE_ROW = "image or extra row of a product (not a variant)"
_G = "{http://base.google.com/ns/1.0}"


@dataclass(frozen=True)
class CatalogOptions:
    """How a catalog export becomes manifest rows (``manifest.status``, ``manifest.missing_sku``).

    Attributes:
        statuses: Shopify product statuses that are rendered; the others' rows are skipped.
        missing_sku: a Shopify variant without a SKU: ``derive`` a stable id from the handle and
            option values (``tee.red.m``), or ``reject`` the row saying so.
    """

    statuses: tuple[str, ...] = ("active",)
    missing_sku: Literal["derive", "reject"] = "derive"


def html_to_text(markup: str | None) -> str | None:
    """Visible text of an HTML fragment, whitespace collapsed (None for no text).

    Markup the parser gives up on (it raises ``AssertionError`` on a marked section such as
    ``<![foo[``) loses its tags by a plain pattern instead: a description is never a row's
    reject, let alone the run's."""
    if not markup or not markup.strip():
        return None
    parser = _TextParser()
    try:
        parser.feed(markup)
        parser.close()
        text = "".join(parser.parts)
    except AssertionError:
        text = html.unescape(re.sub(r"<[^<>]*>", " ", markup))
    text = " ".join(safe_text(text).split())
    return text or None


class _TextParser(html.parser.HTMLParser):
    _BREAKS = frozenset({"br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4",
               "h5", "h6", "table", "section", "blockquote"})
    _HIDDEN = frozenset({"script", "style", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().lower()).strip("_")


def _value_slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.strip().lower()).strip("-")
    return slug or hashlib.sha256(text.encode()).hexdigest()[:8]


def _text(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


# --- CSV-shaped exports -----------------------------------------------------------------

def csv_reader(stream: Any, delimiter: str = ",") -> CsvRecords:
    """The records of a CSV (or TSV) over a binary stream (UTF-8, optional BOM)."""
    return CsvRecords(stream, delimiter)


def csv_rows(header: list[str], reader: Any
             ) -> Iterator[tuple[int, dict[str, str] | None, Record | None]]:
    """(row, the row's values by header name, None) or (row, None, the reject), from 1."""
    row = 0
    for values in reader:
        if isinstance(values, CsvFault):
            row += 1
            yield row, None, Record(row, {}, "(row)", values.reason)
            continue
        if not values or (len(values) == 1 and not values[0].strip()):
            continue  # a blank line is not a row
        row += 1
        if len(values) != len(header):
            yield row, None, Record(row, {}, "(row)", f"expected {len(header)} fields as in "
                                                      f"the header, got {len(values)}")
            continue
        fields = dict(zip(header, values))
        joined = "".join(values)  # one check per row: almost every row is ASCII
        if not joined.isascii() and has_surrogate(joined):
            bad = next(i for i, v in enumerate(values) if has_surrogate(v))
            yield row, None, Record(row, {}, field_label(header[bad], bad), "not valid UTF-8")
            continue
        yield row, fields, None


def read_header(uri: str, reader: Any, what: str = "") -> list[str]:
    """A CSV's header row as written (lone surrogates from bad bytes become U+FFFD), or
    ``ManifestError`` naming the file for an empty file, a blank header or an unreadable one."""
    header = next(reader, None)
    suffix = f" ({what})" if what else ""
    if isinstance(header, CsvFault):
        raise ManifestError(f"manifest '{uri}': header row (line 1) is not readable: "
                            f"{header.reason}{suffix}")
    if not header or not any(h.strip() for h in header):
        raise ManifestError(f"manifest '{uri}': empty file or no header row{suffix}")
    return [safe_text(h) for h in header]


def _header(uri: str, reader: Any, what: str) -> list[str]:
    return [" ".join(h.split()).lower() for h in read_header(uri, reader, what)]


# --- Shopify ----------------------------------------------------------------------------

#: Column names of the two Shopify header styles (compared lower-cased).
_SHOPIFY_LEGACY = {"handle": "handle", "body": "body (html)", "sku": "variant sku",
                   "image": "image src", "variant_image": "variant image"}
_SHOPIFY_CURRENT = {"handle": "url handle", "body": "description", "sku": "sku",
                    "image": "product image url", "variant_image": "variant image url"}
_OPTION_COLUMN = re.compile(r"^option(\d+) (name|value)$")


def is_shopify_header(names: list[str]) -> bool:
    """Whether a CSV header is a Shopify product export's (either style)."""
    lowered = {" ".join(n.split()).lower() for n in names}
    return "title" in lowered and ("handle" in lowered or "url handle" in lowered)


def read_shopify(uri: str, stream: Any, options: CatalogOptions) -> Iterator[Record]:
    """A Shopify product CSV export as manifest records."""
    reader = csv_reader(stream)
    header = _header(uri, reader, "a Shopify product export")
    yield from shopify_records(uri, header, reader, options)


def shopify_records(uri: str, header: list[str], reader: Any,
                    options: CatalogOptions) -> Iterator[Record]:
    """The rows after a Shopify header (``reader`` stands just after it)."""
    header = [" ".join(h.split()).lower() for h in header]
    if not is_shopify_header(header):
        raise ManifestError(f"manifest '{uri}': not a Shopify product export: no Handle/URL "
                            f"handle and Title columns (columns: {', '.join(header)})")
    cols = _SHOPIFY_LEGACY if "handle" in header else _SHOPIFY_CURRENT
    handle_col = cols["handle"]
    option_numbers = sorted({int(m.group(1)) for h in header if (m := _OPTION_COLUMN.match(h))})
    product: _Product | None = None
    seen: dict[str, int] = {}  # handle -> its first row: a product's rows must be adjacent
    for row, values, reject in csv_rows(header, reader):
        if reject is not None:
            yield reject
            continue
        assert values is not None
        handle = _text(values.get(handle_col))
        if handle is None:
            yield Record(row, {}, handle_col, "no handle: not a product row")
            continue
        if product is None or handle != product.handle:
            if handle in seen:
                yield Record(row, {}, handle_col, f"product '{handle}' began at row "
                             f"{seen[handle]} and other products came between: rows of one "
                             "product must be adjacent")
                continue
            seen[handle] = row
            product = _Product.first_row(row, handle, values, cols, option_numbers, options)
            if product.reject:
                yield Record(row, {}, "title", product.reject)
                continue
        option_values = [_text(values.get(f"option{n} value")) for n in option_numbers]
        sku = _text(values.get(cols["sku"]))
        if row != product.row and sku is None and not any(option_values):
            yield Record(row, {}, skip=SKIP_IMAGE_ROW)
            continue
        if product.skip:
            yield Record(row, {}, skip=product.skip)
        elif product.reject:
            yield Record(row, {}, handle_col,
                         f"product '{handle}' was rejected at row {product.row}")
        else:
            yield product.variant(row, sku, option_values,
                                  _text(values.get(cols["variant_image"])), options)


@dataclass(frozen=True)
class _Product:
    """A Shopify product, from its first row: the fields its variants share."""

    row: int
    handle: str
    fields: dict[str, str | None]
    option_names: tuple[str | None, ...]
    skip: str = ""
    reject: str = ""

    @classmethod
    def first_row(cls, row: int, handle: str, values: dict[str, str], cols: dict[str, str],
                  option_numbers: list[int], options: CatalogOptions) -> _Product:
        def get(name: str) -> str | None:
            return _text(values.get(name))

        names = tuple(get(f"option{n} name") for n in option_numbers)
        status = (get("status") or "active").lower()
        fields: dict[str, str | None] = dict.fromkeys(CATALOG_FIELDS)
        fields.update(title=get("title"), description=html_to_text(values.get(cols["body"])),
                      brand=get("vendor"), product_type=get("type"),
                      category=get("product category"), tags=get("tags"), group=handle,
                      image_url=get(cols["image"]))
        reject = skip = ""
        if fields["title"] is None:
            reject = f"first row of product '{handle}' has no Title: not a product row"
        elif status not in options.statuses:
            skip = f"product status {status}"
        return cls(row, handle, fields, names, skip=skip, reject=reject)

    def variant(self, row: int, sku: str | None, values: list[str | None], image: str | None,
                options: CatalogOptions) -> Record:
        fields = dict(self.fields)
        chosen = [(name, value) for name, value in zip(self.option_names, values)
                  if value and not (name == "Title" and value == "Default Title")]
        for name, value in chosen:
            key = _slug(name or "option")
            key = _OPTION_FIELDS.get(key, key)
            if key in _RESERVED and key not in _OPTION_FIELDS.values():
                key = f"option_{key}"
            fields[key] = value
        fields["options"] = ", ".join(f"{name}: {value}" if name else value
                                      for name, value in chosen) or None
        if image:
            fields["image_url"] = image
        if sku is None:
            if options.missing_sku == "reject":
                which = fields["options"] or "its only variant"
                return Record(row, {}, "sku", f"variant of '{self.handle}' ({which}) has no SKU "
                              "(manifest.missing_sku: derive gives it a stable derived id)")
            sku = ".".join([self.handle] + [_value_slug(value) for _, value in chosen])
        fields["sku"] = sku
        return Record(row, fields)


# --- Google Merchant Center -------------------------------------------------------------

#: Merchant Center attribute -> manifest field.
_MERCHANT = {"id": "sku", "title": "title", "description": "description", "brand": "brand",
             "product_type": "product_type", "google_product_category": "category",
             "color": "color", "size": "size", "material": "material", "pattern": "pattern",
             "gender": "gender", "age_group": "age_group", "item_group_id": "group",
             "image_link": "image_url"}
_OPTION_ATTRIBUTES = ("color", "size", "material", "pattern")


def _merchant_record(row: int, attributes: dict[str, str | None]) -> Record:
    if _text(attributes.get("id")) is None:
        return Record(row, {}, "id", "item has no id: not a product item")
    fields: dict[str, str | None] = dict.fromkeys(CATALOG_FIELDS)
    for attribute, name in _MERCHANT.items():
        fields[name] = _text(attributes.get(attribute))
    fields["description"] = html_to_text(fields["description"])
    fields["group"] = fields["group"] or fields["sku"]  # an item without a group is its own
    fields["options"] = ", ".join(f"{a}: {fields[a]}" for a in _OPTION_ATTRIBUTES
                                  if fields[a]) or None
    return Record(row, fields)


def _merchant_name(name: str) -> str:
    name = " ".join(name.split()).lower().removeprefix("g:")
    return name.replace(" ", "_")


def read_merchant_tsv(uri: str, stream: Any, options: CatalogOptions) -> Iterator[Record]:
    """A Merchant Center tab-separated feed (header row of attribute names) as records."""
    reader = csv_reader(stream, delimiter="\t")
    header = [_merchant_name(h) for h in _header(uri, reader, "a Merchant Center TSV feed")]
    if "id" not in header:
        raise ManifestError(f"manifest '{uri}': not a Merchant Center feed: no 'id' column "
                            f"(columns: {', '.join(header)})")
    for row, values, reject in csv_rows(header, reader):
        yield reject if reject is not None else _merchant_record(row, values or {})


def read_merchant_xml(uri: str, stream: Any, options: CatalogOptions) -> Iterator[Record]:
    """A Merchant Center RSS 2.0 feed (``g:`` namespace) as records, one per ``<item>``.

    Parsed as a stream (``iterparse``; each item is freed once read) by defusedxml with DTDs
    forbidden: a feed that declares a DTD or entities (billion laughs, external entities) is
    refused before anything is expanded.
    """
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    row, stack = 0, []
    try:
        for event, element in iterparse(stream, events=("start", "end"), forbid_dtd=True,
                                        forbid_entities=True, forbid_external=True):
            if event == "start":
                if not stack and _local(element.tag) != "rss":
                    raise ManifestError(f"manifest '{uri}': not an RSS 2.0 Merchant Center "
                                        f"feed (root element <{_local(element.tag)}>)")
                stack.append(element)
                continue
            stack.pop()
            if _local(element.tag) != "item" or not _ours(element.tag):
                continue
            row += 1
            attributes = {_local(child.tag): (child.text or "") for child in element
                          if len(child) == 0 and _ours(child.tag)}
            yield _merchant_record(row, attributes)
            if stack:
                stack[-1].remove(element)  # bounded memory: a read item is dropped
    except DefusedXmlException as exc:
        raise ManifestError(f"manifest '{uri}': refused: the XML declares a DTD or entities "
                            f"({type(exc).__name__}); entity expansion is off and a Merchant "
                            "Center feed needs none") from exc
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise ManifestError(f"manifest '{uri}': not well-formed XML at line {line}, column "
                            f"{column + 1} (after {row} items)") from exc


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ours(tag: str) -> bool:
    """An RSS element (no namespace) or a Merchant Center one (``g:``)."""
    return not tag.startswith("{") or tag.startswith(_G)


#: format -> reader(uri, binary stream, options)
READERS = {"shopify": read_shopify, "merchant-tsv": read_merchant_tsv,
           "merchant-xml": read_merchant_xml}
