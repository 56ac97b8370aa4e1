"""`factory run jobs/product-photos.yaml` as shipped: every SKU from its own photo, every
lineage row with its product's fidelity, bad photos rejected with their reasons, the report
showing the figure, exact accounting."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.exits import EXIT_PARTIAL
from factory.cli.main import main
from factory.store.run_tables import read_lineage, read_rejects
from factory.store.storage import Store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_photo_job_renders_each_sku_from_its_own_photo(tmp_path, local_ray,
                                                                   models_dir, monkeypatch):
    monkeypatch.chdir(REPO)  # the spec names its catalog relative to the repository
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "jobs/product-photos.yaml", "--output", str(out),
                                       "--run-id", "photos"], catch_exceptions=False)
    assert result.exit_code == EXIT_PARTIAL, result.output  # four bad rows, on purpose
    assert "17 rows: 4 rejected" in result.output
    store = Store(str(out))
    lineage, summary = read_lineage(store, "photos")
    rejects = {r["row"]: r for r in read_rejects(store, "photos").to_pylist()}
    assert (summary["manifest_rows"], summary["assets"], summary["failed"],
            summary["rejected"]) == (17, 13, 0, 4)
    assert sorted(rejects) == [14, 15, 16, 17]
    assert all(r["field"] == "image_url" for r in rejects.values())
    assert "no such file" in rejects[14]["reason"] and "0 bytes" in rejects[15]["reason"]
    assert "not an image" in rejects[16]["reason"] and "no photo" in rejects[17]["reason"]
    rows = lineage.to_pylist()
    assert len({r["source_sha256"] for r in rows}) == 11  # 13 variants, 11 distinct photos
    for row in rows:
        assert row["status"] == "ok" and row["qa"] == "pass"
        assert 0.0 <= row["fidelity_delta_e"] <= 1.0, row
        assert row["photo"].startswith("photos/")
        assert (out / row["output_key"]).is_file()
        assert (out / "sources" / row["source_sha256"][:2] / row["source_sha256"]).is_file()
    report = (out / "runs" / "photos" / "report.html").read_text()
    assert "product ΔE" in report
