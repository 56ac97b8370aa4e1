"""Prompt templates, content keys, create-only writes, deterministic encoding."""

from __future__ import annotations

import numpy as np
import pytest

from factory import images
from factory.sink import SinkConfig, asset_key
from factory.storage import Store
from factory.templating import TemplateError, render, template_fields


def test_template_renders_row_fields_and_collapses_whitespace():
    assert render("a  {{ color }}\n{{ title|upper }}", {"color": "red", "title": "mug"}) == "a red MUG"


def test_template_fields_are_found():
    assert template_fields("{{ b }} {% if a %}{{ c }}{% endif %}") == ("a", "b", "c")


def test_missing_and_empty_fields_name_the_field():
    with pytest.raises(TemplateError) as err:
        render("a {{ color }}", {"title": "x"})
    assert err.value.field == "color"
    with pytest.raises(TemplateError):
        render("a {{ color }}", {"color": "  "})


def test_sandbox_blocks_python_internals():
    with pytest.raises(TemplateError):
        render("{{ title.__class__.__mro__[1].__subclasses__() }}", {"title": "x"})


def _config(**kw) -> SinkConfig:
    base = dict(output_uri="unused", image_format="png", quality=90, png_compression=3,
                chain_fingerprint="chain-a")
    base.update(kw)
    return SinkConfig(**base)


ROW = {"sku": "A 1", "variant": "hero", "seed": 3, "prompt": "p", "negative_prompt": "",
       "width": 0, "height": 0, "palette": ""}


def test_asset_key_is_derived_from_the_work():
    key = asset_key(_config(), ROW)
    assert key.startswith("assets/A%201/hero-") and key.endswith(".png")
    assert asset_key(_config(), dict(ROW)) == key
    assert asset_key(_config(chain_fingerprint="chain-b"), ROW) != key
    assert asset_key(_config(), {**ROW, "seed": 4}) != key
    assert asset_key(_config(), {**ROW, "prompt": "q"}) != key
    assert asset_key(_config(image_format="webp"), ROW).endswith(".webp")


def test_put_if_absent_is_create_only(tmp_path):
    store = Store(str(tmp_path))
    assert store.put_if_absent("assets/a/b.png", b"one") is True
    assert store.put_if_absent("assets/a/b.png", b"two") is False
    assert store.read_bytes("assets/a/b.png") == b"one"
    assert [p.name for p in (tmp_path / "assets" / "a").iterdir()] == ["b.png"]  # no temp left


def test_open_output_publishes_only_on_success(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(RuntimeError):
        with store.open_output("runs/r/lineage.parquet") as stream:
            stream.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert not store.exists("runs/r/lineage.parquet")
    assert list((tmp_path / "runs" / "r").iterdir()) == []


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_encoding_is_deterministic_and_keeps_alpha_where_it_can(fmt):
    from io import BytesIO

    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 255, (16, 16, 4), dtype=np.uint8)
    a, b = images.encode(rgba, fmt), images.encode(rgba.copy(), fmt)
    assert a == b
    mode = Image.open(BytesIO(a)).mode
    assert mode == ("RGB" if fmt == "jpeg" else "RGBA")


def test_pixel_columns_round_trip():
    arrays = [np.arange(24, dtype=np.uint8).reshape(2, 4, 3), None]
    cols = images.store("image", arrays)
    assert cols["image"].shape == (2, 2, 4, 3)  # one fixed-shape tensor column
    back = images.load("image", {**cols, "status": np.array(["ok", "failed"], dtype=object)})
    assert np.array_equal(back[0], arrays[0]) and back[1] is None
    mixed = images.store("image", [arrays[0], np.zeros((3, 3, 4), np.uint8), None])
    assert mixed["image"].dtype == object  # shapes differ: a variable-shape column
    assert [a.shape for a in images.load("image", mixed)] == [(2, 4, 3), (3, 3, 4), (1, 1, 3)]
    with pytest.raises(ValueError, match="expected HxWx3"):
        images.store("image", [np.zeros((2, 2), dtype=np.uint8)])
