"""Hand-built committed runs for the publish tests: a lineage table with its summary footer and
the asset files it names, in a local store, without Ray.

    assets = [Row(1, "TOTE-NAVY", channel="google-shopping"), ...]
    write_run(tmp_path, "shop", assets, channels=("google-shopping", "meta-square"),
              catalog=EXPORT)
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.provenance import ModelUse, Provenance
from factory.store.run_tables import SUMMARY_KEY

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "catalogs"
SHOPIFY_LEGACY = FIXTURES / "shopify_legacy.csv"
SHOPIFY_CURRENT = FIXTURES / "shopify_current.csv"
MERCHANT_TSV = FIXTURES / "merchant.tsv"


@dataclass
class Row:
    """One lineage row of a hand-built run (an ``ok`` asset unless ``status`` says not)."""

    row: int
    sku: str
    channel: str = ""
    variant: str = "hero"
    status: str = "ok"
    written: bool = True
    #: False: the lineage does not know the stored bytes (a row a refresh found in the store)
    known: bool = True
    #: False: no file at the key (an asset missing from the store)
    stored: bool = True
    xmp: bool = True
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        ext = f".{self.channel}.jpg" if self.channel else ".jpg"
        digest = hashlib.sha256(f"{self.sku}/{self.variant}".encode()).hexdigest()[:20]
        sku = self.sku.replace(",", "%2C")
        return f"assets/{sku}/{self.variant}-{digest}{ext}"


def jpeg(*, xmp: bool = True, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A 24x16 JPEG, with the generated-image XMP packet unless ``xmp`` is false."""
    from PIL import Image

    packet = Provenance(run_id="r", job="j", models=(ModelUse("generate", "sd-tiny", "tiny",
                                                              "1"),)).packet()
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, format="JPEG",
                                            **({"xmp": packet} if xmp else {}))
    return buffer.getvalue()


def write_run(root: Path, run_id: str, rows: list[Row], *, channels: tuple[str, ...] = (),
              catalog: Path | None = None, catalog_format: str = "shopify",
              job: str = "shop", committed_at: str = "2026-05-01T00:00:00+00:00",
              figures: dict[str, pa.DataType] | None = None) -> None:
    """A committed run ``run_id`` under the store ``root``: its assets' files and its lineage."""
    figures = figures or {}
    columns: dict[str, list] = {name: [] for name in (
        "run_id", "row", "sku", "variant", "prompt", "status", "output_key", "sha256", "bytes",
        "written", *(["channel", "width", "height"] if channels else []), *figures)}
    for i, r in enumerate(rows):
        data = jpeg(xmp=r.xmp, colour=(i * 20 % 256, 40, 90))
        if r.stored and r.status == "ok":
            path = root / r.key
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_bytes(data)
            data = path.read_bytes()
        ok = r.status == "ok"
        values = {"run_id": run_id, "row": r.row, "sku": r.sku, "variant": r.variant,
                  "prompt": f"a photo of {r.sku}", "status": r.status,
                  "output_key": r.key if ok else "",
                  "sha256": hashlib.sha256(data).hexdigest() if ok and r.known else "",
                  "bytes": len(data) if ok and r.known else 0,
                  "written": r.written and ok, "channel": r.channel,
                  "width": 24 if ok and r.known else None,
                  "height": 16 if ok and r.known else None}
        values.update({name: r.figures.get(name) for name in figures})
        for name in columns:
            columns[name].append(values[name])
    types = {"row": pa.int64(), "bytes": pa.int64(), "written": pa.bool_(),
             "width": pa.int64(), "height": pa.int64(), **figures}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in columns])
    summary = {"run_id": run_id, "job": job, "assets": sum(r.status == "ok" for r in rows),
               "committed_at": committed_at, **({"channels": list(channels)} if channels else {})}
    if catalog is not None:
        summary["catalog"] = {"uri": str(catalog), "format": catalog_format,
                              "status": ["active"], "missing_sku": "derive"}
    table = pa.table(columns, schema=schema).replace_schema_metadata(
        {SUMMARY_KEY: json.dumps(summary)})
    (root / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "runs" / run_id / "lineage.parquet")
