"""Catalog exports as exported: Shopify (both header styles) and Merchant Center (TSV, XML).

Each fixture goes through the functions the Ray pipeline runs (scan → read_split → validate_batch)
without starting Ray, with exact accounting: every export row is work, a reject or skipped, and
assets + rejects = the manifest's rows. Fixtures: tests/fixtures/catalogs/.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pyarrow as pa
import pytest

from factory.catalog.commerce_formats import (
    SKIP_IMAGE_ROW, CatalogOptions, html_to_text, is_shopify_header,
)
from factory.catalog.manifest import (
    ManifestError, Split, iter_records, plan_splits, read_split, scan,
)
from factory.run.rows import RowRules, validate_batch
from factory.spec.job import SpecError, parse_job

CATALOGS = Path(__file__).resolve().parents[1] / "fixtures" / "catalogs"
LEGACY, CURRENT = CATALOGS / "shopify_legacy.csv", CATALOGS / "shopify_current.csv"
TSV, XML = CATALOGS / "merchant.tsv", CATALOGS / "merchant.xml"
TEMPLATE = "product photo of {{ title }}"


def account(path: Path, fmt: str, catalog: CatalogOptions | None = None,
            template: str = TEMPLATE) -> tuple[object, dict[int, dict]]:
    """(scan, {row: validated row}) as the pipeline sees them; checks the accounting."""
    info = scan(str(path), fmt, default_variant="hero", catalog=catalog)
    table = pa.concat_tables(list(read_split(str(path), fmt, Split(), catalog=catalog)))
    batch = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
    out = validate_batch(batch, rules=RowRules(seed=1, variant="hero", prompt_template=template,
                                               duplicate_rejects=info.duplicate_rejects))
    rows = [dict(zip(out, values)) for values in zip(*out.values())]
    assert len(rows) == info.rows == len({r["row"] for r in rows})  # each row exactly once
    return info, {r["row"]: r for r in rows}


def by_status(rows: dict[int, dict], status: str) -> list[int]:
    return sorted(row for row, r in rows.items() if r["status"] == status)


def fields(path: Path, fmt: str, **options) -> dict[str, dict]:
    return {r.fields["sku"]: r.fields for r in iter_records(str(path), fmt,
                                                           catalog=CatalogOptions(**options))
            if r.fields.get("sku")}


# --- Shopify ---------------------------------------------------------------------------

def test_shopify_legacy_export_exact_accounting():
    info, rows = account(LEGACY, "shopify")
    # 14 export rows: 5 skipped (3 image-only, 1 draft, 1 archived) are not manifest rows.
    assert info.skipped == {SKIP_IMAGE_ROW: 3, "product status draft": 1,
                            "product status archived": 1}
    assert info.rows == 9 and info.rows + sum(info.skipped.values()) == 14
    assert by_status(rows, "ok") == [1, 2, 4, 5, 12]
    assert by_status(rows, "rejected") == [10, 11, 13, 14]
    assert [rows[r]["sku"] for r in (1, 2, 4, 5, 12)] == [
        "TOTE-NAVY", "TOTE-SAND", "SHIRT-S-WHT", "linen-shirt.m.white", "desk-lamp"]
    reasons = {r: (rows[r]["reject_field"], rows[r]["error"]) for r in (10, 11, 13, 14)}
    assert reasons[10] == ("title", ("first row of product 'Totals' has no Title: "
                                     "not a product row"))
    assert reasons[11] == ("(row)", "expected 20 fields as in the header, got 3")
    assert reasons[13] == ("handle", "no handle: not a product row")
    assert reasons[14][0] == "handle" and "other products came between" in reasons[14][1]
    assert rows[5]["prompt"] == "product photo of Linen Shirt"  # a continuation row


def test_a_csv_with_a_shopify_header_is_read_as_shopify():
    assert list(iter_records(str(LEGACY), "csv")) == list(iter_records(str(LEGACY), "shopify"))
    assert scan(str(CURRENT), "csv").sha256 == scan(str(CURRENT), "shopify").sha256
    assert is_shopify_header(["URL handle", "Title", "SKU"])
    assert not is_shopify_header(["sku", "title"])


def test_shopify_current_export_exact_accounting():
    info, rows = account(CURRENT, "csv")
    # 10 export rows: 5 skipped (2 image-only, 1 draft, an archived product and its variant)
    assert info.skipped == {SKIP_IMAGE_ROW: 2, "product status draft": 1,
                            "product status archived": 2}
    assert info.rows == 5 and info.rows + sum(info.skipped.values()) == 10
    assert not {"BELT-S", "BELT-M"} & {r["sku"] for r in rows.values()}
    kept = fields(CURRENT, "shopify", statuses=("active", "archived"))
    assert kept["BELT-M"]["size"] == "M"  # its status skipped it, not its rows
    assert by_status(rows, "ok") == [2, 6]
    assert by_status(rows, "rejected") == [1, 7, 8]
    assert rows[7]["reject_field"] == "url handle"
    # one SKU on two products: the shared duplicate rule rejects both rows
    assert "rows 1, 8 with conflicting fields" in rows[1]["error"] == rows[8]["error"]


def test_both_header_styles_fill_the_same_manifest_fields():
    legacy = fields(LEGACY, "shopify")
    current = fields(CURRENT, "shopify")
    assert set(legacy["TOTE-SAND"]) == set(current["RUN-43-BLK"])
    tote, runner = legacy["TOTE-SAND"], current["RUN-43-BLK"]
    assert tote == {"sku": "TOTE-SAND", "title": "Canvas Tote",
                    "description": "A sturdy tote & more Waxed canvas", "brand": "Acme",
                    "product_type": "Bags", "category": "Apparel & Accessories > Handbags",
                    "tags": "canvas, tote", "color": "Sand", "size": None, "material": None,
                    "pattern": None, "gender": None, "age_group": None,
                    "options": "Color: Sand", "group": "canvas-tote",
                    "image_url": "https://cdn.example.com/tote-sand.jpg"}  # the variant image
    assert (runner["title"], runner["size"], runner["color"], runner["options"]) == (
        "Trail Runner", "43", "Black", "Size: 43, Color: Black")
    assert runner["description"] == "Grippy trail shoe"
    assert runner["image_url"] == "https://cdn.example.com/run-1.jpg"  # the product's image
    shirt = legacy["SHIRT-S-WHT"]
    assert (shirt["color"], shirt["size"]) == ("White", "S")  # "Colour" fills color
    assert legacy["desk-lamp"]["options"] is None  # "Default Title" is no option


def test_a_template_over_an_option_field_rejects_variants_without_it():
    _, rows = account(LEGACY, "shopify", template="a {{ color }} {{ title }}")
    assert rows[1]["prompt"] == "a Navy Canvas Tote"
    assert rows[12]["status"] == "rejected" and rows[12]["reject_field"] == "color"


def test_missing_sku_reject_is_a_spec_choice():
    info, rows = account(LEGACY, "shopify", CatalogOptions(missing_sku="reject"))
    assert info.rows == 9 and by_status(rows, "ok") == [1, 2, 4]
    assert by_status(rows, "rejected") == [5, 10, 11, 12, 13, 14]
    assert rows[5]["reject_field"] == "sku"
    assert rows[5]["error"].startswith("variant of 'linen-shirt' (Size: M, Colour: White) has "
                                       "no SKU")
    assert "'desk-lamp' (its only variant) has no SKU" in rows[12]["error"]


def test_derived_sku_is_stable_and_does_not_collide_with_handles(tmp_path):
    text = LEGACY.read_text().replace("TOTE-SAND", "TOTE-SAND-2")  # another product edited
    (tmp_path / "edited.csv").write_text(text)
    assert "linen-shirt.m.white" in fields(tmp_path / "edited.csv", "shopify")
    assert "linen-shirt.m.white" in fields(LEGACY, "shopify")
    header = "Handle,Title,Option1 Name,Option1 Value,Variant SKU,Status\n"
    (tmp_path / "c.csv").write_text(header + "tee,Tee,Size,S/M,,active\ntee,,,★,,\n"
                                    "tee-s-m,Tee2,Title,Default Title,,active\n")
    skus = [r.fields["sku"] for r in iter_records(str(tmp_path / "c.csv"), "shopify")]
    assert skus[0] == "tee.s-m" and skus[2] == "tee-s-m"  # '.' parts the handle from values
    assert skus[1].startswith("tee.") and len(skus[1]) == len("tee.") + 8  # no letters: a hash


def test_status_filter_admits_drafts_when_asked():
    info, rows = account(LEGACY, "shopify", CatalogOptions(statuses=("active", "draft")))
    assert info.skipped == {SKIP_IMAGE_ROW: 3, "product status archived": 1}
    assert info.rows == 10 and rows[7]["sku"] == "MUG-01" and rows[7]["status"] == "ok"


def test_option_names_cannot_shadow_reserved_fields(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("Handle,Title,Option1 Name,Option1 Value,Option2 Name,Option2 Value,"
                    "Variant SKU\nmug,Mug,Variant,Large,Finish,Matte Glaze,MUG-L\n")
    [record] = list(iter_records(str(path), "csv"))
    assert record.fields["option_variant"] == "Large" and "variant" not in record.fields
    assert record.fields["finish"] == "Matte Glaze" and record.fields["title"] == "Mug"


def test_limit_counts_export_rows():
    info = scan(str(LEGACY), "shopify", limit=5)
    assert info.rows == 4 and info.skipped == {SKIP_IMAGE_ROW: 1}  # rows 1, 2, 4, 5; row 3
    tables = list(read_split(str(LEGACY), "shopify", Split(), limit=5))
    assert sum(t.num_rows for t in tables) == 4


def test_commerce_exports_are_one_read_task(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text(LEGACY.read_text() * 1)
    assert plan_splits(str(big), "csv", rows_per_split=2) == [Split()]
    assert plan_splits(str(TSV), "merchant-tsv", rows_per_split=2) == [Split()]


def test_fingerprint_follows_work_rows_and_skip_reasons(tmp_path):
    base = scan(str(LEGACY), "shopify").sha256
    image = tmp_path / "image.csv"  # an image-only row's URL is not work
    image.write_text(LEGACY.read_text().replace("tote-3.jpg", "tote-3b.jpg"))
    title = tmp_path / "title.csv"
    title.write_text(LEGACY.read_text().replace("Linen Shirt", "Flax Shirt"))
    status = tmp_path / "status.csv"
    status.write_text(LEGACY.read_text().replace(",archived", ",draft"))
    assert scan(str(image), "shopify").sha256 == base
    assert len({base, scan(str(title), "shopify").sha256,
                scan(str(status), "shopify").sha256}) == 3


def test_html_descriptions_become_text():
    assert html_to_text("<div><h2>Breezy</h2><p>Linen&nbsp;shirt<br>for summer</p>"
                        "<script>track()</script><style>p{}</style></div>") == \
        "Breezy Linen shirt for summer"
    assert html_to_text("Fish &amp; chips &lt;3 <b>now</b>") == "Fish & chips <3 now"
    assert html_to_text("<p> </p>") is None and html_to_text(None) is None


def test_an_export_of_only_drafts_says_why_it_has_no_rows(tmp_path):
    path = tmp_path / "drafts.csv"
    path.write_text("Handle,Title,Variant SKU,Status\nmug,Mug,M1,draft\nmug,,M2,\n")
    with pytest.raises(ManifestError, match=r"no data rows \(2 skipped: product status draft"):
        scan(str(path), "csv")


# --- Merchant Center -------------------------------------------------------------------

def test_merchant_tsv_exact_accounting():
    info, rows = account(TSV, "merchant-tsv")
    assert info.rows == 7 and info.skipped == {}
    assert by_status(rows, "ok") == [1, 2, 3, 4]
    assert by_status(rows, "rejected") == [5, 6, 7]
    assert rows[5]["error"] == "expected 16 fields as in the header, got 1"
    assert (rows[6]["reject_field"], rows[6]["error"]) == (
        "id", "item has no id: not a product item")
    assert rows[7]["error"].startswith("duplicate of row 1")


def test_merchant_xml_exact_accounting():
    info, rows = account(XML, "merchant-xml")
    assert info.rows == 5
    assert by_status(rows, "ok") == [1, 2, 3, 5]
    assert by_status(rows, "rejected") == [4] and rows[4]["reject_field"] == "id"


def test_merchant_feeds_fill_the_same_fields_as_shopify():
    tsv, xml = fields(TSV, "merchant-tsv"), fields(XML, "merchant-xml")
    assert tsv["TEE-RED-S"] == xml["TEE-RED-S"]
    assert set(tsv["TEE-RED-S"]) == set(fields(LEGACY, "shopify")["TOTE-NAVY"])
    tee = xml["TEE-RED-S"]
    assert (tee["group"], tee["category"], tee["description"]) == (
        "TEE", "Apparel & Accessories > Clothing > Shirts & Tops", "Soft cotton tee")
    assert xml["TEE-RED-M"]["title"] == "Cotton Tee"  # plain RSS <title> counts too
    assert xml["TEE-RED-M"]["description"] == "Soft cotton tee"  # CDATA HTML
    assert xml["BOTTLE-1"]["group"] == "BOTTLE-1"  # no item_group_id: its own group
    assert tsv["BOTTLE-1"]["options"] == "color: silver, material: stainless steel"


@pytest.mark.parametrize("name", ["merchant_billion_laughs.xml", "merchant_external_entity.xml"])
def test_malicious_xml_is_refused_not_expanded(name):
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match="refused: the XML declares a DTD or entities"):
            scan(str(CATALOGS / name), "merchant-xml")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # nothing expanded: billion laughs would need gigabytes


@pytest.mark.parametrize("text, message", [
    ("<rss><channel><item><g:id>A</g:id></item>", "not well-formed XML at line 1"),
    ('<feed xmlns="http://www.w3.org/2005/Atom"><entry/></feed>', "not an RSS 2.0"),
    ('<?xml version="1.0"?><!DOCTYPE rss><rss/>', "refused"),
])
def test_broken_xml_feeds_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "feed.xml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=message):
        scan(str(path), "merchant-xml")


# --- The job spec ----------------------------------------------------------------------

def spec(manifest: dict) -> dict:
    return {"name": "j", "manifest": manifest, "output": {"uri": "out"},
            "stages": [{"kind": "generate", "model": "synthetic"}]}


@pytest.mark.parametrize("uri, fmt", [("p.csv", "csv"), ("feed.tsv", "merchant-tsv"),
                                      ("feed.txt", "merchant-tsv"), ("feed.xml", "merchant-xml")])
def test_the_format_follows_the_suffix(uri, fmt):
    assert parse_job(spec({"uri": uri})).manifest_format == fmt


def test_catalog_options_reach_the_job():
    job = parse_job(spec({"uri": "products_export.csv", "format": "shopify",
                          "status": ["active", "draft"], "missing_sku": "reject"}))
    assert job.manifest_format == "shopify"
    assert job.catalog == CatalogOptions(statuses=("active", "draft"), missing_sku="reject")
    assert parse_job(spec({"uri": "p.csv"})).catalog == CatalogOptions()
    with pytest.raises(SpecError, match="manifest.status"):
        parse_job(spec({"uri": "p.csv", "status": ["published"]}))


def test_the_example_job_renders_every_active_variant_of_its_export():
    from factory.spec.job import load_job

    repo = Path(__file__).resolve().parents[2]
    job = load_job(repo / "jobs" / "shopify-catalog.yaml")
    info, rows = account(repo / job.manifest_uri, job.manifest_format, job.catalog,
                         template=job.prompt_template)
    assert info.skipped == {SKIP_IMAGE_ROW: 2, "product status draft": 1}
    assert by_status(rows, "ok") == [1, 2, 4, 5, 6, 7] and rows[7]["sku"] == "ceramic-mug"
    assert rows[4]["prompt"] == ("studio product photo of a linen shirt, Breezy Washed linen, "
                                 "relaxed fit., plain background")
