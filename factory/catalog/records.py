"""What every manifest reader yields: numbered records, and the error for an unreadable file.

Shared by ``factory.catalog.manifest`` (CSV, Parquet, JSONL, and the dispatch) and
``factory.catalog.commerce_formats`` (Shopify and Merchant Center exports), so neither imports the other
both ways.
"""

from __future__ import annotations

from dataclasses import dataclass


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing, empty, no header, unsafe XML)."""


@dataclass(frozen=True)
class Record:
    """One manifest row: its number, its fields, or why it could not be parsed.

    Attributes:
        row: the row's number in the file (from 1; a header and blank lines are not rows).
        fields: the manifest fields (``sku``, ``variant``, prompt fields) as text or None.
        parse_field: the field at fault when the row could not be read.
        parse_error: why it could not be read; the row becomes a reject.
        skip: why the row is not a manifest row at all (a catalog export's image-only row, a
            product filtered out by status). A skipped row is neither work nor a reject: it is
            not counted in the manifest's rows (``ManifestInfo.skipped`` counts it by reason).
    """

    row: int
    fields: dict[str, str | None]
    parse_field: str = ""
    parse_error: str = ""
    skip: str = ""
