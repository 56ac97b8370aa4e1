"""Publishing a committed run: its assets read, linked, and written out in each format.

``publish_run`` reads the run's assets (``factory.publish.run_assets``; only a committed run
publishes), gives each its URL and alt text (``factory.publish.links``), writes every format
asked for (``WRITERS``) and puts the files create-only (``Store.put_if_absent``):

* feeds under the run's folder, ``runs/<run>/publish/`` (``shopify.csv``, ``merchant.tsv``,
  ``merchant.xml``);
* the Parquet dataset's partition under the store's ``publish/assets/run_id=<run>/``;
* or all of them under ``PublishConfig.dest`` (``assets/run_id=<run>/`` for the dataset).

Nothing is overwritten. A file already there with the same bytes is reported as published
before; with other bytes (other options, or presigned URLs, which are signed anew each time)
the publish stops before writing anything and names the files (``PublishConflict``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from factory.core.provenance import carries_source_type
from factory.publish import assets_parquet, merchant_tsv, merchant_xml, shopify_csv
from factory.publish.catalog import read_shopify_export
from factory.publish.links import Linked, SkuImages, link, sku_images
from factory.publish.run_assets import PublishError, RunAssets, read_run_assets
from factory.spec.publish import (
    FETCHED_FORMATS, MERCHANT_FORMATS, SHOPIFY_SOURCES, PublishConfig, main_channel,
)
from factory.store.storage import Store

log = logging.getLogger(__name__)

CONTENT_TYPES = {"shopify-csv": "text/csv; charset=utf-8",
                 "merchant-tsv": "text/tab-separated-values; charset=utf-8",
                 "merchant-xml": "application/xml; charset=utf-8",
                 "assets-parquet": "application/vnd.apache.parquet"}


class PublishConflict(PublishError):
    """A file of this publish exists with other content; nothing was written."""


@dataclass(frozen=True)
class PublishedFile:
    """One file of a publish: its format, where it is, and whether this call wrote it."""

    format: str
    path: str
    written: bool


@dataclass(frozen=True)
class PublishResult:
    """What a publish wrote (or found written before), and its warnings."""

    run_id: str
    files: tuple[PublishedFile, ...]
    warnings: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files)


@dataclass(frozen=True)
class _Inputs:
    """What every writer may read: the run, its linked assets, each SKU's images."""

    store: Store
    assets: RunAssets
    linked: tuple[Linked, ...]
    skus: tuple[SkuImages, ...]


def _shopify(inputs: _Inputs) -> list[tuple[str, bytes]]:
    catalog = inputs.assets.catalog
    run = inputs.assets.run_id
    if catalog is None:
        raise PublishError(f"run {run} records no catalog (it was committed before runs "
                           "recorded theirs): shopify-csv needs the Shopify export it read")
    if catalog.format not in SHOPIFY_SOURCES:
        raise PublishError(f"run {run} read a {catalog.format} catalog ({catalog.uri}): "
                           "shopify-csv writes images back to a Shopify product export")
    export = read_shopify_export(catalog, {a.row for a in inputs.assets.assets},
                                 inputs.store.s3)
    return [(shopify_csv.NAME, shopify_csv.write(inputs.skus, export))]


def _merchant_tsv(inputs: _Inputs) -> list[tuple[str, bytes]]:
    return [(merchant_tsv.NAME, merchant_tsv.write(merchant_tsv.merchant_items(inputs.skus)))]


def _merchant_xml(inputs: _Inputs) -> list[tuple[str, bytes]]:
    items = merchant_tsv.merchant_items(inputs.skus)
    title = f"{inputs.assets.job or 'factory'} run {inputs.assets.run_id}"
    return [(merchant_xml.NAME, merchant_xml.write(items, title=title))]


def _parquet(inputs: _Inputs) -> list[tuple[str, bytes]]:
    return assets_parquet.write(inputs.linked, inputs.assets)


#: Each format's writer: ``(path under the publish root, bytes)`` pairs.
WRITERS: dict[str, Callable[[_Inputs], list[tuple[str, bytes]]]] = {
    "shopify-csv": _shopify, "merchant-tsv": _merchant_tsv, "merchant-xml": _merchant_xml,
    "assets-parquet": _parquet,
}


def publish_run(store: Store, run_id: str, config: PublishConfig) -> PublishResult:
    """Publish the committed run ``run_id`` of ``store`` in ``config``'s formats.

    Raises:
        factory.publish.run_assets.RunNotCommitted: no committed run of that id.
        PublishConflict: a file exists with other content; nothing was written.
        PublishError: the run cannot be published as asked (no channels for a Merchant feed,
            not a Shopify catalog, a main channel the run does not have…).
        factory.catalog.records.ManifestError: the catalog cannot be read, or changed since
            the run (``factory.publish.catalog.CatalogChanged``).
        factory.store.s3.StorageError: the store failed.
    """
    unknown = [f for f in config.formats if f not in WRITERS]
    if unknown or not config.formats:
        raise PublishError(f"unknown publish format(s): {', '.join(unknown) or 'none given'} "
                           f"(formats: {', '.join(WRITERS)})")
    assets = read_run_assets(store, run_id)
    main = main_channel(config, assets.channels)
    if config.main_channel is not None and config.main_channel not in assets.channels:
        raise PublishError(f"run {run_id} has no channel '{config.main_channel}' (its "
                           f"channels: {', '.join(assets.channels) or 'none'})")
    if any(f in MERCHANT_FORMATS for f in config.formats):
        _check_generated_metadata(store, assets)
    linked, warnings = link(assets, config, store)
    if config.base_url is None and config.presign_expiry_s is None and any(
            f in FETCHED_FORMATS for f in config.formats):
        warnings.append("without a base URL or presigned URLs the feeds link the assets' "
                        "s3:// or file:// URIs, which Shopify and Merchant Center cannot fetch")
    inputs = _Inputs(store=store, assets=assets, linked=tuple(linked),
                     skus=tuple(sku_images(linked, main)))
    if any(f in MERCHANT_FORMATS for f in config.formats):
        dropped = sum(i.dropped for i in merchant_tsv.merchant_items(inputs.skus))
        if dropped:
            warnings.append(f"{dropped} images left out of the Merchant Center feed: it takes "
                            f"{merchant_tsv.MAX_ADDITIONAL} additional images per product")
    dest = Store(config.dest, store.s3) if config.dest else store
    outputs = []
    for fmt in config.formats:
        for name, data in WRITERS[fmt](inputs):
            outputs.append((fmt, _key(fmt, name, run_id, dest_given=bool(config.dest)), data))
    files = _put_all(dest, run_id, outputs)
    for line in warnings:
        log.warning("publish of run %s: %s", run_id, line)
    return PublishResult(run_id=run_id, files=tuple(files), warnings=tuple(warnings))


def _key(fmt: str, name: str, run_id: str, *, dest_given: bool) -> str:
    if dest_given:
        return name
    if fmt == "assets-parquet":  # one dataset for the store, a partition per run
        return f"publish/{name}"
    return f"runs/{run_id}/publish/{name}"


def _check_generated_metadata(store: Store, assets: RunAssets) -> None:
    """Merchant Center requires AI-generated images to carry the IPTC digital source type in
    the file: every channel asset does (the channel sink embeds it, ``factory.core.provenance``),
    an asset of a run without channels does not. One asset per channel is read to make sure."""
    if not assets.channels:
        raise PublishError(
            f"run {assets.run_id} has no channels: its assets carry no IPTC digital source "
            "type (trainedAlgorithmicMedia), which Merchant Center requires of AI-generated "
            "images; render the job with channels (google-shopping) to publish a Merchant feed")
    seen: set[str] = set()
    for asset in assets.assets:
        if asset.channel in seen:
            continue
        seen.add(asset.channel)
        if not carries_source_type(store.read_bytes(asset.key)):
            raise PublishError(f"run {assets.run_id}: {store.path(asset.key)} carries no "
                               "IPTC digital source type (trainedAlgorithmicMedia), which "
                               "Merchant Center requires of AI-generated images")


def _put_all(dest: Store, run_id: str, outputs: list[tuple[str, str, bytes]]
             ) -> list[PublishedFile]:
    """Put every output create-only; those already there with the same bytes are reported,
    any there with other bytes stop the publish before it writes anything."""
    files, pending, conflicts = [], [], []
    for fmt, key, data in outputs:
        if dest.head(key) is None:
            pending.append((fmt, key, data))
        elif _same(dest, key, data):
            files.append(PublishedFile(fmt, dest.path(key), written=False))
        else:
            conflicts.append(dest.path(key))
    if conflicts:
        raise PublishConflict(_conflict(run_id, conflicts))
    if pending and dest.is_s3 and dest.write_mode == "auto":
        dest = dest.preflight(run_id)  # settles how create-only writes are made
    for fmt, key, data in pending:
        if dest.put_if_absent(key, data, content_type=CONTENT_TYPES[fmt]):
            files.append(PublishedFile(fmt, dest.path(key), written=True))
        elif _same(dest, key, data):  # a concurrent publish of the same files won
            files.append(PublishedFile(fmt, dest.path(key), written=False))
        else:
            raise PublishConflict(_conflict(run_id, [dest.path(key)]))
    return files


def _same(store: Store, key: str, data: bytes) -> bool:
    head = store.head(key)
    return head is not None and head.size == len(data) and store.read_bytes(key) == data


def _conflict(run_id: str, paths: list[str]) -> str:
    there = "is there" if len(paths) == 1 else "are there"
    return (f"run {run_id} was published before with other content: {', '.join(paths)} "
            f"{there} already and nothing was overwritten (other options, or presigned URLs, "
            "which are signed anew each time). Publish elsewhere with --dest, or delete "
            "what is there to publish again")
