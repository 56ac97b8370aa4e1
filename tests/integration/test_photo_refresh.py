"""The catalog's own photos over HTTP and S3, through `factory run` and `factory refresh` on a
local Ray: a changed photo re-renders exactly its SKU, and unchanged photos cost a 304 each,
never their bodies."""

from __future__ import annotations

import io
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.exits import EXIT_OK
from factory.cli.main import main
from factory.store.run_tables import read_lineage, read_rejects
from factory.store.storage import Store
from tests.support.photo_server import PhotoServer, Route
from tests.support.s3_server import start_s3_server

pytestmark = pytest.mark.integration

SKUS = ("MUG-1", "MUG-2", "MUG-3", "MUG-4")


@pytest.fixture(scope="module", autouse=True)
def s3_credentials():
    """Credentials in the environment before Ray starts (its workers read the boto3 chain)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "AKIAPHOTOTEST000001")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "photo-secret")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield
    mp.undo()


def studio_photo(colour: tuple[int, int, int], size: int = 48) -> bytes:
    """A coloured square on a white sweep."""
    pixels = np.full((size, size, 3), 250, dtype=np.uint8)
    pixels[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def spec(tmp_path, manifest, out, storage: str = "") -> str:
    path = tmp_path / "photos.yaml"
    path.write_text(f"""
name: photo-refresh
manifest: {{uri: "{manifest}"}}
output: {{uri: "{out}"}}
{storage}
stages:
  - kind: source
    model: photo
    params: {{allow_private: ["127.0.0.1"], retries: 1, timeout_s: 20}}
  - kind: segment
    model: studio-key
  - kind: upscale
    model: lanczos
    params: {{scale: 2}}
""")
    return str(path)


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_a_changed_photo_re_renders_its_sku_alone(tmp_path, local_ray):
    out = tmp_path / "out"
    with PhotoServer() as server:
        for i, sku in enumerate(SKUS):
            server.route(f"/{sku}.png", Route(body=studio_photo((200, 40 * i, 30)),
                                              etag=f'"{sku}-v1"'))
        manifest = tmp_path / "catalog.csv"
        manifest.write_text("sku,title,image_url\n" + "".join(
            f"{sku},mug,{server.url(f'/{sku}.png')}\n" for sku in SKUS))
        job = spec(tmp_path, manifest, out)
        first = run("run", job)
        assert first.exit_code == EXIT_OK, first.output
        assert all(server.count(f"/{sku}.png") == 1 for sku in SKUS)

        unchanged = run("refresh", job)
        assert unchanged.exit_code == EXIT_OK, unchanged.output
        for sku in SKUS:  # asked again, conditionally: a 304 and no body
            last = server.seen(f"/{sku}.png")[-1]
            assert last.headers.get("if-none-match") == f'"{sku}-v1"'
            assert (last.status, last.body_bytes) == (304, 0)
        assert "already committed" in unchanged.output or "0 changed" in unchanged.output

        server.route("/MUG-3.png", Route(body=studio_photo((20, 90, 220)), etag='"MUG-3-v2"'))
        changed = run("refresh", job)
        assert changed.exit_code == EXIT_OK, changed.output
        assert "1 changed" in changed.output and "rendered 1" in changed.output, changed.output
    store = Store(str(out))
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2  # the unchanged refresh was the first run, found committed
    latest = max(runs, key=lambda r: (out / "runs" / r / "lineage.parquet").stat().st_mtime)
    lineage, summary = read_lineage(store, latest)
    assert summary["assets"] == 4 and summary["written"] == 1
    rows = {r["sku"]: r for r in lineage.to_pylist()}
    assert rows["MUG-3"]["written"] and not rows["MUG-1"]["written"]
    assert rows["MUG-3"]["photo"].endswith("/MUG-3.png")
    assert summary["inputs"]["sources_sha256"]


def test_photos_from_s3_and_a_missing_key_rejected(tmp_path, local_ray):
    out = tmp_path / "out"
    with start_s3_server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="photos")
        client.put_object(Bucket="photos", Key="mugs/a.png", Body=studio_photo((200, 40, 30)))
        manifest = tmp_path / "catalog.csv"
        manifest.write_text("sku,title,image_url\nA,mug,s3://photos/mugs/a.png\n"
                            "B,mug,s3://photos/mugs/missing.png\n")
        storage = f"storage: {{endpoint_url: \"{s3.endpoint_url}\", addressing_style: path}}"
        result = run("run", spec(tmp_path, manifest, out, storage), "--run-id", "s3photos")
    assert result.exit_code != 0 or "1 rejected" in result.output, result.output
    store = Store(str(out))
    lineage, summary = read_lineage(store, "s3photos")
    rejects = read_rejects(store, "s3photos").to_pylist()
    assert (summary["assets"], summary["rejected"]) == (1, 1), [r["reason"] for r in rejects]
    assert rejects[0]["sku"] == "B" and rejects[0]["field"] == "image_url"
    assert "missing.png" in rejects[0]["reason"]
    source = lineage.to_pylist()[0]
    assert (out / "sources" / source["source_sha256"][:2] / source["source_sha256"]).is_file()
