"""``Job.keys`` and ``Job.pools``: derived once per job and handed to every consumer; the asset
keys bit for bit the ones stored assets already carry.

The hex values below are pinned: a change to any of them changes the key of every asset a job
like these has stored (so each is rendered again), which must be deliberate. They are the keys
of a models directory without the weights (what the revision alone says); weights on disk add
what they hold (``stages.weights.weights_identity``), pinned by the last test.
"""

from __future__ import annotations

import pytest

from factory.catalog.manifest import ManifestInfo
from factory.core import settings
from factory.run.pipeline import fingerprint, sink_config, sink_task
from factory.run.work import row_rules
from factory.spec.job import parse_job
from factory.spec.keys import asset_key
from factory.store.storage import Store
from stages.chain import pool_layout

ROUTED = {"name": "pinned-routed", "manifest": {"uri": "m.csv"},
          "output": {"uri": "out", "image_format": "webp", "quality": 80},
          "prompt": {"template": "a {{ title }}"},
          "stages": [{"kind": "generate", "model": "synthetic", "name": "fast",
                      "params": {"width": 16, "height": 16}},
                     {"kind": "generate", "model": "synthetic",
                      "params": {"width": 32, "height": 32}},
                     {"kind": "segment", "model": "u2net-tiny"},
                     {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}}],
          "routes": {"default": "thumb", "chains": {"thumb": ["fast", "recolor"],
                                                    "hero": ["generate", "segment", "recolor"]}},
          "qa": {"retries": 1, "thresholds": {"delta_e_after": {"max": 12}},
                 "routes": {"hero": {"retries": 2,
                                     "thresholds": {"alpha_coverage": {"min": 0.05}}}}},
          "channels": ["meta-square", {"preset": "amazon-main", "width": 2000, "height": 2000}]}
KEPT = {"name": "pinned-kept", "manifest": {"uri": "m.csv"},
        "output": {"uri": "out", "image_format": "jpeg", "quality": 85},
        "prompt": {"template": "a {{ title }}"},
        "stages": [{"kind": "generate", "model": "synthetic",
                    "params": {"width": 32, "height": 32}},
                   {"kind": "segment", "model": "u2net-tiny"},
                   {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D"]}}],
        "keep_intermediates": ["generate", "segment"],
        "qa": {"thresholds": {"delta_e_after": {"max": 12}}},
        "seasons": [{"name": "winter", "start": "12-01", "end": "02-28", "prompt": " in snow",
                     "palette": ["#FFFFFF"]}]}
ROW = {"sku": "SKU 1/x", "variant": "default", "seed": 7, "prompt": "a mug",
       "negative_prompt": ""}

@pytest.fixture(autouse=True)
def no_weights_on_disk(tmp_path, monkeypatch):
    """An empty models directory, whatever this machine has built."""
    monkeypatch.setenv(settings.MODELS_DIR, str(tmp_path / "models"))


#: route -> (asset fingerprint, channel fingerprints, the row's lookup key)
ROUTED_KEYS = {
    None: ("d02c6568ab0e87f47ba24dc974dc7fe840f58749792614e8caa0320fded34fca",
           ("fc6b6ce99fe185acbcb1d0dc4daf910c23f7ed2aae3d91a11f014919cdf8b684",
            "476053b6288362d3ca99119d9963ccbc2b1446f3cdec9a48efbb65fb03f04778"),
           "assets/SKU%201%2Fx/default-5a88535c74f1a3aabd4b.amazon-main.jpg"),
    "thumb": ("1364409ea0ebf9fccdb53f4b9738f626d697a8a24e62b06c946c9044d9cb383b",
              ("b7d132ba11bffd111834fb2cd187c4df8df73f4adac7f2a9f9cc0b793c2a242c",
               "63eb3489b340ec4e48d3da36ee334431c37fe9857709243b70390bc5f60a6b41"),
              "assets/SKU%201%2Fx/default-17ffd7e4e234f8f8f3b9.amazon-main.jpg"),
    "hero": ("24094aeb13be481d9892bee1f1c291401e181ed2db9206528e3181aa41623867",
             ("348c585484fe040030cc7eff09cdbcd0565130f206fe2efa372272ffc8660340",
              "b7caf438577769284be58195edb1ecb733f187e97c66732041910976fe76b36c"),
             "assets/SKU%201%2Fx/default-e26f886abc8f806e1da3.amazon-main.jpg"),
}
KEPT_FINGERPRINT = "44965976bd9e9f78da3b80c5dc6e2fe9d1e6f275888169e158b0d9dc29a2e89a"
WINTER_FINGERPRINT = "eb26290f4657ed46726a3c55ec3576c442b3e7d82e589437f4393c18f85af62a"
INTERMEDIATES = {"generate": "4e9854192e5f930c4fc3b3991f3b21995863585fcbc22e748a7da90af7620c3d",
                 "segment": "16e4c8db3af4d385c0efe2e6194f916f4bff85997b72bee7b1a4bf591bd49fca"}


def test_a_routed_gated_channelled_job_keeps_its_keys_bit_for_bit() -> None:
    keys = parse_job(ROUTED).keys
    assert list(keys.chains) == [None, "thumb", "hero"]
    for route, (asset_print, channel_prints, row_key) in ROUTED_KEYS.items():
        chain = keys.chain(route)
        assert chain.fingerprint == asset_print, route
        assert chain.ext == "webp"
        assert chain.channels == channel_prints, route
        # a row is looked up by its last channel's key
        assert chain.lookup == (channel_prints[-1], "amazon-main.jpg")
        assert asset_key(*chain.lookup, ROW) == row_key, route
    assert keys.intermediates == {}


def test_a_gated_job_with_kept_intermediates_keeps_its_keys_bit_for_bit() -> None:
    job = parse_job(KEPT)
    assert list(job.keys.chains) == [None]
    chain = job.keys.chain()
    assert (chain.fingerprint, chain.ext, chain.channels) == (KEPT_FINGERPRINT, "jpg", ())
    assert chain.lookup == (KEPT_FINGERPRINT, "jpg")
    assert asset_key(*chain.lookup, ROW) == "assets/SKU%201%2Fx/default-8db7b131f3aabcf6ffa9.jpg"
    assert job.keys.intermediates == INTERMEDIATES


def test_a_season_rederives_the_keys_its_overlay_changes() -> None:
    winter = parse_job(KEPT).with_season("winter")
    assert winter.keys.chain().fingerprint == WINTER_FINGERPRINT  # the palette is recolor's
    assert asset_key(*winter.keys.chain().lookup, ROW) == (
        "assets/SKU%201%2Fx/default-fb344dfc87823e78259e.jpg")
    assert winter.keys.intermediates == INTERMEDIATES  # recolor comes after both kept stages
    # the pools hold the seasoned plans, not the spec's
    assert [p for pool in winter.pools for p in pool.plans] == list(winter.stages)


def test_run_id_budget_and_output_leave_keys_and_pools_as_they_were() -> None:
    from decimal import Decimal

    job = parse_job(ROUTED)
    other = job.with_overrides(output_uri="elsewhere", run_id="r-1", budget_usd=Decimal("2"))
    assert other.keys == job.keys and other.pools == job.pools


def test_the_pools_are_the_layout_of_the_jobs_stages() -> None:
    job = parse_job({**KEPT, "keep_intermediates": ["segment"]})
    assert job.pools == pool_layout(job.stages, fuse=True, keep=("segment",))
    assert [pool.name for pool in job.pools] == ["generate+segment", "recolor"]
    unfused = parse_job({**KEPT, "fuse_cpu_stages": False})
    assert [pool.name for pool in unfused.pools] == ["generate", "segment", "recolor"]


@pytest.mark.parametrize("route", [None, "thumb", "hero"])
def test_every_consumer_reads_the_same_keys(route: str | None, tmp_path) -> None:
    job = parse_job(ROUTED)
    asset_print, channel_prints, _ = ROUTED_KEYS[route]
    assert fingerprint(job, route=route) == asset_print
    rules = row_rules(job, ManifestInfo(2, (), {}))
    lookup = (rules.chain_fingerprint, rules.image_ext) if route is None \
        else rules.route_keys[route]
    assert lookup == (channel_prints[-1], "amazon-main.jpg")
    sink = sink_config(job, Store(str(tmp_path)))
    assert (sink.chain_fingerprint if route is None
            else sink.route_fingerprints[route]) == asset_print
    _, channel_sink = sink_task(job, Store(str(tmp_path)))
    assert (channel_sink.prints if route is None
            else channel_sink.route_prints[route]) == channel_prints


def test_the_weights_a_stage_loads_are_part_of_its_keys(tmp_path) -> None:
    """Weights replaced under the same revision (``local``) re-key the assets; the same bytes
    keep them."""
    weights = tmp_path / "models" / "u2net-tiny.onnx"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights, first edition")
    first = parse_job(KEPT).keys.chain().fingerprint
    assert first != KEPT_FINGERPRINT
    assert parse_job(KEPT).keys.chain().fingerprint == first
    weights.write_bytes(b"weights, other edition")
    assert parse_job(KEPT).keys.chain().fingerprint not in (first, KEPT_FINGERPRINT)
