"""The run report (factory.run.report) over runs committed through RunRecorder, the real commit path.

Hermetic: no Ray; the stage chain is a parsed job spec, the assets small PNGs in a local store.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

from factory.run import report
from factory.cli.exits import EXIT_NO_RUN
from factory.cli.main import main
from factory.run.recorder import RunRecorder
from factory.store.s3 import S3Options
from factory.spec.job import load_job
from factory.store.storage import Store

SPEC = """
name: rep
manifest: {uri: "catalog.csv"}
output: {uri: "out"}
prompt: {template: "photo of {{ sku }}"}
stages:
  - kind: generate
    model: synthetic
    params: {width: 32, height: 32}
  - kind: segment
    model: u2net-tiny
  - kind: recolor
    model: lab
    params: {palette: ["#C8553D", "#2D3047"]}
  - kind: identity
    model: passthrough
"""
EVIL = '<script>alert("x")</script>&'
STAGES = ("generate", "segment", "recolor", "identity")


class Page(HTMLParser):
    """The elements of a report, by tag, with their attributes and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def cards(self) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == "article" and "card" in a.get("class", "")]

    def links(self) -> list[str]:
        return [a[k] for _, a in self.elements for k in ("href", "src") if k in a]


def _png(colour: tuple[int, int, int, int], size: int = 256) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def commit_run(root: Path, *, run_id: str = "r1", n: int = 12, fail: dict[int, str] | None = None,
               rejects: dict[int, tuple[str, str]] | None = None, order=None,
               sku=lambda i: f"SKU-{i:03d}", reused: set[int] = frozenset()) -> Store:
    """Commit a run of ``n`` manifest rows: ``fail`` row -> stage, ``rejects`` row -> (field,
    reason); every other row an asset (``reused``: already in the store, not written)."""
    (root / "job.yaml").write_text(SPEC)
    job = load_job(root / "job.yaml")
    store = Store(str(root / "out"))
    fail, rejects = fail or {}, rejects or {}
    recorder = RunRecorder(store, run_id, job.stages)
    rows = []
    for i in order or range(1, n + 1):
        ok = i not in fail and i not in rejects
        key = f"assets/{sku(i).replace('/', '%2F')}/hero-{i:04x}.png" if ok else ""
        if ok:
            store.put_if_absent(key, _png((10 * i % 256, 80, 160, 255 if i % 2 else 128)))
        stage = fail.get(i, "")
        done = STAGES[:STAGES.index(stage)] if stage else (STAGES if ok else ())
        rows.append({
            "row": i, "sku": sku(i), "variant": "hero", "seed": i, "prompt": "p",
            "status": "ok" if ok else ("rejected" if i in rejects else "failed"),
            "error": (f"injected failure <b>{i}</b>" if stage else
                      rejects[i][1] if i in rejects else ""),
            "failed_stage": stage, "reject_field": rejects.get(i, ("", ""))[0],
            "output_key": key, "sha256": "", "bytes": 1, "written": ok and i not in reused,
            **{f"ms_{s}": (float(i * (k + 1)) if s in done else None)
               for k, s in enumerate(STAGES)},
            "alpha_coverage": 0.25 if "segment" in done else None,
            "delta_e_before": 30.0 + i if "recolor" in done else None,
            "delta_e_after": 5.0 if "recolor" in done else None,
        })
    for start in range(0, len(rows), 5):  # the sink hands batches over
        recorder.add(pa.Table.from_pylist(rows[start:start + 5]))
    assets = sum(1 for r in rows if r["status"] == "ok")
    assert recorder.commit({"run_id": run_id, "job": "rep", "manifest_rows": len(rows),
                            "assets": assets, "written": assets - len(reused),
                            "failed": len(fail), "rejected": len(rejects), "wall_s": 2.5,
                            "assets_per_s": assets / 2.5, "write_mode": "local-link",
                            "inputs": {"manifest": "sha256:abc", "limit": None}})
    return store


@pytest.fixture()
def run(tmp_path) -> tuple[Store, Path]:
    store = commit_run(tmp_path, n=12, fail={4: "identity", 9: "recolor"},
                       rejects={7: ("seed", "not an integer: 'abc'")},
                       sku=lambda i: EVIL if i == 4 else f"SKU-{i:03d}", reused={2})
    path = report.write_report(store, "r1")
    return store, Path(path)


def test_writes_report_and_returns_its_store_path(run) -> None:
    store, path = run
    assert path == Path(store.path("runs/r1/report.html")) and path.is_file()
    assert report.report_key("r1") == "runs/r1/report.html"


def test_one_card_per_lineage_row_in_row_order(run) -> None:
    _, path = run
    cards = Page(path.read_text()).cards()
    assert [int(c["data-row"]) for c in cards] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    status = {int(c["data-row"]): c["data-status"] for c in cards}
    assert status[4] == status[9] == "failed" and status[1] == "ok"
    stage = {int(c["data-row"]): c["data-stage"] for c in cards}
    assert (stage[4], stage[9], stage[1]) == ("identity", "recolor", "")
    # a run without routes: no route filter, no route on the cards
    assert 'id="f-route"' not in path.read_text() and {c["data-route"] for c in cards} == {""}


def test_a_thumbnail_for_every_ok_row_and_none_for_failures(run) -> None:
    _, path = run
    thumbs = path.parent / "thumbs"
    ok_rows = [1, 2, 3, 5, 6, 8, 10, 11, 12]
    assert sorted(int(p.stem) for p in thumbs.iterdir()) == ok_rows
    for row in ok_rows:
        with Image.open(thumbs / f"{row}.webp") as image:
            assert image.format == "WEBP" and max(image.size) == report.THUMB_PX
            if row % 2 == 0:  # a translucent asset: the cut-out's alpha survives
                assert image.mode == "RGBA" and abs(image.getpixel((5, 5))[3] - 128) <= 2
    srcs = [a["src"] for t, a in Page(path.read_text()).elements if t == "img"]
    assert sorted(srcs) == sorted(f"thumbs/{r}.webp" for r in ok_rows)


def test_user_text_is_escaped(run) -> None:
    _, path = run
    text = path.read_text()
    assert EVIL not in text and "<b>4</b>" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;" in text
    assert "injected failure &lt;b&gt;4&lt;/b&gt;" in text
    page = Page(text)
    assert sum(1 for t, _ in page.elements if t == "script") == 1  # the report's own
    assert sum(1 for t, _ in page.elements if t == "b") == 1  # the header's job name only


def test_every_link_is_relative_and_resolves_to_a_file(run) -> None:
    store, path = run
    page = Page(path.read_text())
    links, ids = page.links(), {a["id"] for _, a in page.elements if "id" in a}
    assert links
    root = Path(store.uri).resolve()
    files = 0
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc and not link.startswith("/"), link
        if not parts.path:  # an anchor within the page
            assert parts.fragment in ids, link
            continue
        target = (path.parent / unquote(parts.path)).resolve()
        assert target.is_file() and root in target.parents, link
        files += 1
    assert files == 2 * 9  # a thumbnail and the asset it links to, per ok row


def test_self_contained(run) -> None:
    _, path = run
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text and "url(http" not in text
    page = Page(text)
    assert all("src" not in a for t, a in page.elements if t == "script")
    assert "URLSearchParams" in page.scripts[0]


def test_summary_stage_table_failures_and_rejects(run) -> None:
    _, path = run
    text = path.read_text()
    figures = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>",
                              text.split('id="figures"')[1].split("</dl>")[0]))
    assert figures["assets"] == "9" and figures["failed"] == "2" and figures["rejected"] == "1"
    assert figures["already there"] == "1" and figures["write mode"] == "local-link"
    assert figures["wall time"] == "2.5 s"
    stages = text.split('id="stages"')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>(\w+)</td><td>([^<]*)</td>((?:<td[^>]*>[^<]*</td>\s*)+)</tr>",
                      stages)
    table = {name: (model, re.findall(r">([^<]*)</td>", cells)) for name, model, cells in rows}
    assert list(table) == list(STAGES)
    # generate ran on the 11 lineage rows; ms = row number: rows 1-6, 8-12
    model, (count, mean, p50, p95, top, failed, *_cost) = table["generate"]
    assert model == "generate/synthetic" and count == "11" and failed == "0"
    values = [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
    assert mean == f"{sum(values) / 11:,.1f}" and p50 == "6.0" and top == "12.0"
    assert p95 == "11.5"  # numpy's linear interpolation between 11 and 12
    # recolor: rows failed at recolor (9) never reached it; ms = 3 * row
    _, (count, _, _, _, top, failed, *_cost) = table["recolor"]
    assert count == "10" and top == "36.0" and failed == "1"
    assert table["identity"][1][5] == "1"
    failures = text.split('id="failures"')[1].split("</section>")[0]
    assert "Failures (2)" in failures and "injected failure &lt;b&gt;9&lt;/b&gt;" in failures
    assert failures.index(">4</a>") < failures.index(">9</a>")
    rejected = text.split('id="rejects"')[1].split("</section>")[0]
    assert "(1)" in rejected and "seed" in rejected and "not an integer: &#39;abc&#39;" in rejected


def test_cards_show_delta_e_alpha_and_the_error(run) -> None:
    _, path = run
    text = path.read_text()
    card = text.split('id="row-3"')[1].split("</article>")[0]
    assert "33.0 → 5.0" in card and "25%" in card and "ok" in card
    assert 'class="error"' not in card
    failed = text.split('id="row-9"')[1].split("</article>")[0]
    assert "[recolor] injected failure" in failed and "ΔE" not in failed  # never recoloured
    reused = text.split('id="row-2"')[1].split("</article>")[0]
    assert "reused" in reused


def test_the_contact_sheet_keeps_the_lowest_rows_of_a_large_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report, "_BATCH_ROWS", 3)  # many batches: the cap is kept as it streams
    order = [10, 3, 7, 1, 9, 2, 8, 4, 6, 5]
    store = commit_run(tmp_path, n=10, order=order, fail={8: "segment"})
    Path(report.write_report(store, "r1", max_cards=4))
    text = (tmp_path / "out" / "runs" / "r1" / "report.html").read_text()
    assert [int(c["data-row"]) for c in Page(text).cards()] == [1, 2, 3, 4]
    assert "Showing the 4 lowest-numbered of 10 rows" in text
    assert sorted(int(p.stem) for p in (tmp_path / "out/runs/r1/thumbs").iterdir()) == [1, 2, 3, 4]
    failures = text.split('id="failures"')[1].split("</section>")[0]
    assert "Failures (1)" in failures and "injected failure" in failures  # beyond the cap


def test_a_missing_asset_gives_a_card_without_a_thumbnail(tmp_path) -> None:
    store = commit_run(tmp_path, n=3)
    key = next((tmp_path / "out" / "assets").rglob("*.png")).relative_to(tmp_path / "out")
    store.delete(key.as_posix())
    text = Path(report.write_report(store, "r1")).read_text()
    assert len(Page(text).cards()) == 3
    assert len(list((tmp_path / "out/runs/r1/thumbs").iterdir())) == 2
    assert "no image" in text


def test_the_report_is_written_once(tmp_path) -> None:
    store = commit_run(tmp_path, n=3)
    path = Path(report.write_report(store, "r1"))
    path.write_text("kept")  # a second call finds it: the run it describes never changes
    assert Path(report.write_report(store, "r1")) == path and path.read_text() == "kept"


def test_an_uncommitted_run_has_no_report(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        report.write_report(Store(str(tmp_path)), "nope")


def test_object_urls() -> None:
    local = Store("/tmp/out")
    assert (report.object_url(local, "runs/r 1/report.html")
            == "file:///tmp/out/runs/r%201/report.html")
    minio = Store("s3://assets/spring", S3Options(endpoint_url="http://127.0.0.1:9000/"))
    assert (report.object_url(minio, "runs/r1/report.html")
            == "http://127.0.0.1:9000/assets/spring/runs/r1/report.html")
    aws = Store("s3://assets", S3Options(region="eu-west-1"))
    assert (report.object_url(aws, "runs/r1/report.html")
            == "https://assets.s3.eu-west-1.amazonaws.com/runs/r1/report.html")


def test_runs_open_writes_a_missing_report_and_opens_it(tmp_path, monkeypatch) -> None:
    store = commit_run(tmp_path, n=3)
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    result = CliRunner().invoke(main, ["runs", "open", "r1", "--output", store.uri])
    assert result.exit_code == 0, result.output
    path = Path(store.path("runs/r1/report.html"))
    assert path.is_file() and str(path) in result.output
    assert opened == [path.as_uri()]
    result = CliRunner().invoke(main, ["runs", "open", "r1", "--output", store.uri, "--print"])
    assert result.exit_code == 0 and str(path) in result.output and len(opened) == 1


def test_runs_open_without_a_browser_prints_the_path(tmp_path, monkeypatch) -> None:
    store = commit_run(tmp_path, n=2)
    monkeypatch.setattr("webbrowser.open", lambda url: False)
    result = CliRunner().invoke(main, ["runs", "open", "r1", "--output", store.uri])
    assert result.exit_code == 0 and store.path("runs/r1/report.html") in result.output
    assert "no browser" in result.output


def test_runs_open_of_an_unknown_run_exits_5(tmp_path) -> None:
    result = CliRunner().invoke(main, ["runs", "open", "nope", "--output", str(tmp_path)])
    assert result.exit_code == EXIT_NO_RUN and "not committed" in result.output


def _thumb_srcs(path: Path) -> dict[int, str]:
    page = Page(path.read_text())
    cards, srcs = page.cards(), []
    for tag, attrs in page.elements:
        if tag == "img":
            srcs.append(attrs["src"])
    assert len(srcs) == len(cards)
    return {int(c["data-row"]): s for c, s in zip(cards, srcs)}


def test_a_report_links_the_thumbnails_an_earlier_report_made_of_the_same_assets(tmp_path):
    store = commit_run(tmp_path, run_id="r1", n=5)
    report.write_report(store, "r1")
    commit_run(tmp_path, run_id="r2", n=6, reused={1, 2, 3, 4, 5})  # row 6 is new
    path2 = Path(report.write_report(store, "r2", earlier="r1"))
    srcs = _thumb_srcs(path2)
    assert srcs == {**{i: f"../../runs/r1/thumbs/{i}.webp" for i in range(1, 6)},
                    6: "thumbs/6.webp"}
    assert all((path2.parent / s).resolve().is_file() for s in srcs.values())
    assert sorted(p.name for p in (path2.parent / "thumbs").iterdir()) == ["6.webp"]
    # a third report links where the thumbnails are, not to the run that linked them
    commit_run(tmp_path, run_id="r3", n=6, reused=set(range(1, 7)))
    path3 = Path(report.write_report(store, "r3", earlier="r2"))
    assert _thumb_srcs(path3) == {**{i: f"../../runs/r1/thumbs/{i}.webp" for i in range(1, 6)},
                                  6: "../../runs/r2/thumbs/6.webp"}
    assert not (path3.parent / "thumbs").exists()
    # another thumbnail size: made again, not linked
    commit_run(tmp_path, run_id="r4", n=2, reused={1, 2})
    path4 = Path(report.write_report(store, "r4", earlier="r3", thumb_px=64))
    assert _thumb_srcs(path4) == {1: "thumbs/1.webp", 2: "thumbs/2.webp"}


@pytest.mark.parametrize("index", [b"not json", b'["a"]', b'{"px": 128, "thumbs": 3}',
                                   b'{"px": 128, "thumbs": {"ASSET": "assets/x.png"}}',
                                   b'{"px": 128, "thumbs": {"ASSET": "runs/../../x.webp"}}',
                                   b'{"px": 128, "thumbs": {"ASSET": "runs/r0/../thumbs/1.webp"}}'])
def test_an_earlier_thumbnail_index_that_is_not_one_makes_the_thumbnails(tmp_path, index):
    store = commit_run(tmp_path, run_id="r1", n=2)
    key = next(iter(sorted(k for k in (tmp_path / "out" / "assets").rglob("*.png"))))
    asset = key.relative_to(tmp_path / "out").as_posix()
    store.put_if_absent("runs/r0/thumbs.json", index.replace(b"ASSET", asset.encode()))
    path = Path(report.write_report(store, "r1", earlier="r0"))
    assert _thumb_srcs(path) == {1: "thumbs/1.webp", 2: "thumbs/2.webp"}
