"""The run report in a real browser: headless Chromium loads a committed run's report.html from
the output directory, runs its script, and the rendered DOM is checked (a card per lineage row,
a failed SKU's error on its card, the status filter from the URL hiding the assets). A
screenshot is saved as build/report.png. The same run copied to S3 (a loopback moto server)
gets the same page, stored as text/html, with its thumbnails: an S3 static site serves it.

Chromium is Debian's ``chromium`` package: ``make test`` installs it where it is missing and the
machine allows (root with apt-get). Where it is still missing, this module is skipped, saying so.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from PIL import Image

from factory.run import report
from factory.store.s3 import S3Options
from factory.cli.exits import EXIT_PARTIAL
from factory.cli.main import main
from factory.catalog.demo import write_catalog
from factory.store.run_tables import read_lineage
from factory.store.storage import Store
from tests.support.s3_server import credentials_env, start_s3_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "build" / "report.png"
#: Markup in a SKU: escaped, it is text; unescaped, the browser would run its handler.
EVIL = "<img src=x onerror=document.title='pwned'>"
FAIL = ("SKU-00004", EVIL)
CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser"))), None)


def job_spec(tmp: Path, catalog: Path, output: Path) -> Path:
    spec = tmp / "report.yaml"
    spec.write_text(f"""
name: report-it
manifest: {{uri: "{catalog}"}}
output: {{uri: "{output}"}}
seed: 5
prompt: {{template: "photo of a {{{{ color }}}} {{{{ title }}}}"}}
stages:
  - kind: generate
    model: synthetic
    params: {{width: 48, height: 48}}
    resources: {{batch_size: 8}}
  - kind: recolor
    model: lab
    params: {{palette: ["#C8553D", "#2D3047"], strength: 0.7}}
  - kind: identity
    model: passthrough
    params: {{fail_skus: {list(FAIL)!r}}}
    resources: {{batch_size: 8}}
""")
    return spec


@pytest.fixture(scope="module")
def committed(tmp_path_factory, local_ray):
    tmp = tmp_path_factory.mktemp("report")
    catalog = write_catalog(tmp / "catalog.csv", 40)  # rows 11, 21, 31 are rejected
    with catalog.open("a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow([EVIL, "mug", "teal", "oak", "home", "", ""])
    out = tmp / "out"
    result = CliRunner().invoke(main, ["run", str(job_spec(tmp, catalog, out)), "--run-id", "rep"],
                                catch_exceptions=False)
    assert result.exit_code == EXIT_PARTIAL, result.output
    store = Store(str(out))
    path = Path(store.path(report.report_key("rep")))
    if not path.is_file():  # run_job writes it at commit once that is wired; either way
        assert report.write_report(store, "rep") == str(path)
    lineage, _ = read_lineage(store, "rep")
    return store, path, lineage


def chromium(*args: str, tmp: Path) -> str:
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine, and `make test` could not install it "
                    "(apt-get install chromium needs root and Debian's archive)")
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """Cards of the dumped DOM: attributes and text, and the page title."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.images: list[dict[str, str]] = []
        self.title = ""
        self.shown = ""
        self._stack: list[str] = []
        self._in_card = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(attrs)
            if self.cards and self._in_card:
                self.cards[-1]["img"] = attrs.get("src")
            return
        if tag in ("meta", "input", "br", "link", "option"):
            return
        self._stack.append(attrs.get("id", "") or tag)
        if tag == "article":
            self.cards.append({**attrs, "text": "", "img": None})
            self._in_card = len(self._stack)

    def handle_endtag(self, tag):
        if tag in ("meta", "input", "br", "link", "option", "img") or not self._stack:
            return
        if self._in_card == len(self._stack):
            self._in_card = 0
        self._stack.pop()

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "title":
            self.title += data
        if self._stack and self._stack[-1] == "shown-count":
            self.shown += data
        if self._in_card:
            self.cards[-1]["text"] += data


def test_every_row_is_a_card_and_the_page_renders(committed, tmp_path) -> None:
    _, path, lineage = committed
    dom = Dom(chromium("--dump-dom", path.as_uri(), tmp=tmp_path))
    assert len(dom.cards) == lineage.num_rows == 38  # 41 manifest rows, 3 rejected
    assert not any("hidden" in card for card in dom.cards)
    assert dom.shown == "38"
    ok = {r["row"] for r in lineage.to_pylist() if r["status"] == "ok"}
    assert len(ok) == 36
    for card in dom.cards:
        row = int(card["data-row"])
        assert (card["img"] == f"thumbs/{row}.webp") == (row in ok), card
        assert (path.parent / f"thumbs/{row}.webp").is_file() == (row in ok)
    # the SKU with markup is text on its card; its onerror never ran
    assert dom.title.startswith("Run rep") and "pwned" not in dom.title
    assert not [img for img in dom.images if img.get("src") == "x"]
    assert any(EVIL in card["text"] for card in dom.cards)

    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    chromium(f"--screenshot={SCREENSHOT}", "--window-size=1280,2000",
             "--virtual-time-budget=5000", path.as_uri(), tmp=tmp_path)
    with Image.open(SCREENSHOT) as shot:
        assert shot.size == (1280, 2000)
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # not blank


def test_the_status_filter_hides_the_assets_and_failures_show_their_errors(committed,
                                                                           tmp_path) -> None:
    _, path, lineage = committed
    failed = lineage.filter(pc.equal(lineage["status"], "failed")).to_pylist()
    assert sorted(r["sku"] for r in failed) == sorted(FAIL)
    dom = Dom(chromium("--dump-dom", f"{path.as_uri()}#status=failed", tmp=tmp_path))
    assert len(dom.cards) == 38
    visible = [c for c in dom.cards if "hidden" not in c]
    assert sorted(int(c["data-row"]) for c in visible) == sorted(r["row"] for r in failed)
    assert all(c["data-status"] == "ok" for c in dom.cards if "hidden" in c)
    assert dom.shown == "2"
    for card, row in zip(sorted(visible, key=lambda c: int(c["data-row"])),
                         sorted(failed, key=lambda r: r["row"])):
        assert row["sku"] in card["text"]
        assert "[identity] " in card["text"] and row["error"] in card["text"]
        assert f"injected failure for sku '{row['sku']}'" in row["error"]

    dom = Dom(chromium("--dump-dom", f"{path.as_uri()}#status=failed&stage=recolor",
                       tmp=tmp_path))
    assert dom.shown == "0" and all("hidden" in c for c in dom.cards)
    dom = Dom(chromium("--dump-dom", f"{path.as_uri()}#status=ok&sku=sku-0000", tmp=tmp_path))
    shown = sorted(c["data-sku"] for c in dom.cards if "hidden" not in c)
    assert shown == [f"sku-0000{i}" for i in range(10) if i != 4]  # SKU-00004 failed


def test_on_s3_the_same_page_is_served_as_html(committed, tmp_path, monkeypatch) -> None:
    local, path, lineage = committed
    root = Path(local.uri)
    with start_s3_server() as server:
        for key, value in credentials_env(server.endpoint_url).items():
            monkeypatch.setenv(key, value)
        client = server.client()
        client.create_bucket(Bucket="assets")
        keys = ["runs/rep/lineage.parquet", "runs/rep/rejects.parquet"]
        keys += [k for k in lineage["output_key"].to_pylist() if k]
        for key in keys:
            client.upload_file(str(root / key), "assets", f"spring/{key}")
        store = Store("s3://assets/spring", S3Options(endpoint_url=server.endpoint_url,
                                                      addressing_style="path",
                                                      region="us-east-1"))
        assert report.write_report(store, "rep") == "s3://assets/spring/runs/rep/report.html"
        page = client.get_object(Bucket="assets", Key="spring/runs/rep/report.html")
        assert page["ContentType"].startswith("text/html")
        local_page = path.read_text(encoding="utf-8")
        assert page["Body"].read().decode("utf-8") == local_page
        thumbs = client.list_objects_v2(Bucket="assets", Prefix="spring/runs/rep/thumbs/")
        assert len(thumbs["Contents"]) == 36
        head = client.head_object(Bucket="assets", Key=thumbs["Contents"][0]["Key"])
        assert head["ContentType"] == "image/webp"

        result = CliRunner().invoke(main, ["runs", "open", "rep", "--output", store.uri],
                                    env={"FACTORY_S3_ENDPOINT_URL": server.endpoint_url})
        assert result.exit_code == 0, result.output
        assert "s3://assets/spring/runs/rep/report.html" in result.output
        assert f"{server.endpoint_url}/assets/spring/runs/rep/report.html" in result.output
