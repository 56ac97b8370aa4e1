"""A committed run's assets, as a publish reads them: one ``Asset`` per ``ok`` lineage row.

The lineage (``runs/<run>/lineage.parquet``) lists every asset of the run, rendered now or not:
a refresh or resume records the rows it found already in the store as ``ok`` with
``written = false`` and their key, so a refresh's publish covers the whole catalog, unchanged
SKUs pointing at their existing assets. Those rows carry no ``sha256`` (and, in a channel run,
no ``bytes`` or frame size but the marker's): they are filled from the job's earlier committed
lineages that wrote the same keys, and what is still missing from the stored object itself
(its ``factory-sha256`` metadata, or its bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from factory.core.status import STATUS_OK
from factory.publish.catalog import CatalogRef, catalog_fields
from factory.sink.assets import stored_digest
from factory.store.run_tables import is_committed, list_runs, read_lineage
from factory.store.storage import Store

#: Lineage columns a published asset carries where the run has them: the product's fidelity
#: and the QA gate's verdict (``factory.spec.qa``).
QA_FIGURES = ("qa", "qa_attempts", "qa_reason")
FIDELITY_PREFIX = "fidelity_"


class PublishError(ValueError):
    """A run that cannot be published as asked; the message names the run, file or key."""


class RunNotCommitted(PublishError):
    """No committed run of that id in the store."""


@dataclass(frozen=True)
class Asset:
    """One asset of a run.

    Attributes:
        row: the catalog row it was rendered from (numbered as the readers number rows).
        sku, variant: the unit of work.
        channel: its channel ("" in a run without channels).
        key: its key in the store.
        sha256, bytes, width, height: what the store holds (None where unknown).
        prompt: the prompt it was rendered from.
        figures: fidelity and QA columns of its lineage row.
        fields: its catalog row's fields (empty where the run recorded no catalog).
    """

    row: int
    sku: str
    variant: str
    channel: str
    key: str
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    prompt: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RunAssets:
    """A committed run's assets, by catalog row, then channel in the run's order.

    Attributes:
        run_id: the run.
        job: the job's name (from the summary).
        channels: the run's channels, in spec order (empty: one asset per row).
        assets: its ``ok`` assets.
        figures: the fidelity and QA columns the lineage has, with their Arrow types.
        catalog: the catalog the run read, where its summary records it.
    """

    run_id: str
    job: str
    channels: tuple[str, ...]
    assets: tuple[Asset, ...]
    figures: tuple[pa.Field, ...] = ()
    catalog: CatalogRef | None = None


def read_run_assets(store: Store, run_id: str) -> RunAssets:
    """The ``ok`` assets of a committed run, their figures filled where the run found them in
    the store, each joined to its catalog row where the run recorded its catalog.

    Raises:
        RunNotCommitted: no committed run of that id.
        PublishError: the run has no assets, or one of its keys is not in the store.
        factory.publish.catalog.CatalogChanged: the catalog's rows hold other SKUs now.
        factory.store.s3.StorageError: the store failed.
    """
    if not is_committed(store, run_id):
        raise RunNotCommitted(f"run {run_id} is not committed in {store.uri} (unknown, still "
                              "running, or stopped before its commit): only committed runs "
                              "publish")
    table, summary = read_lineage(store, run_id)
    table = table.filter(pc.and_(pc.equal(table["status"], STATUS_OK),
                                 pc.not_equal(pc.fill_null(table["output_key"], ""), "")))
    channels = tuple(summary.get("channels") or ())
    figures = tuple(f for f in table.schema
                    if f.name.startswith(FIDELITY_PREFIX) or f.name in QA_FIGURES)
    order = {name: i for i, name in enumerate(channels)}
    assets = []
    for r in table.to_pylist():
        channel = r.get("channel") or ""
        assets.append(Asset(
            row=r["row"], sku=r["sku"], variant=r["variant"], channel=channel,
            key=r["output_key"], sha256=r.get("sha256") or None,
            bytes=r.get("bytes") or None, width=r.get("width"), height=r.get("height"),
            prompt=r.get("prompt") or "", figures={f.name: r[f.name] for f in figures}))
    assets.sort(key=lambda a: (a.row, order.get(a.channel, len(order))))
    if not assets:
        raise PublishError(f"run {run_id} in {store.uri} has no assets to publish (every row "
                           "failed, was rejected or was deferred)")
    assets = _fill_figures(store, run_id, str(summary.get("job") or ""), assets)
    catalog = CatalogRef.from_summary(summary)
    if catalog is not None:
        fields = catalog_fields(catalog, {a.row: a.sku for a in assets}, store.s3)
        assets = [replace(a, fields=fields.get(a.row, {})) for a in assets]
    return RunAssets(run_id=run_id, job=str(summary.get("job") or ""), channels=channels,
                     assets=tuple(assets), figures=figures, catalog=catalog)


def _fill_figures(store: Store, run_id: str, job: str, assets: list[Asset]) -> list[Asset]:
    """Assets the run found in the store (no ``sha256`` in its lineage) get the figures of the
    earlier committed run of the job that wrote them; failing that, the stored object's."""
    missing = {a.key for a in assets if a.sha256 is None}
    if not missing:
        return assets
    known = _written_before(store, run_id, job, missing)
    out = []
    for a in assets:
        if a.sha256 is None and a.key in known:
            sha, size, width, height = known[a.key]
            a = replace(a, sha256=sha, bytes=size, width=a.width or width,
                        height=a.height or height)
        elif a.sha256 is None:
            try:
                sha, size = stored_digest(store, a.key)
            except FileNotFoundError:
                raise PublishError(f"run {run_id}: the asset of SKU '{a.sku}' "
                                   f"({store.path(a.key)}) is not in the store") from None
            a = replace(a, sha256=sha, bytes=size)
        out.append(a)
    return out


def _written_before(store: Store, run_id: str, job: str, keys: set[str]
                    ) -> dict[str, tuple[str, int, int | None, int | None]]:
    """``key -> (sha256, bytes, width, height)`` from the job's other committed runs, the
    newest first, where their lineage knows those keys' stored bytes."""
    runs = sorted(((s.get("committed_at", ""), rid) for rid, s in list_runs(store)
                   if s.get("job") == job and rid != run_id), reverse=True)
    found: dict[str, tuple[str, int, int | None, int | None]] = {}
    for _, rid in runs:
        table, _ = read_lineage(store, rid)
        names = table.column_names
        for r in table.to_pylist():
            key = r.get("output_key")
            if key in keys and key not in found and r.get("sha256"):
                found[key] = (r["sha256"], r["bytes"], r.get("width") if "width" in names
                              else None, r.get("height") if "height" in names else None)
        if len(found) == len(keys):
            break
    return found
