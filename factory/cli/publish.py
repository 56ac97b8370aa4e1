"""``factory publish``: a committed run written back out in its catalog's own formats."""

from __future__ import annotations

import sys

import click

from factory.cli.common import echo
from factory.cli.exits import EXIT_MANIFEST, EXIT_NO_RUN, EXIT_OK, EXIT_RUN, EXIT_SPEC
from factory.spec.publish import MAX_PRESIGN_S, PUBLISH_FORMATS


@click.command()
@click.argument("run_id")
@click.option("--output", "output_uri", required=True,
              help="The run's output store (a directory or s3://...).")
@click.option("--to", "formats", multiple=True, required=True,
              type=click.Choice(PUBLISH_FORMATS),
              help="A format to write; give --to again for more.")
@click.option("--base-url", help="The assets' URL template, with {key} where the asset's key "
                                 "goes (https://cdn.example.com/{key}).")
@click.option("--presign-expiry", "presign_expiry", metavar="SECONDS",
              type=click.IntRange(1, MAX_PRESIGN_S),
              help="Link presigned S3 GET URLs valid for this many seconds (an s3:// store).")
@click.option("--dest", help="Write the files here (a directory or s3:// prefix) instead of "
                             "the run's runs/RUN/publish/ and the store's publish/assets/.")
@click.option("--alt-text", "alt_text", metavar="TEMPLATE",
              help="Alt text: a jinja2 template over the row's fields (default: the "
                   "catalog's title).")
@click.option("--main-channel", help="The channel of each SKU's main image (default: "
                                     "google-shopping where the run has it, else its first).")
def publish(run_id: str, output_uri: str, formats: tuple[str, ...], base_url: str | None,
            presign_expiry: int | None, dest: str | None, alt_text: str | None,
            main_channel: str | None) -> None:
    """Publish the committed run RUN_ID: a Shopify product CSV, Merchant Center supplemental
    feeds, a Parquet dataset of its assets.

    Files are written create-only and their paths printed. Publishing the same run again
    reports files already there with the same content and stops, writing nothing, if any is
    there with other content (exit 2). Exit codes: 5 no such committed run, 3 the catalog
    cannot be read or changed since the run, 4 the store failed.
    """
    from pydantic import ValidationError

    from factory.catalog.records import ManifestError
    from factory.publish.publisher import publish_run
    from factory.publish.run_assets import PublishError, RunNotCommitted
    from factory.spec.publish import PublishConfig, PublishSpec, check_base_url
    from factory.spec.templating import TemplateError, template_fields
    from factory.store.s3 import S3Options, StorageError
    from factory.store.storage import Store

    try:
        spec = PublishSpec(formats=list(formats), base_url=base_url,
                           presign_expiry=presign_expiry, alt_text=alt_text,
                           main_channel=main_channel)
    except ValidationError as exc:
        raise click.UsageError(str(exc).splitlines()[-1]) from None
    if base_url is not None and presign_expiry is not None:
        raise click.UsageError("give --base-url or --presign-expiry, not both")
    if base_url is not None and (why := check_base_url(base_url)):
        raise click.UsageError(f"--base-url {why}")
    try:
        template_fields(alt_text or "")
    except TemplateError as exc:
        raise click.UsageError(f"--alt-text: {exc}") from None
    config = PublishConfig(formats=tuple(f for f in PUBLISH_FORMATS if f in spec.formats),
                           base_url=base_url, presign_expiry_s=presign_expiry,
                           alt_text=alt_text or "", main_channel=main_channel, dest=dest)
    store = Store(output_uri, S3Options.from_settings())
    try:
        result = publish_run(store, run_id, config)
    except RunNotCommitted as exc:
        echo(f"error: {exc}", err=True)
        sys.exit(EXIT_NO_RUN)
    except PublishError as exc:
        echo(f"error: {exc}", err=True)
        sys.exit(EXIT_SPEC)
    except ManifestError as exc:
        echo(f"error: run {run_id}: {exc}", err=True)
        sys.exit(EXIT_MANIFEST)
    except StorageError as exc:
        echo(f"error: run {run_id} was not published: {exc}", err=True)
        sys.exit(EXIT_RUN)
    for line in result.warnings:
        echo(f"warning: {line}", err=True)
    for file in result.files:
        note = "" if file.written else "  (published before, the same content)"
        echo(f"{file.format:15} {file.path}{note}")
    sys.exit(EXIT_OK)
