"""Fetching each row's photo in the work list: keys from the photo's content, rejects with
reasons, one request per distinct photo, conditional GETs on the next run."""

from __future__ import annotations

import io
import json
import socket

import numpy as np
import pytest
from PIL import Image

from factory.spec.keys import SOURCE_SHA256
from factory.run.rows import RowRules, validate_batch
from factory.run.sources import SourceConfig, content_key, fetch_sources
from factory.store.s3 import S3Options
from factory.store.storage import Store
from stages.registry import get_card
from stages.source_photo import SOURCE_URI
from tests.support.photo_server import PhotoServer, Route

RULES = RowRules(seed=1, variant="hero", prompt_template="a {{ title }}",
                 chain_fingerprint="f" * 64, image_ext="png", photo_column="image_url")


def png(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def work(rows: list[dict]) -> dict[str, np.ndarray]:
    """Validated rows, as the work list has them before the fetch."""
    raw = {"row": np.arange(1, len(rows) + 1),
           "fields": np.array([json.dumps(r) for r in rows], dtype=object),
           "parse_field": np.array([""] * len(rows), dtype=object),
           "parse_error": np.array([""] * len(rows), dtype=object)}
    return validate_batch(raw, rules=RULES)


def config(store: Store, base_dir: str, **params) -> SourceConfig:
    card = get_card("source/photo")
    params = card.make_params({"allow_private": ["127.0.0.1"], "retries": 0,
                               "timeout_s": 5, **params})
    return SourceConfig(store=store, params=params, base_dir=base_dir, s3=S3Options(),
                        rules=RULES)


@pytest.fixture
def no_private_connections(monkeypatch):
    """Any connection attempt to an address outside loopback fails the test."""
    real = socket.socket.connect
    attempts: list = []

    def connect(self, address):
        if not str(address[0]).startswith("127."):
            attempts.append(address)
            raise AssertionError(f"connection attempted to {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_each_row_ends_with_its_photo_or_a_reason(tmp_path, no_private_connections):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "local.png").write_bytes(png((0, 200, 0)))
    (tmp_path / "photos" / "empty.png").write_bytes(b"")
    (tmp_path / "photos" / "text.png").write_text("not a picture")
    store = Store(str(tmp_path / "out"))
    with PhotoServer() as server:
        good = server.route("/red.png", Route(body=png((200, 0, 0)), etag='"r1"'))
        server.route("/gone.png", Route(status=404))
        rows = [
            {"sku": "A", "title": "mug", "image_url": good},
            {"sku": "B", "title": "mug", "image_url": good},  # the same photo: one request
            {"sku": "C", "title": "cup", "image_url": server.url("/gone.png")},
            {"sku": "D", "title": "cup", "image_url": "http://10.0.0.1/p.png"},
            {"sku": "E", "title": "cup", "image_url": "http://169.254.169.254/latest/"},
            {"sku": "F", "title": "cup", "image_url": "photos/local.png"},
            {"sku": "G", "title": "cup", "image_url": "photos/empty.png"},
            {"sku": "H", "title": "cup", "image_url": "photos/text.png"},
            {"sku": "I", "title": "cup", "image_url": "../outside.png"},
            {"sku": "J", "title": "cup"},
        ]
        out = fetch_sources(work(rows), config=config(store, str(tmp_path)))
        assert server.count("/red.png") == 1
    status = dict(zip(out["sku"], out["status"]))
    reason = dict(zip(out["sku"], out["error"]))
    assert [s for s in "ABF" if status[s] != "ok"] == []
    for sku in "CDEGHIJ":
        assert status[sku] == "rejected", sku
        assert dict(zip(out["sku"], out["reject_field"]))[sku] == "image_url"
    assert "404" in reason["C"]
    assert "10.0.0.1" in reason["D"] and "169.254.169.254" in reason["E"]
    assert no_private_connections == []
    assert "0 bytes" in reason["G"] or "empty" in reason["G"]
    assert "image" in reason["H"]
    assert "no photo" in reason["J"]
    sha = dict(zip(out["sku"], out[SOURCE_SHA256]))
    assert sha["A"] == sha["B"] != sha["F"] and len(sha["A"]) == 64
    spent = dict(zip(out["sku"], out["fetch_ms"]))
    assert spent["A"] > 0 and spent["A"] == spent["B"] and spent["J"] == 0
    uri = dict(zip(out["sku"], out[SOURCE_URI]))
    assert (tmp_path / "out" / content_key(sha["A"])).read_bytes() == png((200, 0, 0))
    assert uri["A"] == store.path(content_key(sha["A"]))


def test_the_photo_content_is_part_of_the_key_and_a_revisit_asks_conditionally(tmp_path):
    store = Store(str(tmp_path / "out"))
    rows = [{"sku": "A", "title": "mug"}]
    with PhotoServer() as server:
        url = server.route("/p.png", Route(body=png((200, 0, 0)), etag='"v1"'))
        rows[0]["image_url"] = url
        first = fetch_sources(work(rows), config=config(store, str(tmp_path)))
        again = fetch_sources(work(rows), config=config(store, str(tmp_path)))
        revisit = server.seen("/p.png")[-1]
        assert revisit.headers.get("if-none-match") == '"v1"'
        assert revisit.status == 304 and revisit.body_bytes == 0
        assert again["output_key"][0] == first["output_key"][0]
        server.route("/p.png", Route(body=png((0, 0, 200)), etag='"v2"'))
        changed = fetch_sources(work(rows), config=config(store, str(tmp_path)))
    text_only = work(rows)["output_key"][0]
    assert first["output_key"][0] != text_only  # the key names the photo
    assert changed["output_key"][0] != first["output_key"][0]
    assert changed[SOURCE_SHA256][0] != first[SOURCE_SHA256][0]


def test_a_missing_photo_may_fall_back_to_the_prompt(tmp_path):
    store = Store(str(tmp_path / "out"))
    out = fetch_sources(work([{"sku": "A", "title": "mug"}]),
                        config=config(store, str(tmp_path), missing="text"))
    assert out["status"][0] == "ok" and out[SOURCE_URI][0] == ""
    assert out["output_key"][0] == work([{"sku": "A", "title": "mug"}])["output_key"][0]


def test_fetch_options_do_not_change_keys():
    from dataclasses import replace

    from factory.spec.keys import params_hash
    from stages.base import StagePlan

    card = get_card("source/photo")
    plans = [StagePlan(name="source", card=card, params=card.make_params(p), source="",
                       revision="", resources=card.resources)
             for p in ({}, {"concurrency": 4, "timeout_s": 9, "allow_hosts": ["cdn.x.com"]})]
    assert params_hash(plans[0]) == params_hash(plans[1])
    bigger = replace(plans[0], params=card.make_params({"max_side": 1024}))
    assert params_hash(bigger) != params_hash(plans[0])
