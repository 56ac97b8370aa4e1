"""Hostile manifest rows and spec names: each is its row's reject (or the spec's error), never
an exception out of validation, a key outside the output prefix, or text Arrow cannot hold."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factory.run.rows import RowRules, check_sku, key_room, validate_batch
from factory.spec.job import SpecError, load_job, parse_job
from factory.spec.keys import (KeyRoom, S3_KEY_BYTES, asset_key, channel_key, intermediate_key,
                               key_safe)
from factory.spec.templating import MAX_TEXT, TemplateError, render
from factory.store.storage import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "specs"


def validate(rows: list[dict], rules: RowRules | None = None) -> list[dict]:
    """``validate_batch`` over ``rows`` as the manifest reader hands them over; every output
    column must convert to Arrow, as the sink and the recorder convert it."""
    rules = rules or RowRules(seed=1, variant="default", prompt_template="a {{ title }}")
    batch = {"row": np.arange(1, len(rows) + 1), "fields": np.array(
        [json.dumps(r) for r in rows], dtype=object),
        "parse_field": np.array([""] * len(rows), dtype=object),
        "parse_error": np.array([""] * len(rows), dtype=object)}
    out = validate_batch(batch, rules=rules)
    pa.table({name: pa.array(list(values)) for name, values in out.items()})
    return [dict(zip(out, values)) for values in zip(*out.values())]


# --- SKUs too long for the store's keys ------------------------------------------------------

def test_a_sku_over_a_local_name_is_rejected_not_an_oserror(tmp_path):
    sku = "x" * 300  # 300 bytes key-encoded: under the old 512-byte rule, over a file name
    store = Store(str(tmp_path))
    (tmp_path / "assets").mkdir()  # once any asset is written
    with pytest.raises(OSError):  # what the run's existing-work lookup met before
        store.head(asset_key("f", "png", {"sku": sku, "variant": "default"}))
    rules = RowRules(seed=1, variant="default", prompt_template="a {{ title }}",
                     key_room=KeyRoom.for_output(str(tmp_path), exts=("png",)))
    good, bad = validate([{"sku": "A1", "title": "mug"}, {"sku": sku, "title": "mug"}], rules)
    assert good["status"] == "ok" and store.head(good["output_key"]) is None
    assert bad["status"] == "rejected" and bad["row"] == 2 and bad["reject_field"] == "sku"
    assert "300 bytes" in bad["error"] and "a local store allows 255" in bad["error"]
    assert len(bad["error"]) < 400  # the SKU is quoted cut, not whole


def test_percent_encoding_counts_toward_the_limit():
    sku = "Ü" * 40  # 40 characters, 80 bytes of UTF-8, 240 bytes key-encoded
    assert len(key_safe(sku)) == 240
    assert KeyRoom().problem(sku, "default") is None
    assert "a local store allows 255" in KeyRoom().problem(sku + "Ü" * 3, "default")


def test_on_s3_the_whole_key_counts_with_the_output_prefix():
    sku = "y" * 900
    assert KeyRoom.for_output("s3://bucket", exts=("png",)).problem(sku, "default") is None
    room = KeyRoom.for_output("s3://bucket/" + "p" * 100, exts=("png",))
    problem = room.problem(sku, "default")
    assert problem is not None and f"S3 allows {S3_KEY_BYTES}" in problem
    assert "output prefix" in problem
    key = f"{room.prefix}/{asset_key('f', 'png', {'sku': sku, 'variant': 'default'})}"
    assert len(key.encode()) > S3_KEY_BYTES  # the rule counts the key the store would write


def test_every_key_built_from_a_sku_is_checked():
    row = {"sku": "s" * 150, "variant": "v" * 64}
    room = KeyRoom(exts=("png", "marketplace-square-long-name.webp"),
                   intermediates=("segment",))
    expected = [asset_key("f", "png", row),
                channel_key("f", "marketplace-square-long-name", "webp", row),
                intermediate_key("segment", "f", row)]
    assert [len(k) for k in room.keys(row["sku"], row["variant"])] == [len(k) for k in expected]
    s3 = KeyRoom(store="s3", prefix="p" * 770, exts=("png",), intermediates=("segment",))
    assert s3.problem(row["sku"], row["variant"]) is not None  # the intermediate key is longer
    assert KeyRoom(store="s3", prefix="p" * 770, exts=("png",)).problem(
        row["sku"], row["variant"]) is None


def _fits(room: KeyRoom, sku: str, variant: str) -> bool:
    """Every key fits, checked key by key and part by part (what ``problem`` promises)."""
    for key in room.keys(sku, variant):
        if room.store == "s3":
            full = f"{room.prefix}/{key}" if room.prefix else key
            if len(full.encode()) > S3_KEY_BYTES:
                return False
            continue
        parts = key.split("/")
        if any(len(part.encode()) > 255 - (34 if i == len(parts) - 1 else 0)
               for i, part in enumerate(parts)):
            return False
        if len((room.prefix.rstrip("/") or ".").encode()) + 1 + len(key.encode()) + 34 > 4095:
            return False
    return True


@settings(max_examples=300)
@given(sku=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=120),
       variant=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
       room=st.sampled_from([KeyRoom(), KeyRoom(exts=("meta-square.jpg", "pinterest.jpg"),
                                                intermediates=("segment",)),
                             KeyRoom(store="s3", prefix="p" * 800, exts=("png",))]))
def test_the_arithmetic_shortcut_agrees_with_the_key_by_key_check(sku, variant, room):
    assert (room.problem(sku, variant) is None) == _fits(room, sku, variant)


def test_the_rules_take_the_room_from_the_job():
    job = load_job(FIXTURES / "good.yaml").with_overrides(output_uri="s3://bucket/out/put")
    room = key_room(job)
    assert (room.store, room.prefix, room.exts) == ("s3", "out/put", ("png",))
    local = key_room(load_job(FIXTURES / "good.yaml"))
    assert local.store == "local" and local.prefix == "out"


# --- text a reason carries -------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("seed", "\ud800"), ("seed", "\x1b]0;pwned\x07"), ("width", "\udfff1"),
    ("variant", "bad\u202eevil"), ("sku", "a\x00b"), ("sku", "\ud83d"),
])
def test_a_reason_quoting_a_hostile_value_is_escaped(field, value):
    row = {"sku": "A1", "title": "mug", field: value}
    rejected = validate([row])[0]
    assert rejected["status"] == "rejected" and rejected["reject_field"] == field
    assert rejected["error"].isprintable() and rejected["sku"].isprintable()
    rejected["error"].encode("utf-8")  # no lone surrogate: Arrow and parquet take it


def test_a_long_value_is_cut_with_an_ellipsis():
    rejected = validate([{"sku": "A1", "title": "mug", "seed": "9x" * 5000}])[0]
    assert "…" in rejected["error"] and len(rejected["error"]) < 200


def test_a_lone_surrogate_in_a_prompt_field_rejects_its_row():
    good, bad = validate([{"sku": "A1", "title": "mug"}, {"sku": "A2", "title": "m\ud800g"}])
    assert good["status"] == "ok"
    assert bad["status"] == "rejected" and bad["reject_field"] == "title"
    assert "\\ud800" in bad["error"] and bad["prompt"] == ""


# --- templates that raise on a row's values --------------------------------------------------

@pytest.mark.parametrize("template, fields, raised", [
    ("{{ (a|int) // (b|int) }}", {"a": "1", "b": "0"}, "ZeroDivisionError"),
    ("{{ (a|float) ** (b|int) }}", {"a": "10.0", "b": "400"}, "OverflowError"),
    ("{{ a + (b|int) }}", {"a": "x", "b": "1"}, "TypeError"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(a) }}", {"a": "1"}, "RecursionError"),
    ("{{ 10 ** (a|int) }}", {"a": "9999999"}, "sandbox"),
    ("{{ 'x' * (a|int) }}", {"a": "100000000000"}, "sandbox"),
    ("{{ a|center(b|int) }}", {"a": "x", "b": "1000000000"}, "sandbox"),
    ("{{ a.center(b|int) }}", {"a": "x", "b": "1000000000"}, "sandbox"),
    ("{{ ('%' ~ b ~ 's')|format(a) }}", {"a": "x", "b": "1000000000"}, "sandbox"),
    ("{{ a.replace('', a) }}", {"a": "x" * 1000}, "sandbox"),
    ("{% for i in range(99999) %}{{ a }}{% endfor %}", {"a": "word"}, "over 16384"),
])
def test_a_template_that_raises_on_a_row_is_that_rows_reject(template, fields, raised):
    with pytest.raises(TemplateError) as err:
        render(template, fields)
    assert raised in str(err.value) and err.value.field == "prompt"
    rules = RowRules(seed=1, variant="default", prompt_template=template)
    good = {k: "1" for k in fields}
    rows = validate([{"sku": "B1", **fields}, {"sku": "B2", **good}], rules)
    assert rows[0]["status"] == "rejected" and rows[0]["reject_field"] == "prompt"
    assert raised in rows[0]["error"]


def test_a_negative_template_names_itself():
    rules = RowRules(seed=1, variant="default", prompt_template="a {{ t }}",
                     negative_template="{{ 1 // (n|int) }}")
    row = validate([{"sku": "A1", "t": "mug", "n": "0"}], rules)[0]
    assert row["reject_field"] == "negative_prompt" and "ZeroDivisionError" in row["error"]


def test_bounded_templates_still_render_ordinary_prompts():
    assert render("{{ 'a' * 3 }} {{ '%5s'|format(t) }} {{ t.center(9) }} {{ 2 ** 10 }}",
                  {"t": "mug"}) == "aaa mug mug 1024"
    assert len(render("{{ t * 4000 }}", {"t": "abcd"})) == MAX_TEXT - 384


# --- one SKU, one spelling -------------------------------------------------------------------

def test_nfc_and_nfd_spellings_are_one_sku_and_one_key():
    nfc, nfd = "Caf\u00e9-1", unicodedata.normalize("NFD", "Caf\u00e9-1")
    assert nfc != nfd and check_sku(nfd) == check_sku(nfc) == nfc
    a, b = validate([{"sku": nfc, "title": "mug"}, {"sku": nfd, "title": "mug"}])
    assert a["sku"] == b["sku"] == nfc and a["output_key"] == b["output_key"]


# --- names in the spec -----------------------------------------------------------------------

def _spec(**changes) -> dict:
    data = {"name": "j", "manifest": {"uri": "m.csv"}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }}"},
            "stages": [{"kind": "generate", "model": "synthetic"},
                       {"kind": "recolor", "model": "recolor/lab", "name": "tint",
                        "params": {"palette": "#000000"}}],
            "keep_intermediates": ["tint"]}
    return {**data, **changes}


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "tint\n", "", "x" * 65,
                                  "t\x1bint"])
def test_a_stage_name_that_would_leave_its_key_is_a_spec_error(name):
    data = _spec()
    data["stages"][1]["name"] = name
    data["keep_intermediates"] = [name]
    with pytest.raises(SpecError) as err:
        parse_job(data)
    assert any(p.startswith("stages[1].name:") for p in err.value.problems), err.value.problems
    assert str(err.value).replace("\n", "").isprintable()


def test_a_route_name_with_a_trailing_newline_is_a_spec_error():
    data = _spec(routes={"column": "tier", "chains": {"fast\n": ["generate"],
                                                      "full": ["generate", "tint"]}})
    with pytest.raises(SpecError, match="it ends in a newline"):
        parse_job(data)


def test_a_job_name_with_control_characters_is_a_spec_error():
    with pytest.raises(SpecError, match=r"name: 'j\\x1b\]0;x\\x07' holds control"):
        parse_job(_spec(name="j\x1b]0;x\x07"))


@pytest.mark.parametrize("run_id", ["run-1\n", "run-1\r", "\nrun-1", "run 1"])
def test_a_run_id_must_match_whole(run_id):
    with pytest.raises(SpecError, match="run_id"):
        parse_job(_spec(run_id=run_id))
    with pytest.raises(SpecError, match="run_id"):
        parse_job(_spec()).with_overrides(run_id=run_id)


def test_plain_names_still_validate():
    job = parse_job(_spec(run_id="run-1.a_b"))
    assert [p.name for p in job.stages] == ["generate", "tint"] and job.run_id == "run-1.a_b"


# --- no exception escapes a row --------------------------------------------------------------

_HOSTILE = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=80)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({"sku": _HOSTILE, "variant": _HOSTILE, "seed": _HOSTILE,
                              "width": _HOSTILE, "palette": _HOSTILE, "title": _HOSTILE,
                              "n": _HOSTILE}))
def test_any_row_ends_as_one_ok_row_or_one_reject(fields):
    rules = RowRules(seed=1, variant="default",
                     prompt_template="{{ title }} {{ 100 // (n|int(1)) }}")
    (row,) = validate([fields], rules)
    assert row["status"] in ("ok", "rejected")
    assert row["error"].isprintable() and row["reject_field"].isprintable()
    if row["status"] == "ok":
        assert row["output_key"].startswith(f"assets/{key_safe(row['sku'])}/")
        assert ".." not in row["output_key"].split("/")
