"""A committed run's report: ``runs/<run id>/report.html`` and its ``thumbs/``.

One self-contained page (its CSS and script inline, no CDN, every link relative) that opens
from a local directory or an S3 static site: the run summary, a per-stage time table, the
failures with their errors, the rejected manifest rows, and a contact sheet of the run's rows
(thumbnail, SKU, variant, status, ΔE before/after, alpha coverage, ms per stage) that filters
by status, by the stage a row failed at and by SKU.

Everything is read from the committed tables, never from a listing of ``assets/``. The lineage
is streamed by batches, so a million-row run costs a few numbers per row (the stage times)
plus the cards shown: the contact sheet holds the ``max_cards`` lowest-numbered rows and says
so. Thumbnails are made from the committed assets (an asset that was already in the store
before the run is still there). The report is written create-only, like the run's tables: it
is derived from a committed run, which never changes.

``runs/<run id>/thumbs.json`` says which thumbnail shows which asset key. A report told of an
earlier run of the same store (a refresh's: most of its assets are that run's) links the
thumbnails that run's report made or linked for the same keys, at the same size, instead of
making them again: one asset key is one object in the store, so its thumbnail is the same.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.store.run_tables import LINEAGE, REJECTS, SUMMARY_KEY
from factory.store.storage import Store

log = logging.getLogger(__name__)

REPORT = "report.html"
THUMBS = "thumbs"
#: Which thumbnail shows which asset: ``{"px": size, "thumbs": {asset key: thumbnail key}}``.
THUMB_INDEX = "thumbs.json"
TEMPLATE = Path(__file__).with_name("report_template.html")
#: Cards on the contact sheet (the lowest row numbers); a page of a million cards would not open.
MAX_CARDS = 2_000
#: Failures and rejections listed in their tables (the Parquet tables hold them all).
MAX_LISTED = 1_000
THUMB_PX = 128
_BATCH_ROWS = 16_384
#: Lineage columns a card shows (besides the per-stage ``ms_<stage>``), where the chain has them.
_CARD_COLUMNS = ("row", "sku", "variant", "status", "error", "failed_stage", "output_key",
                 "written", "delta_e_before", "delta_e_after", "alpha_coverage", "channel",
                 "qa", "qa_attempts", "qa_reason", "route", "fidelity_delta_e", "photo")


def report_key(run_id: str) -> str:
    """The report's key in the output store."""
    return f"runs/{run_id}/{REPORT}"


def thumb_key(run_id: str, row: int, channel: str = "") -> str:
    """A thumbnail's key: one per lineage row (row numbers, with the channel where the job has
    channels, are unique within a run)."""
    return f"runs/{run_id}/{_thumb_name(row, channel)}"


def _thumb_name(row: int, channel: str = "") -> str:
    return f"{THUMBS}/{row}.{channel}.webp" if channel else f"{THUMBS}/{row}.webp"


@dataclass(frozen=True)
class StageTimes:
    """One stage's line of the time table (milliseconds per asset)."""

    name: str
    model: str
    count: int
    mean: str
    p50: str
    p95: str
    max: str
    failed: int
    #: device seconds and dollars over the run's assets (the summary's ``cost``), or "–"
    gpu_s: str = "–"
    cpu_s: str = "–"
    usd: str = "–"


def write_report(store: Store, run_id: str, *, max_cards: int = MAX_CARDS,
                 thumb_px: int = THUMB_PX, threads: int = 8, earlier: str | None = None) -> str:
    """Write the report of committed run ``run_id`` and its thumbnails; return where it is.

    Args:
        store: the run's output store.
        run_id: a committed run (its ``lineage.parquet`` exists).
        max_cards: cards on the contact sheet, the lowest row numbers first.
        thumb_px: the longer side of a thumbnail.
        threads: concurrent asset reads and thumbnail writes (S3 round trips).
        earlier: an earlier committed run of this store whose report's thumbnails this one
            links where they show the same asset keys (``THUMB_INDEX``); None: makes them all.

    Returns:
        ``store.path(report_key(run_id))``: a local path or an ``s3://`` URI.

    Raises:
        FileNotFoundError: the run is not committed.
        factory.store.s3.StorageError: the store failed for good.
    """
    prefix = f"runs/{run_id}"
    with store.open_input_file(f"{prefix}/{LINEAGE}") as file:
        lineage = pq.ParquetFile(file)
        summary = json.loads((lineage.metadata.metadata or {}).get(SUMMARY_KEY, b"{}"))
        names = lineage.schema_arrow.names
        stages = [c.removesuffix("_model") for c in names if c.endswith("_model")]
        scan = _scan_lineage(lineage, stages, max_cards)
    rejects, rejects_total = _read_rejects(store, f"{prefix}/{REJECTS}")
    cards = scan.cards.to_pylist()
    known = _thumb_index(store, earlier, thumb_px) if earlier else {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        thumbs = list(pool.map(lambda c: _thumbnail(store, run_id, c, thumb_px, known),
                               cards))
    index = {"px": thumb_px, "thumbs": {c["output_key"]: key for c, key in zip(cards, thumbs)
                                        if key}}
    store.put_if_absent(f"{prefix}/{THUMB_INDEX}", json.dumps(index, sort_keys=True).encode(),
                        content_type="application/json")
    context = {
        "run_id": run_id,
        "summary": summary,
        "figures": _figures(summary, scan.rows),
        "stages": [_stage_cost(_stage_times(s, scan), summary) for s in stages],
        "failures": scan.failures, "failures_total": scan.failed,
        "rejects": rejects, "rejects_total": rejects_total,
        "cards": [_card(c, _href(prefix, t), stages) for c, t in zip(cards, thumbs)],
        "lineage_rows": scan.rows,
        "routes": sorted(summary.get("routes") or {}),  # factory.spec.routes: a filter per route
        "inputs": sorted((k, _text(v)) for k, v in (summary.get("inputs") or {}).items()),
    }
    page = render(context)
    store.put_if_absent(report_key(run_id), page.encode("utf-8"),
                        content_type="text/html; charset=utf-8")
    return store.path(report_key(run_id))


def render(context: dict[str, Any]) -> str:
    """The page for ``context`` (autoescaped: SKUs, errors and inputs are user data)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=False, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text(encoding="utf-8")).render(context)


@dataclass
class _Scan:
    """What one pass over the lineage gathers."""

    rows: int
    failed: int
    cards: pa.Table
    failures: list[dict[str, Any]]
    ms: dict[str, np.ndarray]
    failed_by_stage: dict[str, int]
    models: dict[str, str]


def _scan_lineage(lineage: pq.ParquetFile, stages: list[str], max_cards: int) -> _Scan:
    names = lineage.schema_arrow.names
    ms_columns = [f"ms_{s}" for s in stages if f"ms_{s}" in names]
    card_columns = [c for c in _CARD_COLUMNS if c in names] + ms_columns
    columns = card_columns + [f"{s}_model" for s in stages]
    rows = failed = 0
    kept: pa.Table | None = None
    failures: list[dict[str, Any]] = []
    ms: dict[str, list[np.ndarray]] = {c: [] for c in ms_columns}
    failed_by_stage: dict[str, int] = {}
    models: dict[str, str] = {}
    for batch in lineage.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        table = pa.Table.from_batches([batch])
        rows += table.num_rows
        for stage in stages:
            if stage not in models and table.num_rows:
                models[stage] = table[f"{stage}_model"][0].as_py() or ""
        for column in ms_columns:
            values = table[column].drop_null().to_numpy(zero_copy_only=False)
            ms[column].append(values.astype(np.float64))
        bad = table.filter(pc.equal(table["status"], "failed"))
        failed += bad.num_rows
        for stage, n in zip(*np.unique(bad["failed_stage"].fill_null("?").to_numpy(
                zero_copy_only=False), return_counts=True)):
            failed_by_stage[str(stage)] = failed_by_stage.get(str(stage), 0) + int(n)
        if len(failures) < MAX_LISTED and bad.num_rows:
            failures += bad.select(["row", "sku", "variant", "failed_stage", "error"]) \
                .slice(0, MAX_LISTED - len(failures)).to_pylist()
        table = table.select(card_columns)
        kept = table if kept is None else pa.concat_tables([kept, table])
        if kept.num_rows > max_cards:  # keep the lowest row numbers seen so far
            kept = kept.take(pc.select_k_unstable(kept, k=max_cards,
                                                  sort_keys=[("row", "ascending")]))
    if kept is None:
        kept = pa.schema([lineage.schema_arrow.field(c) for c in card_columns]).empty_table()
    kept = kept.sort_by([("row", "ascending")])
    failures.sort(key=lambda f: f["row"])
    return _Scan(rows=rows, failed=failed, cards=kept, failures=failures,
                 ms={c: np.concatenate(v) if v else np.empty(0) for c, v in ms.items()},
                 failed_by_stage=failed_by_stage, models=models)


def _read_rejects(store: Store, key: str) -> tuple[list[dict[str, Any]], int]:
    try:
        file = store.open_input_file(key)
    except FileNotFoundError:  # published before the lineage, so only a hand-made run lacks it
        return [], 0
    with file:
        rejects = pq.ParquetFile(file)
        listed: list[dict[str, Any]] = []
        for batch in rejects.iter_batches(batch_size=_BATCH_ROWS,
                                          columns=["row", "sku", "field", "reason"]):
            if len(listed) >= MAX_LISTED:
                break
            listed += batch.slice(0, MAX_LISTED - len(listed)).to_pylist()
        return listed, rejects.metadata.num_rows


def _stage_times(stage: str, scan: _Scan) -> StageTimes:
    values = scan.ms.get(f"ms_{stage}", np.empty(0))
    values = values[values > 0]  # a row that failed earlier, or was already in the store

    def fmt(x: float) -> str:
        return f"{x:,.1f}" if values.size else "–"

    p50, p95 = np.percentile(values, [50, 95]) if values.size else (0.0, 0.0)
    return StageTimes(name=stage, model=scan.models.get(stage, ""), count=int(values.size),
                      mean=fmt(values.mean() if values.size else 0.0), p50=fmt(p50),
                      p95=fmt(p95), max=fmt(values.max() if values.size else 0.0),
                      failed=scan.failed_by_stage.get(stage, 0))


def _stage_cost(times: StageTimes, summary: dict[str, Any]) -> StageTimes:
    cost = ((summary.get("cost") or {}).get("stages") or {}).get(times.name)
    if not cost:
        return times
    return replace(times, gpu_s=f"{cost['gpu_s']:,.2f}", cpu_s=f"{cost['cpu_s']:,.2f}",
                   usd=f"${cost['usd']:,.6f}")


def _figures(summary: dict[str, Any], lineage_rows: int) -> list[tuple[str, str]]:
    assets, written = summary.get("assets"), summary.get("written")
    figures = [("manifest rows", summary.get("manifest_rows")), ("assets", assets),
               ("written", written),
               ("already there", assets - written if isinstance(assets, int)
                and isinstance(written, int) else None),
               ("failed", summary.get("failed")), ("rejected", summary.get("rejected")),
               ("deferred", summary.get("deferred") if summary.get("budget") else None),
               ("budget", _budget(summary.get("budget"))),
               *_qa_figures(summary.get("qa")),
               ("routes", ", ".join(f"{name} {v['assets']} (${v['usd']:,.6f})" for name, v
                                    in sorted((summary.get("routes") or {}).items()))),
               ("lineage rows", lineage_rows),
               ("wall time", f"{summary['wall_s']:.1f} s" if "wall_s" in summary else None),
               ("assets/s", f"{summary['assets_per_s']:.2f}" if "assets_per_s" in summary
                else None),
               ("cost", f"${summary['cost_usd']:,.6f}" if summary.get("cost_usd") is not None
                else None),
               ("write mode", summary.get("write_mode")), ("spec hash", summary.get("spec_hash"))]
    return [(label, _text(value)) for label, value in figures if value not in (None, "")]


def _budget(budget: dict[str, Any] | None) -> str | None:
    """The run's budget line (``factory.cost.budget``), or None for a run without one."""
    from factory.cost.budget import budget_line

    return budget_line(budget) if budget else None


def _qa_figures(qa: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The QA gate's figures (``factory.spec.qa``): none for a run without one."""
    if not qa:
        return []
    return [("review (QA)", qa.get("review")),
            ("QA re-renders", f"{qa.get('retries')} (${qa.get('retry_usd', 0.0):,.6f})")]


def _card(row: dict[str, Any], thumb: str | None, stages: list[str]) -> dict[str, Any]:
    before, after = row.get("delta_e_before"), row.get("delta_e_after")
    alpha = row.get("alpha_coverage")
    fidelity = row.get("fidelity_delta_e")
    return {
        "row": row["row"], "sku": row["sku"] or "",
        "variant": "/".join(v for v in (row["variant"], row.get("channel")) if v),
        "status": row["status"] or "", "failed_stage": row.get("failed_stage") or "",
        "error": row.get("error") or "", "written": bool(row.get("written")),
        "thumb": thumb,
        "asset_href": "../../" + quote(row["output_key"]) if row.get("output_key") else "",
        "delta_e": (f"{before:.1f} → {after:.1f}" if before is not None and after is not None
                    else ""),
        "alpha": f"{alpha:.0%}" if alpha is not None else None,
        # the product's own pixels against its source photo (``stages.product``)
        "fidelity": (f"{fidelity:.2f}" if fidelity is not None and fidelity == fidelity
                     else ""),
        "ms": [(f"{s} ms", _ms(row[f"ms_{s}"])) for s in stages if row.get(f"ms_{s}")],
        # the brand QA gate (factory.spec.qa): review = written, outside it after its retries
        "qa": row.get("qa") or "", "qa_attempts": row.get("qa_attempts") or 0,
        "qa_reason": row.get("qa_reason") or "",
        "route": row.get("route") or "",  # the chain the row took (factory.spec.routes)
    }


def _thumb_index(store: Store, run_id: str, size: int) -> dict[str, str]:
    """Thumbnail keys by asset key from run ``run_id``'s report, where it made them at
    ``size``; empty where it has none (an older report, another size, an unreadable index)."""
    try:
        index = json.loads(store.read_bytes(f"runs/{run_id}/{THUMB_INDEX}"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:  # not JSON: thumbnails are made again, the report is written
        log.warning("report: the thumbnail index of run %s is unreadable: %s", run_id, exc)
        return {}
    if not isinstance(index, dict) or index.get("px") != size:
        return {}
    thumbs = index.get("thumbs")
    return {asset: key for asset, key in (thumbs.items() if isinstance(thumbs, dict) else ())
            if isinstance(asset, str) and isinstance(key, str) and _is_thumb_key(key)}


def _is_thumb_key(key: str) -> bool:
    """``runs/<run id>/thumbs/<name>.webp``: an index may point there and nowhere else."""
    parts = key.split("/")
    return (len(parts) == 4 and parts[0] == "runs" and parts[2] == THUMBS
            and parts[3].endswith(".webp") and not {"", ".", ".."} & set(parts))


def _href(prefix: str, key: str | None) -> str | None:
    """A thumbnail's link from the report at ``prefix``: its own, or an earlier run's."""
    if key is None:
        return None
    if key.startswith(prefix + "/"):
        return key[len(prefix) + 1:]
    return "../../" + quote(key)


def _thumbnail(store: Store, run_id: str, row: dict[str, Any], size: int,
               known: dict[str, str]) -> str | None:
    """One card's thumbnail key in the store: an earlier report's for the same asset
    (``known``), else one made and stored now; None without an asset."""
    from PIL import Image, UnidentifiedImageError

    if row.get("status") != "ok" or not row.get("output_key"):
        return None
    if row["output_key"] in known:
        return known[row["output_key"]]
    try:
        data = store.read_bytes(row["output_key"])
    except FileNotFoundError:  # deleted from the store since the run: the card says so
        log.warning("report %s: asset %s is missing", run_id, row["output_key"])
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((size, size))
            thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        log.warning("report %s: no thumbnail for %s: %s", run_id, row["output_key"], exc)
        return None
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=80, method=0)  # fastest: 2 vs 4 ms a thumbnail
    channel = row.get("channel") or ""
    key = thumb_key(run_id, row["row"], channel)
    store.put_if_absent(key, buffer.getvalue(), content_type="image/webp")
    return key


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def object_url(store: Store, key: str) -> str:
    """An https URL of ``key`` in an S3 store (what a static site or a public bucket serves);
    a ``file://`` URI for a local store."""
    if not store.is_s3:
        return Path(store.path(key)).as_uri()
    from factory.store import s3

    bucket, prefix = s3.split_uri(store.uri)
    name = quote(f"{prefix}/{key}" if prefix else key)
    endpoint = store.s3.endpoint_url
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{name}"
    region = store.s3.region
    host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    return f"https://{bucket}.{host}/{name}"
