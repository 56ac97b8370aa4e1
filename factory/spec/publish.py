"""``publish:``: write a committed run back out in its catalog's own formats.

``publish:`` in a job spec (checked before Ray starts; ``resolve_publish``)::

    publish:
      formats: [shopify-csv, merchant-tsv, assets-parquet]
      base_url: "https://cdn.example.com/{key}"   # or presign_expiry: 86400; or neither
      alt_text: "{{ title }}, {{ channel }}"      # jinja2 over the row's fields, sandboxed
      main_channel: google-shopping               # image_link and the Shopify variant image

Right after a run commits, ``factory.run.pipeline.run_job`` hands the frozen
``PublishConfig`` to ``factory.publish.publisher.publish_run``; ``factory publish`` builds
the same config from its options. Publishing settings do not change what a run renders, so
they are not part of the spec's hash (the derived run id).

URLs come from ``base_url`` (``{key}`` is the asset's key in the store, path-encoded), from
presigned S3 GETs that expire after ``presign_expiry`` seconds, or, with neither, are the
assets' own ``s3://`` or ``file://`` URIs. Alt text is rendered by the prompts' sandbox
(``factory.spec.templating``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field

from factory.core.strict import Strict
from factory.spec.templating import TemplateError, template_fields

#: Every format ``publish`` writes, in the order they are written.
PUBLISH_FORMATS = ("shopify-csv", "merchant-tsv", "merchant-xml", "assets-parquet")
#: Formats that link images for Merchant Center, which requires AI-generated images to carry
#: the IPTC ``trainedAlgorithmicMedia`` digital source type in the file.
MERCHANT_FORMATS = ("merchant-tsv", "merchant-xml")
#: Formats another system fetches the images of (over HTTP).
FETCHED_FORMATS = ("shopify-csv", *MERCHANT_FORMATS)
#: A SigV4 presigned URL lasts at most seven days.
MAX_PRESIGN_S = 7 * 24 * 3600
#: The channel whose asset is each SKU's main image, when the job lists it.
GOOGLE_CHANNEL = "google-shopping"
#: The asset's own fields an alt-text template reads, beside the catalog row's fields.
ALT_TEXT_FIELDS = ("sku", "variant", "channel", "run_id", "prompt")
#: Manifest formats whose rows a Shopify product CSV can be written back for.
SHOPIFY_SOURCES = ("shopify", "csv")

Format = Literal["shopify-csv", "merchant-tsv", "merchant-xml", "assets-parquet"]


class PublishSpec(Strict):
    """``publish:`` as written.

    Attributes:
        formats: what to write, at least one.
        base_url: a URL template with ``{key}``; the assets' public address.
        presign_expiry: seconds a presigned S3 GET URL stays valid (1 to 7 days' worth).
        alt_text: a jinja2 template over the row's fields; None: the catalog's title.
        main_channel: the channel whose asset is each SKU's main image.
    """

    formats: list[Format] = Field(min_length=1)
    base_url: str | None = Field(None, min_length=1)
    presign_expiry: int | None = Field(None, ge=1, le=MAX_PRESIGN_S)
    alt_text: str | None = Field(None, min_length=1)
    main_channel: str | None = None


@dataclass(frozen=True)
class PublishConfig:
    """A checked ``publish:`` (or ``factory publish``'s options), frozen.

    Attributes:
        formats: formats to write, in ``PUBLISH_FORMATS`` order, each once.
        base_url: the URL template, or None.
        presign_expiry_s: presigned URLs' lifetime, or None.
        alt_text: the alt-text template; "" takes the catalog's title.
        main_channel: the main image's channel; None: ``google-shopping`` where the run has
            it, else its first channel.
        dest: where the files go instead of the run's ``runs/<run>/publish/`` (and the
            store's ``publish/assets/`` dataset): a directory or ``s3://`` prefix.
    """

    formats: tuple[str, ...]
    base_url: str | None = None
    presign_expiry_s: int | None = None
    alt_text: str = ""
    main_channel: str | None = None
    dest: str | None = None

    def describe(self) -> list[str]:
        """Lines for ``factory validate``."""
        if self.base_url is not None:
            urls = f"URLs {self.base_url}"
        elif self.presign_expiry_s is not None:
            urls = f"presigned URLs valid {self.presign_expiry_s} s"
        else:
            urls = "the assets' s3:// or file:// URIs"
        return [f"publish after each commit: {', '.join(self.formats)}; {urls}"]


def check_base_url(base_url: str) -> str:
    """Why ``base_url`` cannot be a URL template ("" when it can)."""
    parsed = urlparse(base_url.replace("{key}", "k"))
    if base_url.count("{key}") != 1:
        return "must hold '{key}' exactly once (where the asset's key goes)"
    if re.search(r"[{}]", base_url.replace("{key}", "")):
        return "holds braces other than '{key}'"
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return "must be an http:// or https:// URL"
    if not base_url.isascii() or any(ch.isspace() for ch in base_url):
        return "must be ASCII without spaces"
    return ""


def resolve_publish(spec: PublishSpec, *, channels: tuple[str, ...], manifest_format: str,
                    problems: list[str], warnings: list[str],
                    where: str = "publish") -> PublishConfig:
    """Check ``publish:`` against the job (its channels, its catalog's format) and freeze it.

    Args:
        spec: the parsed mapping.
        channels: the job's channel names, in spec order (empty: one asset per row).
        manifest_format: the job's manifest format.
        problems: ``publish.<key>: message`` lines are appended here.
        warnings: lines for ``factory validate`` and the run's start.
        where: the key path problems name.
    """
    formats = tuple(f for f in PUBLISH_FORMATS if f in spec.formats)
    for f in dict.fromkeys(spec.formats):
        if spec.formats.count(f) > 1:
            problems.append(f"{where}.formats: '{f}' is listed twice")
    if spec.base_url is not None and spec.presign_expiry is not None:
        problems.append(f"{where}: give base_url or presign_expiry, not both")
    if spec.base_url is not None and (why := check_base_url(spec.base_url)):
        problems.append(f"{where}.base_url: {why}")
    if spec.alt_text is not None:
        try:
            template_fields(spec.alt_text)
        except TemplateError as exc:
            problems.append(f"{where}.alt_text: {exc}")
    if channels:
        if spec.main_channel is not None and spec.main_channel not in channels:
            problems.append(f"{where}.main_channel: '{spec.main_channel}' is not one of the "
                            f"job's channels ({', '.join(channels)})")
    elif spec.main_channel is not None:
        problems.append(f"{where}.main_channel: the job lists no channels (one asset per row)")
    for f in formats:
        if f in MERCHANT_FORMATS and not channels:
            problems.append(
                f"{where}.formats: {f} links AI-generated images, which Merchant Center "
                "requires to carry the IPTC digital source type trainedAlgorithmicMedia in "
                "the file; only channel assets carry it: list channels (google-shopping)")
        if f == "shopify-csv" and manifest_format not in SHOPIFY_SOURCES:
            problems.append(f"{where}.formats: shopify-csv writes images back to a Shopify "
                            f"product export; this job reads a {manifest_format} catalog")
    if spec.base_url is None and spec.presign_expiry is None and any(
            f in FETCHED_FORMATS for f in formats):
        warnings.append(f"{where}: without base_url or presign_expiry the feeds link the "
                        "assets' s3:// or file:// URIs, which Shopify and Merchant Center "
                        "cannot fetch")
    return PublishConfig(formats=formats, base_url=spec.base_url,
                         presign_expiry_s=spec.presign_expiry, alt_text=spec.alt_text or "",
                         main_channel=spec.main_channel)


def main_channel(config: PublishConfig, channels: tuple[str, ...]) -> str | None:
    """The channel of each SKU's main image: the configured one, ``google-shopping`` where
    listed, else the first; None for a run without channels."""
    if not channels:
        return None
    if config.main_channel is not None:
        return config.main_channel
    return GOOGLE_CHANNEL if GOOGLE_CHANNEL in channels else channels[0]
