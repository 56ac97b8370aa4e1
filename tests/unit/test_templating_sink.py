"""Prompt templates, content keys, create-only writes, deterministic encoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from factory.core import images
from factory.spec.keys import asset_key
from factory.store.storage import Store
from factory.spec.templating import MAX_TEXT, TemplateError, render, template_fields


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


ROW = {"sku": "A 1", "variant": "hero", "seed": 3, "prompt": "p", "negative_prompt": "",
       "width": 0, "height": 0, "palette": ""}


def test_asset_key_is_derived_from_the_work():
    key = asset_key("chain-a", "png", ROW)
    assert key.startswith("assets/A%201/hero-") and key.endswith(".png")
    assert asset_key("chain-a", "png", dict(ROW)) == key
    assert asset_key("chain-b", "png", ROW) != key
    assert asset_key("chain-a", "png", {**ROW, "seed": 4}) != key
    assert asset_key("chain-a", "png", {**ROW, "prompt": "q"}) != key
    assert asset_key("chain-a", "webp", ROW).endswith(".webp")


def test_put_if_absent_is_create_only(tmp_path):
    store = Store(str(tmp_path))
    assert store.put_if_absent("assets/a/b.png", b"one") is True
    assert store.put_if_absent("assets/a/b.png", b"two") is False
    assert store.read_bytes("assets/a/b.png") == b"one"
    assert [p.name for p in (tmp_path / "assets" / "a").iterdir()] == ["b.png"]  # no temp left


def test_publish_file_replaces_whole_and_leaves_no_temp(tmp_path):
    store = Store(str(tmp_path / "store"))
    local = tmp_path / "spool.bin"
    local.write_bytes(b"table")
    store.publish_file(local, "runs/r/lineage.parquet")
    assert store.read_bytes("runs/r/lineage.parquet") == b"table"
    assert [p.name for p in (tmp_path / "store" / "runs" / "r").iterdir()] == ["lineage.parquet"]


def test_local_preflight_names_an_unwritable_output(tmp_path):
    from factory.store.s3 import StorageError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot write to the output directory"):
        Store(str(blocker / "out")).preflight("r")
    Store(str(tmp_path / "ok")).preflight("r")
    assert not (tmp_path / "ok" / "runs" / "r").exists()  # the probe is gone, and its folder
    (tmp_path / "ok" / "runs" / "s").mkdir(parents=True)
    Store(str(tmp_path / "ok")).preflight("s")
    assert (tmp_path / "ok" / "runs" / "s").is_dir()  # a run's own folder stays


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


def test_a_local_commit_is_create_only(tmp_path):
    """Two recorders of one run id: the first commit wins, the second publishes nothing."""
    from factory.store.run_tables import is_committed, read_summary
    from factory.run.recorder import RunRecorder

    store = Store(str(tmp_path))
    first, second = RunRecorder(store, "r", ()), RunRecorder(store, "r", ())
    assert not is_committed(store, "r")
    assert first.commit({"who": "first"}) is True
    assert second.commit({"who": "second"}) is False
    assert read_summary(store, "r")["who"] == "first"
    assert sorted(p.name for p in (tmp_path / "runs" / "r").iterdir()) == [
        "lineage.parquet", "rejects.parquet"]


def test_a_store_failure_in_the_sink_is_not_a_per_sku_failure(tmp_path):
    """An unwritable store stops the run (StorageError); only an unencodable image is that
    SKU's own failure."""
    import numpy as np

    from factory.store.s3 import StorageError
    from factory.sink.assets import SinkConfig, write_assets

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's directory should be")
    config = SinkConfig(store=Store(str(blocked)), image_format="png", quality=90,
                        png_compression=1, chain_fingerprint="f")
    batch = {"sku": np.array(["A"], object), "variant": np.array(["v"], object),
             "status": np.array(["ok"], object), "error": np.array([""], object),
             "failed_stage": np.array([""], object), "output_key": np.array(["assets/A/v.png"], object),
             "image": np.zeros((1, 4, 4, 3), np.uint8)}
    with pytest.raises(StorageError, match="cannot write assets/A/v.png"):
        write_assets(batch, config=config)
    good = SinkConfig(store=Store(str(tmp_path / "ok")), image_format="png", quality=90,
                      png_compression=1, chain_fingerprint="f")
    bad_pixels = {**batch, "image": np.zeros((1, 4, 4, 7), np.uint8)}  # no such image mode
    out = write_assets(bad_pixels, config=good)
    assert out["status"][0] == "failed" and out["failed_stage"][0] == "sink"


_NAME = st.sampled_from(["title", "color", "sku", "_x", "Size2"])
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="{}"),
                max_size=12)
_VALUE = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(
    str.strip)


@given(pieces=st.lists(st.tuples(_TEXT, _NAME, st.sampled_from(["", " ", "  "])), max_size=4),
       tail=_TEXT, values=st.fixed_dictionaries({n: _VALUE for n in
                                                  ("title", "color", "sku", "_x", "Size2")}))
def test_a_plain_template_renders_what_jinja_renders(pieces, tail, values):
    """Text and bare fields are joined without jinja2: the same prompt, value for value
    (braces, newlines and any Unicode in the values included)."""
    from factory.spec import templating

    template = "".join(f"{text}{{{{{pad}{name}{pad}}}}}" for text, name, pad in pieces) + tail
    assert templating._plain_parts(template) is not None
    fast = render(template, values)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(templating, "_plain_parts", lambda _: None)  # jinja2's rendering
        assert render(template, values) == fast


def test_a_plain_template_keeps_the_size_bound_and_other_templates_use_jinja():
    from factory.spec import templating

    with pytest.raises(TemplateError, match=f"over {MAX_TEXT} characters"):
        render("{{ a }} {{ b }}", {"a": "x" * MAX_TEXT, "b": "y"})
    for template in ("{{ a|upper }}", "{% if a %}x{% endif %}", "{{ a }} }", "{{- a }}",
                     "{# c #}{{ a }}", "{{ a.b }}", "{{ a['b'] }}"):
        assert templating._plain_parts(template) is None, template
    assert render("{{ a|upper }} {{ b }}", {"a": "red", "b": "mug"}) == "RED mug"
    for constant, text in (("none", "None"), ("true", "True"), ("False", "False")):
        assert templating._plain_parts(f"{{{{ {constant} }}}} {{{{ a }}}}") is None
        assert render(f"{{{{ {constant} }}}} {{{{ a }}}}", {"a": "mug"}) == f"{text} mug"
