"""Each asset's URL and alt text, and the order a SKU's images are listed in.

URLs, by ``PublishConfig``:

* ``base_url``: the template with ``{key}`` replaced by the asset's key, path-encoded (a key
  holds ``%`` where its SKU was percent-encoded: it becomes ``%25``, as the object's name is
  spelled in a URL path);
* ``presign_expiry_s``: a presigned S3 GET (boto3's ``generate_presigned_url``, on the store's
  own client, ``factory.store.s3``), valid for that many seconds;
* neither: the asset's ``s3://bucket/prefix/key`` URI, or its ``file://`` URI.

Alt text is the ``alt_text`` template rendered in the prompts' sandbox
(``factory.spec.templating.render``) over the asset's catalog row and its own fields
(``ALT_TEXT_FIELDS``); without a template, the catalog's ``title``. A row the template cannot
render (a field it reads is missing or empty there) gets no alt text, and the publish says how
many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from factory.publish.run_assets import Asset, PublishError, RunAssets
from factory.spec.publish import PublishConfig
from factory.spec.templating import TemplateError, render
from factory.store import s3
from factory.store.storage import Store


@dataclass(frozen=True)
class Linked:
    """An asset with its URL and alt text."""

    asset: Asset
    url: str
    alt: str


@dataclass(frozen=True)
class SkuImages:
    """One SKU's images: the main one first, then the rest in a stable order."""

    sku: str
    images: tuple[Linked, ...]


@dataclass(frozen=True)
class UrlMaker:
    """Makes asset URLs for one store.

    Attributes:
        store: the store the assets are in.
        base_url: a template with ``{key}``, or None.
        presign_expiry_s: seconds a presigned URL stays valid, or None.
    """

    store: Store
    base_url: str | None = None
    presign_expiry_s: int | None = None

    def __post_init__(self) -> None:
        if self.presign_expiry_s is not None and not self.store.is_s3:
            raise PublishError(f"presigned URLs need an s3:// store; {self.store.uri} is a "
                               "local directory: give a base URL instead")

    def url(self, key: str) -> str:
        """The URL of the asset at ``key``."""
        if self.base_url is not None:
            return self.base_url.replace("{key}", quote(key, safe="/"))
        if self.presign_expiry_s is not None:
            bucket, prefix = s3.split_uri(self.store.uri)
            name = f"{prefix}/{key}" if prefix else key
            return s3.client(self.store.s3).generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": name},
                ExpiresIn=self.presign_expiry_s)
        if self.store.is_s3:
            return self.store.path(key)
        return Path(self.store.path(key)).as_uri()


def alt_text(template: str, asset: Asset, run_id: str) -> str:
    """``asset``'s alt text: ``template`` over its fields, or its catalog title; raises
    ``TemplateError`` when a field the template reads is missing or empty for it."""
    fields = {**asset.fields, "sku": asset.sku, "variant": asset.variant,
              "channel": asset.channel, "run_id": run_id, "prompt": asset.prompt}
    if not template:
        return fields.get("title") or ""
    return render(template, fields, name="alt_text")


def link(assets: RunAssets, config: PublishConfig, store: Store
         ) -> tuple[list[Linked], list[str]]:
    """Every asset with its URL and alt text, and warnings (rows left without alt text)."""
    urls = UrlMaker(store, config.base_url, config.presign_expiry_s)
    linked, failed = [], []
    for asset in assets.assets:
        try:
            alt = alt_text(config.alt_text, asset, assets.run_id)
        except TemplateError as exc:
            alt = ""
            failed.append(f"{asset.sku}: {exc}")
        linked.append(Linked(asset=asset, url=urls.url(asset.key), alt=alt))
    warnings = []
    if failed:
        warnings.append(f"{len(failed)} assets have no alt text: the template could not be "
                        f"rendered for them (first: {failed[0]})")
    return linked, warnings


def sku_images(linked: Sequence[Linked], main: str | None) -> list[SkuImages]:
    """Each SKU's images, SKUs in catalog order: the ``main`` channel's assets first (by row),
    then the other channels' (by row, channels in the run's order). The first is the SKU's
    main image (Merchant Center's ``image_link``, the Shopify variant image)."""
    by_sku: dict[str, list[tuple[int, Linked]]] = {}
    for i, item in enumerate(linked):  # ``linked`` is in row, then channel, order
        by_sku.setdefault(item.asset.sku, []).append((i, item))
    out = []
    for sku, items in by_sku.items():
        items.sort(key=lambda pair: (pair[1].asset.channel != main if main else False, pair[0]))
        out.append(SkuImages(sku=sku, images=tuple(item for _, item in items)))
    return out
