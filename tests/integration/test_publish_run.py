"""jobs/shopify-catalog.yaml end to end with its ``publish:``: the run, and then a refresh of an
edited export, publish themselves right after their commits, and what they write reads back.

The job runs as shipped (its export copied beside the test, so the refresh can edit it): 6
variants in 2 channels. The canvas tote's description then changes, so the refresh renders its
2 variants and finds the other 4 in the store; its publish still covers all 6. The Shopify CSV
reads back through the project's Shopify reader, the Merchant feed through its Merchant reader,
every URL names an asset the lineage lists, the Parquet dataset reads in pandas, DuckDB and Ray
Data, and a presigned URL of the run mirrored into a loopback S3 server GETs the asset.
"""

from __future__ import annotations

import csv
import io
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.etree import ElementTree

import pytest
import yaml
from click.testing import CliRunner

from factory.catalog.commerce_formats import CatalogOptions, read_merchant_tsv, read_shopify
from factory.cli.exits import EXIT_OK, EXIT_SPEC
from factory.cli.main import main
from factory.store.run_tables import list_runs, read_lineage
from factory.store.storage import Store
from tests.support.s3_server import credentials_env, start_s3_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOB = REPO / "jobs" / "shopify-catalog.yaml"
EXPORT = REPO / "manifests" / "shopify-products.csv"
HANDLES = {"TOTE-NAVY": "canvas-tote", "TOTE-SAND": "canvas-tote", "SHIRT-S-WHT": "linen-shirt",
           "SHIRT-M-WHT": "linen-shirt", "SHIRT-M-OLV": "linen-shirt",
           "ceramic-mug": "ceramic-mug"}


def _lineage(store: Store, run_id: str) -> dict[tuple[str, str], str]:
    """``(sku, channel) -> key`` of a run's assets."""
    table, _ = read_lineage(store, run_id)
    return {(r["sku"], r["channel"]): r["output_key"] for r in table.to_pylist()
            if r["status"] == "ok"}


def _key_of(url: str, out: Path) -> str:
    """The store key a file:// URL names (the file must exist)."""
    path = Path(unquote(urlparse(url).path))
    assert url.startswith("file://") and path.is_file(), url
    return path.relative_to(out).as_posix()


@pytest.fixture(scope="module")
def published(tmp_path_factory, local_ray, models_dir):
    """The job run, then refreshed after an edit of its export; both published themselves."""
    root = tmp_path_factory.mktemp("publish")
    export, out = root / "products.csv", root / "out"
    shutil.copy(EXPORT, export)
    spec = yaml.safe_load(JOB.read_text(encoding="utf-8"))
    spec["manifest"]["uri"] = str(export)
    job = root / "shopify-catalog.yaml"
    job.write_text(yaml.safe_dump(spec), encoding="utf-8")
    runner = CliRunner()
    first = runner.invoke(main, ["run", str(job), "--output", str(out), "--no-dashboard"],
                          catch_exceptions=False)
    assert first.exit_code == EXIT_OK, first.output
    export.write_text(export.read_text(encoding="utf-8").replace(
        "waxed-canvas tote", "waxed-canvas carryall"), encoding="utf-8")
    second = runner.invoke(main, ["refresh", str(job), "--output", str(out), "--no-dashboard"],
                           catch_exceptions=False)
    assert second.exit_code == EXIT_OK, second.output
    # (sku, channel) pairs: the tote's 2 variants in 2 channels changed, the rest did not
    assert "8 unchanged, 4 changed, 0 new" in second.output
    store = Store(str(out))
    runs = sorted(list_runs(store), key=lambda r: r[1]["committed_at"])
    assert len(runs) == 2
    return {"out": out, "store": store, "first": runs[0][0], "refresh": runs[1][0],
            "output": first.output + second.output, "job": job}


def test_each_commit_published_its_files_and_printed_their_paths(published):
    out = published["out"]
    for run in (published["first"], published["refresh"]):
        for name in ("shopify.csv", "merchant.tsv"):
            path = out / "runs" / run / "publish" / name
            assert f"publish: {path}" in published["output"]
        part = out / "publish" / "assets" / f"run_id={run}" / "part-0.parquet"
        assert f"publish: {part}" in published["output"]


def test_the_refresh_csv_puts_every_variant_on_its_own_google_image(published):
    out, store, run = published["out"], published["store"], published["refresh"]
    keys = _lineage(store, run)
    first = _lineage(store, published["first"])
    data = (out / "runs" / run / "publish" / "shopify.csv").read_bytes()
    records = list(read_shopify("shopify.csv", io.BytesIO(data), CatalogOptions()))
    variants = {r.fields["sku"]: r.fields for r in records if not r.skip}
    assert {sku: f["group"] for sku, f in variants.items()} == HANDLES
    for sku, fields in variants.items():
        assert _key_of(fields["image_url"], out) == keys[(sku, "google-shopping")]
    changed = {sku for sku in HANDLES if keys[(sku, "google-shopping")]
               != first[(sku, "google-shopping")]}
    assert changed == {"TOTE-NAVY", "TOTE-SAND"}  # the other four point at the first run's
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert list(rows[0])[:2] == ["URL handle", "Title"]  # the export's (current) header style
    assert rows[0]["Image alt text"] == "Canvas Tote by Northwind"  # the spec's alt_text
    # every image of every SKU, once, each naming an asset of the run
    assert sorted(_key_of(r["Product image URL"], out) for r in rows) == sorted(keys.values())


def test_the_merchant_feed_reads_back_keyed_by_sku(published):
    out, store, run = published["out"], published["store"], published["refresh"]
    keys = _lineage(store, run)
    data = (out / "runs" / run / "publish" / "merchant.tsv").read_bytes()
    items = {r.fields["sku"]: r.fields for r in read_merchant_tsv("m.tsv", io.BytesIO(data),
                                                                  CatalogOptions())}
    assert set(items) == set(HANDLES)
    for sku, fields in items.items():
        assert _key_of(fields["image_url"], out) == keys[(sku, "google-shopping")]
    extra = [line.split("\t")[2] for line in data.decode().splitlines()[1:]]
    assert {_key_of(url, out) for url in extra} == {keys[(sku, "meta-square")] for sku in items}


def test_the_parquet_dataset_reads_in_pandas_duckdb_and_ray_data(published, local_ray):
    import duckdb
    import pandas as pd
    import ray

    root = published["out"] / "publish" / "assets"
    frame = pd.read_parquet(root)
    assert len(frame) == 24 and set(frame["run_id"].astype(str)) == {published["first"],
                                                                     published["refresh"]}
    for row in frame.itertuples():
        path = Path(unquote(urlparse(row.url).path))
        assert path.stat().st_size == row.bytes and (row.width, row.height) in (
            (1500, 1500), (1080, 1080))
    counts = duckdb.sql(f"select run_id, count(*) from read_parquet('{root}/*/*.parquet', "
                        "hive_partitioning = true) group by run_id order by run_id").fetchall()
    assert sorted(counts) == sorted([(published["first"], 12), (published["refresh"], 12)])
    ds = ray.data.read_parquet(str(root))
    assert ds.count() == 24 and "run_id" in ds.schema().names


def test_publishing_again_reports_the_same_files_or_refuses_to_overwrite(published):
    out, run = published["out"], published["first"]
    runner = CliRunner()
    same = runner.invoke(main, ["publish", run, "--output", str(out), "--to", "shopify-csv",
                                "--alt-text", "{{ title }} by {{ brand }}"])
    assert same.exit_code == EXIT_OK, same.output
    assert "published before, the same content" in same.output
    other = runner.invoke(main, ["publish", run, "--output", str(out), "--to", "shopify-csv"])
    assert other.exit_code == EXIT_SPEC and "nothing was overwritten" in other.output
    assert str(out / "runs" / run / "publish" / "shopify.csv") in other.output


def test_a_presigned_url_gets_the_asset_from_s3(published, monkeypatch):
    out, run = published["out"], published["refresh"]
    with start_s3_server() as server:
        for key, value in credentials_env(server.endpoint_url).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("FACTORY_S3_ADDRESSING_STYLE", "path")
        client = server.client()
        client.create_bucket(Bucket="assets")
        for path in out.rglob("*"):  # the store as it is, but what was published
            relative = path.relative_to(out).as_posix()
            if path.is_file() and "publish" not in relative.split("/"):
                client.upload_file(str(path), "assets", f"shop/{relative}")
        result = CliRunner().invoke(main, ["publish", run, "--output", "s3://assets/shop",
                                           "--to", "merchant-xml", "--presign-expiry", "600"])
        assert result.exit_code == EXIT_OK, result.output
        body = client.get_object(Bucket="assets",
                                 Key=f"shop/runs/{run}/publish/merchant.xml")["Body"].read()
        ns = "{http://base.google.com/ns/1.0}"
        item = ElementTree.fromstring(body).find("channel/item")
        url = item.find(f"{ns}image_link").text
        assert "X-Amz-Expires=600" in url and "X-Amz-Signature=" in url
        key = _lineage(published["store"], run)[(item.find(f"{ns}id").text, "google-shopping")]
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            assert response.read() == (out / key).read_bytes()
