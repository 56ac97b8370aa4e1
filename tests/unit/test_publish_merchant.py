"""``merchant-tsv`` and ``merchant-xml``: supplemental feeds keyed by the ids the project's own
Merchant Center readers read, the main channel as ``image_link``, the others as
``additional_image_link`` up to Merchant Center's 10, and only images that carry the IPTC
digital source type."""

from __future__ import annotations

import io
from xml.etree import ElementTree

import pytest

from factory.catalog.commerce_formats import CatalogOptions, read_merchant_tsv, read_merchant_xml
from factory.publish.merchant_tsv import MAX_ADDITIONAL
from factory.publish.merchant_xml import NAMESPACE
from factory.publish.publisher import publish_run
from factory.publish.run_assets import PublishError
from factory.spec.publish import PublishConfig
from factory.store.storage import Store
from tests.support.published_runs import MERCHANT_TSV, Row, write_run

SKUS = {1: "TEE-RED-S", 2: "TEE-RED-M", 4: "BOTTLE-1"}
CHANNELS = ("meta-square", "google-shopping", "pinterest")
BASE = "https://cdn.example.com/{key}"


def _publish(tmp_path, *, channels=CHANNELS, skus=SKUS, base_url=BASE, **config):
    rows = [Row(row, sku, channel=c) for row, sku in skus.items() for c in channels]
    write_run(tmp_path, "m1", rows, channels=channels, catalog=MERCHANT_TSV,
              catalog_format="merchant-tsv")
    store = Store(str(tmp_path))
    result = publish_run(store, "m1", PublishConfig(
        formats=("merchant-tsv", "merchant-xml"), base_url=base_url, **config))
    folder = tmp_path / "runs" / "m1" / "publish"
    return result, (folder / "merchant.tsv").read_bytes(), (folder / "merchant.xml").read_bytes()


def _url(sku: str, channel: str) -> str:
    return BASE.replace("{key}", Row(0, sku, channel=channel).key)


def test_both_feeds_read_back_with_the_projects_readers_keyed_by_sku(tmp_path):
    result, tsv, xml = _publish(tmp_path)
    assert [f.format for f in result.files] == ["merchant-tsv", "merchant-xml"]
    for reader, data in ((read_merchant_tsv, tsv), (read_merchant_xml, xml)):
        records = list(reader("feed", io.BytesIO(data), CatalogOptions()))
        assert not [r for r in records if r.parse_error]
        assert {r.fields["sku"]: r.fields["image_url"] for r in records} == {
            sku: _url(sku, "google-shopping") for sku in SKUS.values()}
    lines = tsv.decode().splitlines()
    assert lines[0].split("\t") == ["id", "image_link", "additional_image_link"]
    # the other channels, in the run's channel order, comma-separated
    assert lines[1].split("\t")[2] == ",".join(
        _url("TEE-RED-S", c) for c in ("meta-square", "pinterest"))
    items = ElementTree.fromstring(xml).findall("channel/item")
    extra = items[0].findall(f"{{{NAMESPACE}}}additional_image_link")
    assert [e.text for e in extra] == [_url("TEE-RED-S", c) for c in ("meta-square", "pinterest")]


def test_main_channel_picks_image_link(tmp_path):
    _, tsv, _ = _publish(tmp_path, main_channel="pinterest")
    records = list(read_merchant_tsv("feed", io.BytesIO(tsv), CatalogOptions()))
    assert records[0].fields["image_url"] == _url("TEE-RED-S", "pinterest")


def test_additional_images_stop_at_merchant_centers_ten(tmp_path):
    channels = tuple(f"c{i:02d}" for i in range(13))
    result, tsv, xml = _publish(tmp_path, channels=channels, skus={1: "TEE-RED-S"})
    extra = tsv.decode().splitlines()[1].split("\t")[2].split(",")
    assert len(extra) == MAX_ADDITIONAL == 10 and extra[-1] == _url("TEE-RED-S", "c10")
    item = ElementTree.fromstring(xml).find("channel/item")
    assert len(item.findall(f"{{{NAMESPACE}}}additional_image_link")) == MAX_ADDITIONAL
    assert any("2 images left out" in w for w in result.warnings)


def test_a_comma_inside_a_url_is_encoded_in_the_text_feed(tmp_path):
    _, tsv, xml = _publish(tmp_path, base_url="https://cdn.example.com/{key}?v=1,2",
                           skus={1: "TEE-RED-S"})
    extra = tsv.decode().splitlines()[1].split("\t")[2]
    assert extra.count("%2C") == 2 and len(extra.split(",")) == 2
    assert b"?v=1,2" in xml  # XML repeats the element instead


def test_a_run_without_channels_or_without_the_metadata_does_not_publish_to_merchant(tmp_path):
    write_run(tmp_path, "plain", [Row(1, "TEE-RED-S")], catalog=MERCHANT_TSV,
              catalog_format="merchant-tsv")
    store = Store(str(tmp_path))
    with pytest.raises(PublishError, match="no channels: its assets carry no IPTC"):
        publish_run(store, "plain", PublishConfig(formats=("merchant-tsv",), base_url=BASE))
    write_run(tmp_path, "bare", [Row(2, "TEE-RED-M", channel="google-shopping", xmp=False)],
              channels=("google-shopping",), catalog=MERCHANT_TSV, catalog_format="merchant-tsv")
    with pytest.raises(PublishError, match="carries no IPTC digital source type"):
        publish_run(store, "bare", PublishConfig(formats=("merchant-xml",), base_url=BASE))
    assert not list(tmp_path.glob("runs/*/publish"))
