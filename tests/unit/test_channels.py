"""Channel variants and generated-image metadata, on synthetic RGBA images (no Ray, no models).

Every preset's output is measured from the encoded file: its size and ratio, the white
background within one level of 255 outside the product's reach, the fill within 3 points of
the preset's, and the XMP packet parsed back (Pillow's ``getxmp`` over defusedxml, and the
namespaced attribute with defusedxml's ElementTree).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from defusedxml import ElementTree
from PIL import Image

from factory.sink.channel_assets import ChannelSinkConfig, write_channel_assets
from factory.spec.channels import PRESETS, Channel, ChannelError, measure, render, resolve
from factory.spec.keys import channel_fingerprints, channel_key
from factory.core.provenance import (
    DIGITAL_SOURCE_TYPE, FACTORY_NS, IPTC_EXT_NS, PNG_XMP_KEY, ModelUse, Provenance,
)
from factory.sink.assets import SinkConfig
from factory.store.storage import Store

PROVENANCE = Provenance(run_id="run-7", job="unit", models=(
    ModelUse("generate", "sd-tiny", "tiny:sd-tiny", "main"),
    ModelUse("segment", "u2net-tiny", "tiny:u2net", "r1")))


def product(h: int = 96, w: int = 128, *, box=(20, 40, 70, 80), shadow: bool = True,
            alpha: bool = True) -> np.ndarray:
    """A grey scene with a red product cut out in ``box`` (y0, x0, y1, x1) and a soft shadow."""
    image = np.zeros((h, w, 4), np.uint8)
    image[..., :3] = 110
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1, :3] = (200, 30, 30)
    image[y0:y1, x0:x1, 3] = 255
    image[y0 - 1, x0:x1, 3] = 100  # a soft edge
    if shadow:
        image[y1 + 6:y1 + 10, x0 - 8:x1 + 8, 3] = 40  # a shadow well away from the product
    return image if alpha else image[..., :3].copy()


def encode(array: np.ndarray, channel: Channel) -> tuple[bytes, object, object]:
    from factory.sink.channel_assets import _render

    data, measures = _render(array, channel, PROVENANCE.packet())
    framed = render(array, channel)
    return data, measures, framed


def xmp_of(data: bytes) -> tuple[dict, ElementTree.Element]:
    """The file's XMP, parsed twice: Pillow's dict and the namespaced XML."""
    with Image.open(io.BytesIO(data)) as image:
        parsed = image.getxmp()
        raw = image.info.get("xmp") or image.info.get(PNG_XMP_KEY)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    root = ElementTree.fromstring(raw[raw.index("<x:xmpmeta"):raw.index("</x:xmpmeta>") + 12])
    return parsed, root


def check_metadata(data: bytes) -> None:
    parsed, root = xmp_of(data)
    assert parsed["xmpmeta"]["RDF"]["Description"]["DigitalSourceType"] == DIGITAL_SOURCE_TYPE
    description = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert description.get(f"{{{IPTC_EXT_NS}}}DigitalSourceType") == DIGITAL_SOURCE_TYPE
    assert description.get(f"{{{IPTC_EXT_NS}}}AISystemUsed") == "tiny:sd-tiny"
    assert description.get(f"{{{FACTORY_NS}}}RunId") == "run-7"
    models = [li.text for li in description.iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")]
    assert models == ["generate=sd-tiny (tiny:sd-tiny@main)", "segment=u2net-tiny (tiny:u2net@r1)"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_measured_from_its_file(name):
    (channel,) = resolve([name])
    data, measures, framed = encode(product(), channel)
    assert measures.rule == "", measures.reason
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (channel.width, channel.height)
        pixels = np.asarray(image)
    assert max(image.size) >= channel.min_longest
    expected_ratio = {"meta-square": 1, "instagram-portrait": 4 / 5, "story": 9 / 16,
                      "pinterest": 2 / 3}.get(name, 1)
    assert image.size[0] / image.size[1] == pytest.approx(expected_ratio, abs=1e-3)
    # white background: everything beyond the product's reach (and a JPEG chroma block) is within
    # one level of RGB 255, the frame's edge included; the shadow is gone
    x0, y0, x1, y1 = framed.footprint
    background = np.ones(pixels.shape[:2], bool)
    background[max(y0 - 16, 0):y1 + 16, max(x0 - 16, 0):x1 + 16] = False
    assert background.mean() > 0.15  # a real share of the frame is checked
    assert pixels[background].min() >= 254
    # fill: the product's box from the decoded pixels (not white) over the frame
    ys, xs = np.nonzero(pixels.min(axis=2) < 128)
    fill = max((xs.max() + 1 - xs.min()) / image.size[0], (ys.max() + 1 - ys.min()) / image.size[1])
    assert abs(fill - PRESETS[name]["fill"]) <= 0.03
    assert abs(measures.fill - PRESETS[name]["fill"]) <= 0.03
    check_metadata(data)


def test_preset_figures_match_the_channels_rules():
    amazon, google, ebay = resolve(["amazon-main", "google-shopping", "ebay"])
    assert amazon.fill == 0.85 and amazon.background == "white" and amazon.edge_clear
    assert max(amazon.width, amazon.height) >= 1600 and amazon.format == "jpeg"
    assert min(google.width, google.height) >= 1500 and google.max_megapixels == 64
    assert google.max_bytes == 16 * 1024 * 1024 and google.metadata
    assert ebay.quality >= 90 and max(ebay.width, ebay.height) >= 1600
    sizes = {c.name: (c.width, c.height) for c in resolve(
        ["meta-square", "instagram-portrait", "story", "pinterest"])}
    assert sizes == {"meta-square": (1080, 1080), "instagram-portrait": (1080, 1350),
                     "story": (1080, 1920), "pinterest": (1000, 1500)}


def test_a_wide_subject_is_padded_with_the_background():
    """A product wider than a 9:16 frame allows: the frame grows, white fills above and below."""
    wide = product(64, 128, box=(28, 4, 36, 124), shadow=False)
    (story,) = resolve(["story"])
    data, measures, framed = encode(wide, story)
    assert measures.rule == ""
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    x0, y0, x1, y1 = framed.subject
    assert (x1 - x0) / story.width == pytest.approx(0.80, abs=0.01)  # width binds
    assert pixels[: y0 - 40].min() >= 254 and pixels[y1 + 40:].min() >= 254  # padded white


@pytest.mark.parametrize("fmt,background", [("png", "transparent"), ("webp", "transparent"),
                                            ("webp", "white"), ("png", "keep")])
def test_custom_channels_carry_metadata_in_every_format(fmt, background):
    (channel,) = resolve([{"name": "custom", "ratio": "3:2", "longest": 300, "format": fmt,
                           "background": background, "fill": 0.7, "quality": 80}])
    assert (channel.width, channel.height) == (300, 200)
    data, measures, _ = encode(product(), channel)
    assert measures.rule == "", measures.reason
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == {"png": "PNG", "webp": "WEBP"}[fmt]
        assert image.size == (300, 200)
        if background == "transparent":
            alpha = np.asarray(image.getchannel("A"))
            assert alpha[0].max() <= 1 and alpha[:, -1].max() <= 1  # the edge is clear
        if background == "keep":  # padding takes the image's own edge colour, no border
            assert tuple(np.asarray(image)[0, 0]) == (110, 110, 110)
    assert measures.purity is None if background == "keep" else measures.purity == 1.0
    check_metadata(data)


def test_without_alpha_the_whole_image_is_the_subject():
    flat = product(alpha=False)
    meta, amazon = resolve(["meta-square", "amazon-main"])
    _, measures, framed = encode(flat, meta)
    assert measures.rule == "" and measures.fill == pytest.approx(0.80, abs=0.01)
    assert framed.subject == framed.footprint  # the whole image, scaled to 80% of the frame
    _, refused, _ = encode(flat, amazon)
    assert refused.rule == "cutout"  # Amazon's white background needs a cut-out product


def test_a_broken_rule_is_named():
    (tight,) = resolve([{"preset": "meta-square", "name": "tight", "max_bytes": 1000}])
    _, measures, _ = encode(product(), tight)
    assert measures.rule == "bytes" and "> 1000" in measures.reason
    (amazon,) = resolve(["amazon-main"])
    framed = render(product(), amazon)
    pixels = np.asarray(framed.pixels).copy()
    pixels[-3:, :] = 200  # a grey band at the frame's bottom edge: a shadow
    assert measure(pixels, framed, amazon).rule == "background"
    off = Channel(name="off", width=1080, height=1080, fill=0.5)
    assert measure(np.asarray(render(product(), Channel(name="a", width=1080, height=1080,
                                                        fill=0.8)).pixels),
                   render(product(), Channel(name="a", width=1080, height=1080, fill=0.8)),
                   off).rule == "fill"
    assert measure(pixels, framed, amazon, encoded=b"no xmp").rule == "background"
    assert measure(np.asarray(framed.pixels), framed, amazon, encoded=b"x").rule == "metadata"


@pytest.mark.parametrize("entries,problem", [
    (["amazon"], "unknown channel preset 'amazon'"),
    ([{"preset": "amazon-main", "width": 800, "height": 800}], "longest side is 800 px"),
    ([{"preset": "ebay", "quality": 80}], "below this channel's minimum 90"),
    ([{"name": "t", "width": 500, "height": 500, "background": "transparent"}], "png or webp"),
    (["pinterest", "pinterest"], "listed twice"),
    ([{"name": "x", "width": 500, "height": 500, "colour": "red"}], "colour: unknown key"),
    ([{"name": "x", "ratio": "4:5"}], "'ratio' with 'longest'"),
    ([{"name": "Bad Name", "width": 500, "height": 500}], "name"),
])
def test_bad_channels_are_rejected_naming_the_entry(entries, problem):
    with pytest.raises(ChannelError) as info:
        resolve(entries)
    assert any(problem in p and p.startswith("channels") for p in info.value.problems), \
        info.value.problems


def test_spec_channels_are_parsed_and_checked():
    from factory.spec.job import SpecError, parse_job

    spec = {"name": "j", "manifest": {"uri": "m.csv"}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }}"},
            "stages": [{"kind": "generate", "model": "synthetic"}],
            "channels": ["meta-square", {"preset": "amazon-main", "width": 2000,
                                         "height": 2000}]}
    job = parse_job(spec)
    assert [(c.name, c.width) for c in job.channels] == [("meta-square", 1080),
                                                          ("amazon-main", 2000)]
    assert parse_job({**spec, "channels": []}).channels == ()
    with pytest.raises(SpecError, match=r"channels\[1\]: .*longest side is 900 px"):
        parse_job({**spec, "channels": ["story", {"preset": "story", "name": "small",
                                                  "width": 506, "height": 900}]})


def test_the_demo_job_renders_at_least_two_channels():
    from pathlib import Path

    from factory.spec.job import load_job

    demo = load_job(Path(__file__).resolve().parents[2] / "jobs" / "demo.yaml")
    assert len(demo.channels) >= 2
    assert len({c.name for c in demo.channels}) == len(demo.channels)


def test_channel_keys_are_deterministic_and_name_the_channel():
    from factory.spec.job import parse_job

    stages = parse_job({"name": "j", "manifest": {"uri": "m.csv"}, "output": {"uri": "o"},
                        "stages": [{"kind": "generate", "model": "synthetic"}]}).stages
    a, b, c = resolve(["meta-square", "pinterest", "story"])
    row = {"sku": "SKU 1/x", "variant": "hero", "seed": 3}
    prints = channel_fingerprints(stages, (a.fingerprint_text(), b.fingerprint_text()))
    assert prints == channel_fingerprints(stages, (a.fingerprint_text(), b.fingerprint_text()))
    key = channel_key(prints[0], a.name, a.extension, row)
    assert key.startswith("assets/SKU%201%2Fx/hero-") and key.endswith(".meta-square.jpg")
    # a change to one channel changes its own key and the last (the row's marker) only
    other = channel_fingerprints(stages, (a.fingerprint_text(), c.fingerprint_text()))
    assert other[0] == prints[0] and other[1] != prints[1]
    changed = channel_fingerprints(stages, (a.model_copy(update={"quality": 80})
                                            .fingerprint_text(), b.fingerprint_text()))
    assert changed[0] != prints[0] and changed[1] != prints[1]


def sink_batch(statuses: list[str], store_keys: list[str]) -> dict[str, np.ndarray]:
    n = len(statuses)
    images = np.zeros((n, 96, 128, 4), np.uint8)
    for i in range(n):
        images[i] = product()
    return {"sku": np.array([f"S{i}" for i in range(n)], object),
            "variant": np.array(["hero"] * n, object), "seed": np.arange(n),
            "row": np.arange(1, n + 1), "status": np.array(statuses, object),
            "error": np.array([""] * n, object), "failed_stage": np.array([""] * n, object),
            "output_key": np.array(store_keys, object), "bytes": np.full(n, 77),
            "image": images}


def channel_config(path, channels, prints) -> ChannelSinkConfig:
    sink = SinkConfig(store=Store(str(path)), image_format="png", quality=90, png_compression=1,
                      chain_fingerprint="f")
    return ChannelSinkConfig(sink=sink, channels=channels, prints=prints, provenance=PROVENANCE)


def test_the_sink_fans_each_row_out_to_its_channels(tmp_path):
    channels = resolve(["meta-square", {"name": "thumb", "width": 200, "height": 200,
                                        "format": "webp", "max_bytes": 100_000}])
    prints = ("fp-a", "fp-b")
    config = channel_config(tmp_path, channels, prints)
    rows = [{"sku": f"S{i}", "variant": "hero", "seed": i} for i in range(4)]
    marker = [channel_key("fp-b", "thumb", "webp", r) for r in rows]
    batch = sink_batch(["ok", "failed", "rejected", "exists"], marker)
    out = write_channel_assets(batch, config=config)
    got = list(zip(out["sku"], out["channel"], out["status"]))
    assert got == [("S0", "meta-square", "ok"), ("S0", "thumb", "ok"),
                   ("S1", "meta-square", "failed"), ("S1", "thumb", "failed"),
                   ("S2", "", "rejected"),
                   ("S3", "meta-square", "ok"), ("S3", "thumb", "ok")]
    assert list(out["written"]) == [True, True, False, False, False, False, False]
    assert out["output_key"][1] == marker[0] and out["output_key"][6] == marker[3]
    assert out["bytes"][6] == 77  # the marker's size from the work list
    assert (tmp_path / marker[0]).is_file()
    assert out["width"][0] == 1080 and out["fill_ratio"][0] == pytest.approx(0.8, abs=0.03)
    assert np.isnan(out["fill_ratio"][2]) and out["background_purity"][1] == 1.0
    check_metadata((tmp_path / out["output_key"][0]).read_bytes())
    assert "image" not in out


def test_a_failing_channel_holds_back_the_rows_marker(tmp_path):
    channels = resolve([{"preset": "meta-square", "name": "tiny-file", "max_bytes": 500},
                        "pinterest"])
    config = channel_config(tmp_path, channels, ("a", "b"))
    out = write_channel_assets(sink_batch(["ok"], ["k"]), config=config)
    assert list(out["status"]) == ["failed", "failed"]
    assert list(out["channel_rule"]) == ["bytes", "held"]
    assert list(out["failed_stage"]) == ["channel", "channel"]
    assert "tiny-file: bytes:" in out["error"][0] and "held back" in out["error"][1]
    assert list(out["output_key"]) == ["", ""] and not any(out["written"])
    assert not list(tmp_path.rglob("*.jpg"))  # nothing written: the next run renders it again
