"""Channel variants end to end on a local Ray: a rendered SKU becomes one asset per channel,
with exact (row, channel) accounting, a rerun renders nothing, and the generated-image XMP
packet is read back from the objects a real S3 server (moto) holds.
"""

from __future__ import annotations

import io
from collections import Counter

import pytest
from PIL import Image

from factory.catalog.demo import write_catalog
from factory.core.provenance import DIGITAL_SOURCE_TYPE
from factory.store.run_tables import read_lineage, read_rejects
from factory.spec.job import parse_job
from factory.store.storage import Store
from tests.support.s3_server import credentials_env, start_s3_server

pytestmark = pytest.mark.integration

ROWS = 8
FAIL = "SKU-00005"
CHANNELS = ["meta-square", {"name": "thumb", "width": 320, "height": 400, "format": "webp",
                            "quality": 80, "fill": 0.9}]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = write_catalog(tmp_path_factory.mktemp("cat") / "catalog.csv", ROWS, bad_rows=False)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(",no sku,red,wool,home,,\n")  # row 13: rejected
    return path


def make_job(catalog_uri: str, output: str, **extra):
    spec = {
        "name": "channels-it", "manifest": {"uri": catalog_uri, "format": "csv"},
        "output": {"uri": output}, "seed": 5, "prompt": {"template": "a {{ color }} {{ title }}"},
        "stages": [
            {"kind": "generate", "model": "synthetic", "params": {"width": 48, "height": 48}},
            {"kind": "segment", "model": "u2net-tiny", "resources": {"batch_size": 8}},
            {"kind": "identity", "model": "passthrough", "params": {"fail_skus": [FAIL]}},
        ],
        "channels": CHANNELS,
    }
    spec.update(extra)
    return parse_job(spec, source="<channels test>")


def check_accounting(store: Store, run_id: str) -> list[dict]:
    lineage, summary = read_lineage(store, run_id)
    rejects = read_rejects(store, run_id)
    rows = lineage.to_pylist()
    assert rejects.num_rows == 1 and rejects["row"].to_pylist() == [ROWS + 1]
    # every manifest row that was not rejected is in the lineage once per channel
    assert Counter((r["row"], r["channel"]) for r in rows) == Counter(
        {(row, c): 1 for row in range(1, ROWS + 1) for c in ("meta-square", "thumb")})
    failed = [r for r in rows if r["status"] == "failed"]
    assert {(r["sku"], r["channel"], r["failed_stage"]) for r in failed if r["sku"] == FAIL} == {
        (FAIL, "meta-square", "identity"), (FAIL, "thumb", "identity")}
    for r in failed:  # any other failure is a channel rule the asset broke, by name
        assert r["sku"] == FAIL or (r["failed_stage"] == "channel" and r["channel_rule"]
                                    and r["error"].startswith(f"{r['channel']}: ")), r
    ok = [r for r in rows if r["status"] == "ok"]
    assert summary["assets"] == len(ok) and summary["failed"] == len(failed)
    assert summary["assets"] + summary["failed"] + summary["rejected"] * 2 == (ROWS + 1) * 2
    assert summary["channels"] == ["meta-square", "thumb"]
    return rows


def test_each_sku_becomes_one_measured_asset_per_channel(tmp_path, catalog, local_ray,
                                                         models_dir):
    from factory.run.pipeline import run_job

    job = make_job(str(catalog), str(tmp_path / "out"))
    first = run_job(job)
    store = Store(job.output.uri)
    rows = check_accounting(store, first.run_id)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= ROWS  # the tiny random segmenter leaves most SKUs a usable cutout
    assert all(r["written"] for r in ok)
    for r in ok:
        ext = "jpg" if r["channel"] == "meta-square" else "webp"
        assert r["output_key"].endswith(f".{r['channel']}.{ext}")
        size = (1080, 1080) if r["channel"] == "meta-square" else (320, 400)
        assert (r["width"], r["height"]) == size and r["background_purity"] == 1.0
        assert abs(r["fill_ratio"] - (0.8 if r["channel"] == "meta-square" else 0.9)) <= 0.03
        with Image.open(io.BytesIO(store.read_bytes(r["output_key"]))) as image:
            assert image.size == size
            xmp = image.getxmp()["xmpmeta"]["RDF"]["Description"]
        assert xmp["DigitalSourceType"] == DIGITAL_SOURCE_TYPE and xmp["RunId"] == first.run_id
    # the same job again (a new run id, the same keys): a SKU whose every channel was written
    # is not rendered again; one with a failed channel is (its marker was held back), and
    # fails the same way without writing anything twice
    again = run_job(job.with_overrides(run_id="again"))
    rows_again = check_accounting(store, "again")
    assert again.counts.written == 0 and not any(r["written"] for r in rows_again)
    outcome = {(r["row"], r["channel"]): (r["status"], r["output_key"]) for r in rows}
    assert {(r["row"], r["channel"]): (r["status"], r["output_key"])
            for r in rows_again} == outcome
    complete = {r["row"] for r in rows} - {r["row"] for r in rows if r["status"] == "failed"}
    for r in rows_again:
        rendered = r["ms_generate"] is not None and r["ms_generate"] > 0
        assert rendered == (r["row"] not in complete), r


@pytest.fixture(scope="module", autouse=True)
def s3():
    """A real S3 server, and its credentials in the environment before Ray starts (the
    workers take the driver's environment when they start)."""
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    with start_s3_server() as server, pytest.MonkeyPatch.context() as env:
        for key, value in credentials_env(server.endpoint_url).items():
            if key in keys:
                env.setenv(key, value)
        server.client().create_bucket(Bucket="assets")
        yield server


def test_metadata_survives_the_s3_upload(s3, catalog, local_ray, models_dir):
    from factory.run.pipeline import run_job

    job = make_job(str(catalog), "s3://assets/channels", storage={
        "endpoint_url": s3.endpoint_url, "addressing_style": "path", "region": "us-east-1"},
        channels=["google-shopping"])
    result = run_job(job, limit=3)
    lineage, _ = read_lineage(Store(job.output.uri, job.s3), result.run_id)
    ok = [r for r in lineage.to_pylist() if r["status"] == "ok"]
    assert ok and all(r["channel"] == "google-shopping" for r in ok)
    for r in ok:
        body = s3.client().get_object(Bucket="assets",
                                      Key=f"channels/{r['output_key']}")["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            assert image.format == "JPEG" and image.size == (1500, 1500)
            xmp = image.getxmp()["xmpmeta"]["RDF"]["Description"]
        assert xmp["DigitalSourceType"] == DIGITAL_SOURCE_TYPE
        assert xmp["RunId"] == result.run_id and xmp["AISystemUsed"]
