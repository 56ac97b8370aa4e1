"""A Shopify product export, as exported, through `factory run` on a local Ray: exact accounting.

The legacy-header fixture (tests/fixtures/catalogs/shopify_legacy.csv) has 14 export rows:
5 variants become assets, 4 rows are rejected with their row number and reason, and 5 are skipped
(image-only rows, a draft and an archived product): they are not manifest rows, so
assets + failed + rejected = manifest_rows still holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.exits import EXIT_PARTIAL
from factory.cli.main import main
from factory.catalog.commerce_formats import SKIP_IMAGE_ROW
from factory.store.run_tables import read_lineage, read_rejects
from factory.store.storage import Store

pytestmark = pytest.mark.integration

EXPORT = Path(__file__).resolve().parents[1] / "fixtures" / "catalogs" / "shopify_legacy.csv"


def test_a_shopify_export_renders_its_active_variants(tmp_path, local_ray, models_dir):
    out = tmp_path / "out"
    spec = tmp_path / "shopify.yaml"
    spec.write_text(f"""
name: shopify-it
manifest: {{uri: "{EXPORT}"}}
output: {{uri: "{out}"}}
seed: 7
variant: hero
prompt: {{template: "studio photo of a {{{{ title }}}} by {{{{ brand }}}}"}}
stages:
  - kind: generate
    model: sd-tiny
    params: {{width: 32, height: 32, steps: 1, guidance: 1.0}}
    resources: {{batch_size: 8}}
""")
    result = CliRunner().invoke(main, ["run", str(spec), "--run-id", "shop"],
                                catch_exceptions=False)
    assert result.exit_code == EXIT_PARTIAL, result.output  # four rows are rejected
    assert "9 rows: 4 rejected" in result.output
    assert f"3 export rows skipped: {SKIP_IMAGE_ROW}" in result.output
    store = Store(str(out))
    lineage, summary = read_lineage(store, "shop")
    rejects = read_rejects(store, "shop")
    assert (summary["manifest_rows"], summary["assets"], summary["failed"],
            summary["rejected"]) == (9, 5, 0, 4)
    assert summary["skipped"] == {SKIP_IMAGE_ROW: 3, "product status draft": 1,
                                  "product status archived": 1}
    assert sorted(lineage["row"].to_pylist()) == [1, 2, 4, 5, 12]
    assert sorted(rejects["row"].to_pylist()) == [10, 11, 13, 14]
    by_sku = {r["sku"]: r for r in lineage.to_pylist()}
    assert set(by_sku) == {"TOTE-NAVY", "TOTE-SAND", "SHIRT-S-WHT", "linen-shirt.m.white",
                           "desk-lamp"}
    assert by_sku["linen-shirt.m.white"]["prompt"] == "studio photo of a Linen Shirt by Acme"
    for row in by_sku.values():
        assert (out / row["output_key"]).is_file()
    shown = CliRunner().invoke(main, ["runs", "show", "shop", "--output", str(out)],
                               catch_exceptions=False).output
    assert "skipped        1 (product status draft)" in shown
