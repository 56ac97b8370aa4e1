"""segment/rembg: RGBA cutouts from a tiny u2net-contract ONNX model, no Ray, no network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from factory.core import images
from stages.tiny.models import make_tiny_u2net_onnx
from stages.base import Resources, StagePlan
from stages.segment_rembg import BATCHABLE_SESSIONS, RembgSegmenter, SegmentParams
from stages.registry import CARDS as ALL_CARDS

CARDS = tuple(c for c in ALL_CARDS if c.runtime is RembgSegmenter)

CARD = {c.name: c for c in CARDS}["segment/u2net-tiny"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_u2net_onnx(tmp_path_factory.mktemp("segment") / "u2net-tiny.onnx")


@pytest.fixture(autouse=True)
def rembg_env(monkeypatch, tmp_path):
    """Homes that do not hold the model; U2NET_HOME set, since it would override REMBG_HOME."""
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg-home"))
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net-home"))
    return dict(os.environ)


def stage(source: Path | str, *, num_gpus: float = 0.0, **params) -> RembgSegmenter:
    return RembgSegmenter(plan=StagePlan(
        name="segment", card=CARD, params=SegmentParams(**params), source=str(source),
        revision="local", resources=Resources(num_gpus=num_gpus)))


def run(segmenter: RembgSegmenter, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(arrays)
    batch = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
             "status": np.array(["ok"] * n, dtype=object),
             "error": np.array([""] * n, dtype=object),
             "failed_stage": np.array([""] * n, dtype=object)}
    batch.update(images.store("image", arrays))
    out = segmenter(batch)
    assert list(out["status"]) == ["ok"] * n, out["error"]
    return out


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


class _CountingSession:
    """Wraps an onnxruntime session, counting ``run`` calls and their batch sizes."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def run(self, names, feed):
        self.batches.append(len(next(iter(feed.values()))))
        return self.inner.run(names, feed)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_output_is_rgba_with_the_input_size(tiny_model):
    sizes = [(37, 53), (64, 48), (300, 200)]
    out = run(stage(tiny_model), [noise(h, w, seed=i) for i, (h, w) in enumerate(sizes)])
    produced = images.load("image", out)
    assert [a.shape for a in produced] == [(h, w, 4) for h, w in sizes]
    assert all(a.dtype == np.uint8 for a in produced)


def test_alpha_coverage_is_mean_alpha(tiny_model):
    out = run(stage(tiny_model), [noise(40, 60, seed=i) for i in range(3)])
    for array, coverage in zip(images.load("image", out), out["alpha_coverage"]):
        assert coverage == pytest.approx(array[..., 3].mean() / 255.0)
        assert 0.0 < coverage < 1.0  # a real mask, neither empty nor solid
    assert out["alpha_coverage"].dtype == np.float64


def test_batched_path_matches_rembg_remove_in_one_model_call(tiny_model):
    from rembg import remove
    from PIL import Image

    segmenter = stage(tiny_model)
    counter = segmenter.session.inner_session = _CountingSession(segmenter.session.inner_session)
    arrays = [noise(33 + 7 * i, 71 - 5 * i, seed=i) for i in range(5)]
    produced = images.load("image", run(segmenter, arrays))
    assert counter.batches == [5]
    for array, rgba in zip(arrays, produced):
        expected = np.asarray(remove(Image.fromarray(array), session=segmenter.session,
                                     only_mask=True))
        assert np.abs(rgba[..., 3].astype(int) - expected).max() <= 1
        assert np.array_equal(rgba[..., :3], array)  # colours untouched without matting


def test_unbatched_runs_per_image_and_agrees(tiny_model):
    arrays = [noise(50, 30, seed=i) for i in range(3)]
    segmenter = stage(tiny_model, batched=False)
    counter = segmenter.session.inner_session = _CountingSession(segmenter.session.inner_session)
    per_image = images.load("image", run(segmenter, arrays))
    batched = images.load("image", run(stage(tiny_model), arrays))
    assert counter.batches == [1, 1, 1]
    for a, b in zip(per_image, batched):
        assert np.abs(a.astype(int) - b).max() <= 1


def test_fixed_batch_dimension_falls_back_to_per_image(tiny_model, tmp_path):
    import onnx

    model = onnx.load(str(tiny_model))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    arrays = [noise(40, 40, seed=i) for i in range(3)]
    segmenter = stage(fixed)
    counter = segmenter.session.inner_session = _CountingSession(segmenter.session.inner_session)
    out = images.load("image", run(segmenter, arrays))
    assert counter.batches == [1, 1, 1]
    for a, b in zip(out, images.load("image", run(stage(tiny_model), arrays))):
        assert np.abs(a.astype(int) - b).max() <= 1


def test_rgba_input_alpha_is_multiplied_in(tiny_model):
    rgb = noise(48, 64, seed=3)
    rgba = np.dstack([rgb, np.full((48, 64), 255, np.uint8)])
    rgba[:, :20, 3] = 0
    rgba[:, 20:40, 3] = 128
    segmenter = stage(tiny_model)
    alpha = images.load("image", run(segmenter, [rgba]))[0][..., 3].astype(int)
    mask = images.load("image", run(segmenter, [rgb]))[0][..., 3].astype(int)
    assert (alpha[:, :20] == 0).all()
    assert np.abs(alpha[:, 20:40] - mask[:, 20:40] * 128 / 255).max() <= 1
    assert np.array_equal(alpha[:, 40:], mask[:, 40:])


def test_missing_custom_model_names_stage_and_model(tmp_path):
    with pytest.raises(RuntimeError, match="stage 'segment': model 'segment/u2net-tiny'.*"
                                           "failed to load.*does not exist"):
        stage(tmp_path / "nope.onnx")


@pytest.mark.parametrize("source, message", [
    ("rembg:no-such-model", "rembg has no session 'no-such-model'"),
    ("rembg:withoutbg", "remote service"),
    ("someone/some-hub-model", "neither 'rembg:<name>' nor an .onnx path"),
])
def test_bad_sources_are_refused_before_any_download(source, message):
    with pytest.raises(RuntimeError, match=message):
        stage(source)


def test_custom_path_outside_rembg_home_loads_and_environment_is_restored(tiny_model, rembg_env):
    segmenter = stage(tiny_model)
    assert type(segmenter.session).name() == "u2net_custom"
    assert os.environ["REMBG_HOME"] == rembg_env["REMBG_HOME"]
    assert os.environ["U2NET_HOME"] == rembg_env["U2NET_HOME"]


def test_gpu_request_asks_for_cuda_but_reports_the_device_it_got(tiny_model, monkeypatch):
    import onnxruntime
    import rembg

    asked = {}
    real = rembg.new_session

    def spy(name, **kwargs):
        asked.update(kwargs)
        return real(name, **{**kwargs, "providers": ["CPUExecutionProvider"]})

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rembg, "new_session", spy)
    assert stage(tiny_model, num_gpus=0.25).device == "cpu"
    assert asked["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    stage(tiny_model, num_gpus=0)
    assert asked["providers"] == ["CPUExecutionProvider"]


def test_deterministic_across_actors(tiny_model):
    arrays = [noise(45, 55, seed=i) for i in range(3)]
    a, b = run(stage(tiny_model), arrays), run(stage(tiny_model), arrays)
    assert all(np.array_equal(x, y) for x, y in zip(images.load("image", a),
                                                    images.load("image", b)))
    assert np.array_equal(a["alpha_coverage"], b["alpha_coverage"])


def test_alpha_matting_refines_the_mask(tiny_model):
    # The tiny model's masks stay far below rembg's default foreground threshold (240), where
    # matting has no foreground seed and rembg falls back to the raw mask; seed from the mask.
    arrays = [noise(60, 80, seed=i) for i in range(2)]
    plain = images.load("image", run(stage(tiny_model), arrays))
    alpha = np.concatenate([p[..., 3].ravel() for p in plain])
    fg, bg = int(np.percentile(alpha, 85)), max(1, int(np.percentile(alpha, 15)))
    matted = images.load("image", run(stage(
        tiny_model, alpha_matting=True, alpha_matting_foreground_threshold=fg,
        alpha_matting_background_threshold=bg, alpha_matting_erode_size=1), arrays))
    for p, m in zip(plain, matted):
        assert m.shape == p.shape
        assert np.abs(m[..., 3].astype(int) - p[..., 3]).mean() > 1.0


def test_alpha_matting_with_rembg_defaults_falls_back_like_rembg(tiny_model):
    # No tiny-model mask pixel reaches 240, so the trimap has no foreground: rembg's remove()
    # then keeps the raw mask as alpha (and decontaminates colours); so must we, row still ok.
    arrays = [noise(40, 50)]
    plain = images.load("image", run(stage(tiny_model), arrays))[0]
    matted = images.load("image", run(stage(tiny_model, alpha_matting=True), arrays))[0]
    assert plain[..., 3].max() < 240
    assert np.array_equal(matted[..., 3], plain[..., 3])


def test_post_process_mask_makes_a_binary_mask(tiny_model):
    out = images.load("image", run(stage(tiny_model, post_process_mask=True), [noise(64, 64)]))
    assert set(np.unique(out[0][..., 3])) <= {0, 255}


@pytest.mark.parametrize("name", sorted(BATCHABLE_SESSIONS))
def test_batchable_table_matches_rembg_predict(name, tiny_model):
    """Each hand-batched family, with a stand-in model, gives what rembg's own predict gives."""
    from PIL import Image
    from rembg.sessions import sessions

    side = BATCHABLE_SESSIONS[name][2]

    class _Input:
        name, shape = "x", ["batch", 3, side, side]

    class _Fake:  # a content-dependent stand-in: sigmoid of a channel mix; records its inputs
        feeds: list[np.ndarray] = []

        def get_inputs(self):
            return [_Input()]

        def run(self, names, feed):
            x = feed["x"]
            self.feeds.append(x)
            return [1 / (1 + np.exp(-(x[:, :1] * 0.8 - x[:, 2:3] * 0.5)))]

    segmenter = stage(tiny_model)
    fake_session = object.__new__(sessions[name])
    fake_session.inner_session = _Fake()
    segmenter.session = fake_session
    segmenter._batch_spec = BATCHABLE_SESSIONS[name]
    pils = [Image.fromarray(noise(30 + 9 * i, 50, seed=i)) for i in range(2)]
    masks = segmenter._batched_masks(pils)
    (batch,) = _Fake.feeds
    for i, (ours, pil) in enumerate(zip(masks, pils)):
        theirs = np.asarray(fake_session.predict(pil)[0])
        assert np.array_equal(batch[i], _Fake.feeds[-1][0])  # same mean, std and size
        assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs).max() <= 1


def test_params_are_validated():
    with pytest.raises(ValidationError):
        SegmentParams(alpha_matting_foreground_threshold=10, alpha_matting_background_threshold=20)
    with pytest.raises(ValidationError):
        SegmentParams(custom_family="birefnet")
    with pytest.raises(ValidationError):
        SegmentParams(alpha_matting_erode_size=-1)
    with pytest.raises(ValidationError):
        SegmentParams(no_such_param=1)


def test_cards_are_segment_cards_with_the_coverage_metric():
    assert [c.name for c in CARDS] == ["segment/u2net-tiny", "segment/u2net",
                                       "segment/isnet-general-use", "segment/birefnet-general",
                                       "segment/bria-rmbg"]
    for card in CARDS:
        assert card.kind == "segment" and card.runtime is RembgSegmenter
        assert card.weight_format == "onnx" and card.metrics == (("alpha_coverage", "float64"),)
        assert card.inputs == ("image",) and card.outputs == ("image",)
        assert card.source.startswith("tiny:" if card.revision == "local" else "rembg:")


def test_a_gpu_reservation_without_a_cuda_onnxruntime_is_refused_at_load(tiny_model):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(RuntimeError, match=r"reserves 0.25 GPU, but onnxruntime .* has no "
                                           r"CUDAExecutionProvider.*onnxruntime-gpu"):
        stage(tiny_model, num_gpus=0.25)
    cpu = stage(tiny_model, num_gpus=0)  # the real provider list of a CPU session
    assert cpu.session.inner_session.get_providers() == ["CPUExecutionProvider"]
    assert cpu.device == "cpu" and "device=cpu" in cpu.placement
