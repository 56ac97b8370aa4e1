"""The catalog a run read, as a publish finds it again: the run summary's ``catalog`` entry,
each lineage row's catalog fields, and a Shopify export's handles, options and header style.

A run records which catalog it read (``catalog_entry``, in its lineage footer's summary); a
publish reads that catalog again and joins it to the lineage by row number, the number each
reader gives an export's rows. A row whose SKU is not the one the run rendered there means the
catalog changed since the run: the publish stops (``CatalogChanged``) rather than attach images
to the wrong products.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.catalog.commerce_formats import (
    CatalogOptions, csv_reader, csv_rows, is_shopify_header, read_header,
)
from factory.catalog.manifest import iter_records, open_input
from factory.catalog.records import ManifestError
from factory.spec.keys import normal_form
from factory.store.s3 import S3Options, is_s3

if TYPE_CHECKING:
    from factory.spec.job import Job

_OPTION_COLUMN = re.compile(r"^option(\d+) (name|value)$")


class CatalogChanged(ManifestError):
    """The catalog no longer holds, at a row the run rendered, the SKU it rendered there."""


def catalog_entry(job: Job) -> dict[str, Any]:
    """What a run's summary records of its catalog: where it is (a local path made absolute,
    as the run read it) and how it was read."""
    uri = job.manifest_uri if is_s3(job.manifest_uri) else str(
        Path(job.manifest_uri).expanduser().resolve())
    return {"uri": uri, "format": job.manifest_format,
            "status": list(job.catalog.statuses), "missing_sku": job.catalog.missing_sku}


@dataclass(frozen=True)
class CatalogRef:
    """The catalog a run read: ``uri``, ``format`` and the export options."""

    uri: str
    format: str
    options: CatalogOptions = CatalogOptions()

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> CatalogRef | None:
        """The run summary's catalog, or None for a run that did not record one."""
        entry = summary.get("catalog")
        if not isinstance(entry, dict) or not entry.get("uri"):
            return None
        options = CatalogOptions(statuses=tuple(entry.get("status") or ("active",)),
                                 missing_sku=entry.get("missing_sku") or "derive")
        return cls(uri=entry["uri"], format=entry.get("format") or "", options=options)


def catalog_fields(ref: CatalogRef, skus: Mapping[int, str],
                   s3: S3Options | None = None) -> dict[int, dict[str, str | None]]:
    """Each wanted row's catalog fields (``title``, ``group``, the CSV's columns...), keyed by
    row number; ``skus`` maps each wanted row to the SKU the run rendered there.

    Raises:
        CatalogChanged: a wanted row is missing or holds another SKU now.
        ManifestError: the catalog cannot be read.
    """
    found: dict[int, dict[str, str | None]] = {}
    for record in iter_records(ref.uri, ref.format, s3, catalog=ref.options):
        if record.row in skus and not record.skip:
            found[record.row] = dict(record.fields)
    for row, sku in skus.items():
        fields = found.get(row)
        now = normal_form(fields.get("sku")) if fields is not None else None
        if now != sku:
            held = f"holds SKU '{now}'" if now else "holds no SKU"
            raise CatalogChanged(
                f"catalog '{ref.uri}': row {row} {held}, but the run rendered '{sku}' there: "
                "the catalog changed since the run. Publish a run of the catalog as it is now "
                "(factory refresh)")
    return found


@dataclass(frozen=True)
class ShopifyRow:
    """One variant row of a Shopify export, as the export wrote it.

    Attributes:
        handle: the product's handle.
        sku: the row's own SKU column ("" for a variant whose SKU the reader derived).
        option_values: the row's option values, one per option column of the export.
    """

    handle: str
    sku: str
    option_values: tuple[str, ...]


@dataclass(frozen=True)
class ShopifyExport:
    """What a Shopify product CSV needs from the export a run read.

    Attributes:
        legacy: the header style: ``Handle``/``Variant SKU``/``Image Src`` (True) or
            ``URL handle``/``SKU``/``Product image URL`` (False).
        options: the export's option column numbers (``Option1 …``), in order.
        rows: the wanted rows' handles, SKUs and option values, by row number.
        titles: each product's title, by handle (from its first row).
        option_names: each product's option names, by handle (from its first row).
    """

    legacy: bool
    options: tuple[int, ...]
    rows: Mapping[int, ShopifyRow]
    titles: Mapping[str, str] = field(default_factory=dict)
    option_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def read_shopify_export(ref: CatalogRef, wanted: Iterable[int],
                        s3: S3Options | None = None) -> ShopifyExport:
    """The header style, handles, titles and options of the Shopify export ``ref`` names.

    Raises:
        ManifestError: the catalog is not a Shopify product export, or cannot be read.
    """
    wanted = set(wanted)
    with open_input(ref.uri, s3) as stream:
        reader = csv_reader(stream)
        header = [" ".join(h.split()).lower() for h in read_header(ref.uri, reader)]
        if not is_shopify_header(header):
            raise ManifestError(f"catalog '{ref.uri}' is not a Shopify product export (no "
                                "Handle/URL handle and Title columns): shopify-csv writes "
                                "images back to the export a run read")
        legacy = "handle" in header
        handle_col, sku_col = ("handle", "variant sku") if legacy else ("url handle", "sku")
        numbers = tuple(sorted({int(m.group(1)) for h in header
                                if (m := _OPTION_COLUMN.match(h))}))
        rows: dict[int, ShopifyRow] = {}
        titles: dict[str, str] = {}
        names: dict[str, tuple[str, ...]] = {}
        for row, values, _ in csv_rows(header, reader):
            if values is None:
                continue
            handle = (values.get(handle_col) or "").strip()
            if not handle:
                continue
            if handle not in titles:  # a product's first row holds its shared fields
                titles[handle] = (values.get("title") or "").strip()
                names[handle] = tuple((values.get(f"option{n} name") or "").strip()
                                      for n in numbers)
            if row in wanted:
                rows[row] = ShopifyRow(handle=handle, sku=(values.get(sku_col) or "").strip(),
                                       option_values=tuple(
                                           (values.get(f"option{n} value") or "").strip()
                                           for n in numbers))
    return ShopifyExport(legacy=legacy, options=numbers, rows=rows, titles=titles,
                         option_names=names)
