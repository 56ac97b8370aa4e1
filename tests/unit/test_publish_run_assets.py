"""What every publish format shares: only committed runs publish; a refresh's rows it did not
render get their figures and URLs; files are create-only (the same content is reported, other
content stops the publish before it writes); a changed catalog is refused; URLs from a
template, presigned S3 or the files' URIs."""

from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlparse

import pytest

from factory.publish.catalog import CatalogChanged
from factory.publish.links import UrlMaker
from factory.publish.publisher import PublishConflict, publish_run
from factory.publish.run_assets import PublishError, RunNotCommitted, read_run_assets
from factory.spec.publish import PublishConfig
from factory.store.s3 import S3Options
from factory.store.storage import Store
from tests.support.published_runs import SHOPIFY_LEGACY, Row, write_run

CHANNELS = ("google-shopping", "meta-square")
ALL = ("shopify-csv", "merchant-tsv", "assets-parquet")


def _rows(**kw) -> list[Row]:
    return [Row(row, sku, channel=c, **kw) for row, sku in ((1, "TOTE-NAVY"), (2, "TOTE-SAND"))
            for c in CHANNELS]


def test_only_a_committed_run_publishes(tmp_path):
    with pytest.raises(RunNotCommitted, match="run nope is not committed"):
        publish_run(Store(str(tmp_path)), "nope", PublishConfig(formats=("assets-parquet",)))


def test_a_refresh_publishes_the_rows_it_found_in_the_store(tmp_path):
    store = Store(str(tmp_path))
    write_run(tmp_path, "first", _rows(), channels=CHANNELS, catalog=SHOPIFY_LEGACY,
              committed_at="2026-05-01T00:00:00+00:00")
    # the refresh rendered TOTE-NAVY's google asset anew and found the rest in the store:
    # ok, not written, no sha256 (and one asset no earlier lineage knows either)
    refresh = [Row(1, "TOTE-NAVY", channel="google-shopping"),
               Row(1, "TOTE-NAVY", channel="meta-square", written=False, known=False),
               Row(2, "TOTE-SAND", channel="google-shopping", written=False, known=False),
               Row(2, "TOTE-SAND", channel="meta-square", written=False, known=False),
               Row(4, "SHIRT-S-WHT", channel="google-shopping", written=False, known=False)]
    write_run(tmp_path, "refresh", refresh, channels=CHANNELS, catalog=SHOPIFY_LEGACY,
              committed_at="2026-05-02T00:00:00+00:00")
    assets = read_run_assets(store, "refresh")
    assert [(a.sku, a.channel) for a in assets.assets] == [
        (r.sku, r.channel) for r in refresh]
    for a in assets.assets:
        data = (tmp_path / a.key).read_bytes()
        assert a.bytes == len(data) and a.sha256 is not None and len(a.sha256) == 64
    found = {(a.sku, a.channel): a for a in assets.assets}
    assert found[("TOTE-SAND", "meta-square")].width == 24  # from the first run's lineage
    assert found[("SHIRT-S-WHT", "google-shopping")].width is None  # from the store alone
    result = publish_run(store, "refresh", PublishConfig(formats=("shopify-csv",),
                                                         base_url="https://c.example/{key}"))
    csv_text = (tmp_path / "runs" / "refresh" / "publish" / "shopify.csv").read_text()
    assert result.files[0].written and all(a.key in csv_text for a in assets.assets)


def test_an_asset_missing_from_the_store_is_named(tmp_path):
    write_run(tmp_path, "r", [Row(1, "TOTE-NAVY", written=False, known=False, stored=False)],
              catalog=SHOPIFY_LEGACY)
    with pytest.raises(PublishError, match="asset of SKU 'TOTE-NAVY'.*is not in the store"):
        read_run_assets(Store(str(tmp_path)), "r")


def test_publishing_again_reports_the_same_files_and_refuses_other_content(tmp_path):
    store = Store(str(tmp_path))
    write_run(tmp_path, "r", _rows(), channels=CHANNELS, catalog=SHOPIFY_LEGACY)
    config = PublishConfig(formats=ALL, base_url="https://cdn.example.com/{key}")
    first = publish_run(store, "r", config)
    assert [f.written for f in first.files] == [True, True, True]
    before = {p: open(p, "rb").read() for p in first.paths}
    again = publish_run(store, "r", config)
    assert again.paths == first.paths and not any(f.written for f in again.files)
    (tmp_path / "runs" / "r" / "publish" / "merchant.tsv").unlink()  # one file to write again
    other = PublishConfig(formats=ALL, base_url="https://other.example.com/{key}")
    with pytest.raises(PublishConflict, match="published before with other content"):
        publish_run(store, "r", other)
    assert not (tmp_path / "runs" / "r" / "publish" / "merchant.tsv").exists()  # nothing written
    assert all(open(p, "rb").read() == data for p, data in before.items() if "merchant" not in p)


def test_dest_puts_every_file_in_one_folder(tmp_path):
    write_run(tmp_path / "store", "r", _rows(), channels=CHANNELS, catalog=SHOPIFY_LEGACY)
    result = publish_run(Store(str(tmp_path / "store")), "r", PublishConfig(
        formats=ALL, dest=str(tmp_path / "out")))
    assert sorted(p.relative_to(tmp_path / "out").as_posix()
                  for p in (tmp_path / "out").rglob("*") if p.is_file()) == [
        "assets/run_id=r/part-0.parquet", "merchant.tsv", "shopify.csv"]
    assert any("cannot fetch" in w for w in result.warnings)  # file:// URIs in the feeds


def test_a_catalog_that_changed_since_the_run_is_refused(tmp_path):
    catalog = tmp_path / "export.csv"
    shutil.copy(SHOPIFY_LEGACY, catalog)
    write_run(tmp_path / "s", "r", _rows(), channels=CHANNELS, catalog=catalog)
    text = catalog.read_text().replace("TOTE-SAND", "TOTE-DUNE")
    catalog.write_text(text)
    with pytest.raises(CatalogChanged, match="row 2 holds SKU 'TOTE-DUNE'.*'TOTE-SAND'"):
        publish_run(Store(str(tmp_path / "s")), "r", PublishConfig(formats=("assets-parquet",)))


def test_urls_from_a_template_presigned_or_the_files_own(tmp_path, monkeypatch):
    key = "assets/A%20B/hero-1.google-shopping.jpg"  # a SKU with a space, key-encoded
    template = UrlMaker(Store("s3://b/p"), base_url="https://cdn.example.com/x/{key}")
    assert template.url(key) == "https://cdn.example.com/x/assets/A%2520B/hero-1.google-shopping.jpg"
    assert UrlMaker(Store("s3://b/p")).url(key) == f"s3://b/p/{key}"
    assert UrlMaker(Store(str(tmp_path))).url(key) == (tmp_path / key).as_uri()
    with pytest.raises(PublishError, match="presigned URLs need an s3:// store"):
        UrlMaker(Store(str(tmp_path)), presign_expiry_s=60)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPUBLISHTEST")  # signing is local: no request
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    options = S3Options(endpoint_url="http://127.0.0.1:9", region="us-east-1",
                        addressing_style="path")
    url = urlparse(UrlMaker(Store("s3://bucket/pre", options), presign_expiry_s=900).url(key))
    query = parse_qs(url.query)
    assert url.path == "/bucket/pre/assets/A%2520B/hero-1.google-shopping.jpg"
    assert query["X-Amz-Expires"] == ["900"] and "X-Amz-Signature" in query


def test_the_command_prints_the_paths_and_exits_with_the_projects_codes(tmp_path):
    from click.testing import CliRunner

    from factory.cli.exits import EXIT_MANIFEST, EXIT_NO_RUN, EXIT_OK, EXIT_SPEC
    from factory.cli.main import main

    catalog = tmp_path / "export.csv"
    shutil.copy(SHOPIFY_LEGACY, catalog)
    write_run(tmp_path / "s", "r", _rows(), channels=CHANNELS, catalog=catalog)
    store = Store(str(tmp_path / "s"))

    def publish(*args: str):
        return CliRunner().invoke(main, ["publish", *args, "--output", str(tmp_path / "s")])

    done = publish("r", "--to", "merchant-tsv", "--base-url", "https://c.example/{key}")
    assert done.exit_code == EXIT_OK, done.output
    assert store.path("runs/r/publish/merchant.tsv") in done.output
    assert publish("nope", "--to", "merchant-tsv").exit_code == EXIT_NO_RUN
    wrong = publish("r", "--to", "merchant-tsv", "--main-channel", "story")
    assert wrong.exit_code == EXIT_SPEC and "run r has no channel 'story'" in wrong.output
    assert publish("r", "--to", "csv").exit_code == EXIT_SPEC  # click's usage error
    catalog.write_text(catalog.read_text().replace("TOTE-NAVY", "TOTE-INK"))
    changed = publish("r", "--to", "assets-parquet")
    assert changed.exit_code == EXIT_MANIFEST and "catalog changed since the run" in changed.output
