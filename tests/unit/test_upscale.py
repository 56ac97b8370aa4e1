"""The upscale stage: exact output sizes, alpha, tiling without seams, OOM retry, refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from factory.core import images
from stages.tiny.models import make_tiny_swin2sr
from stages.base import Resources, StagePlan
from stages.device_faults import DeviceFault
from stages.upscale_swin2sr import (
    LanczosParams,
    LanczosUpscaler,
    Swin2SRUpscaler,
    UpscaleParams,
)
from stages.registry import CARDS as ALL_CARDS
from stages.simulated import is_simulated

CARDS = tuple(c for c in ALL_CARDS if c.kind == "upscale" and not is_simulated(c))

CARD = {card.name: card for card in CARDS}


@pytest.fixture(scope="module")
def tiny_x2(tmp_path_factory):
    return make_tiny_swin2sr(tmp_path_factory.mktemp("swin2sr") / "x2", upscale=2)


@pytest.fixture(scope="module")
def tiny_x4(tmp_path_factory):
    return make_tiny_swin2sr(tmp_path_factory.mktemp("swin2sr") / "x4", upscale=4)


def swin(path, *, allow_pickle: bool = False, **params) -> Swin2SRUpscaler:
    return Swin2SRUpscaler(plan=StagePlan(
        name="upscale", card=CARD["upscale/swin2sr-tiny-x2"], params=UpscaleParams(**params),
        source=str(path), revision="local", resources=Resources(), allow_pickle=allow_pickle))


def lanczos(scale: int) -> LanczosUpscaler:
    return LanczosUpscaler(plan=StagePlan(
        name="upscale", card=CARD["upscale/lanczos"], params=LanczosParams(scale=scale),
        source="", revision="local", resources=Resources()))


def batch(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(arrays)
    out = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
           "status": np.array(["ok"] * n, dtype=object),
           "error": np.array([""] * n, dtype=object),
           "failed_stage": np.array([""] * n, dtype=object)}
    out.update(images.store("image", arrays))
    return out


def run(stage, arrays: list[np.ndarray]) -> list[np.ndarray]:
    out = stage(batch(arrays))
    assert list(out["status"]) == ["ok"] * len(arrays), out["error"]
    return images.load("image", out)


def noise(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("tile", [0, 32])
def test_output_is_exactly_scale_times_for_odd_sizes_rgb_and_rgba(tiny_x2, tiny_x4, tile):
    rgb, rgba = noise(37, 53, 3), noise(37, 53, 4, seed=1)
    for path, s in ((tiny_x2, 2), (tiny_x4, 4)):
        out = run(swin(path, tile=tile, overlap=8, min_tile=16), [rgb, rgba])
        assert [a.shape for a in out] == [(37 * s, 53 * s, 3), (37 * s, 53 * s, 4)]
        assert all(a.dtype == np.uint8 for a in out)
        assert out[0].std() > 0  # the model produced an image, not a constant fill


def test_tiny_images_smaller_than_a_window_upscale(tiny_x2):
    out = run(swin(tiny_x2), [noise(1, 1), noise(3, 5, 4), noise(9, 2)])
    assert [a.shape for a in out] == [(2, 2, 3), (6, 10, 4), (18, 4, 3)]


def test_alpha_is_lanczos_resized_and_rgb_ignores_it(tiny_x2):
    rgba = noise(37, 53, 4)
    rgba[..., 3] = 0
    rgba[:, 27:, 3] = 255  # left: transparent, right: opaque
    stage = swin(tiny_x2, tile=0)
    out = run(stage, [rgba, np.ascontiguousarray(rgba[..., :3])])
    alpha = out[0][..., 3]
    # Lanczos (3 lobes) only rings within a few output pixels of the edge at x = 54.
    assert (alpha[:, :48] == 0).all() and (alpha[:, 60:] == 255).all()
    expected = Image.fromarray(rgba[..., 3]).resize((106, 74), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(alpha, np.asarray(expected))
    np.testing.assert_array_equal(out[0][..., :3], out[1])  # RGB went through the model alone


def _amplified(stage: Swin2SRUpscaler) -> Swin2SRUpscaler:
    # The random tiny model's output is nearly flat (std ~6 grey levels), which would hide tile
    # errors in uint8 rounding; scaling its last convolution by 8 gives std ~23, no clipping.
    with torch.no_grad():
        stage.model.upsample.final_convolution.weight.mul_(8)
        stage.model.upsample.final_convolution.bias.mul_(8)
    return stage


def _edges(length: int, tile: int, step: int) -> list[int]:
    """Tile starts and ends along one axis: every ``step``, the last tile flush with the edge."""
    starts = [*range(0, length - tile, step), length - tile]
    return sorted({e for start in starts for e in (start, start + tile)} - {0, length})


@pytest.mark.parametrize(("tile", "overlap", "tiles", "mean", "p99", "worst"), [
    (32, 8, 4 * 5, 0.5, 3, 8),
    (48, 16, 3 * 4, 0.1, 1, 2),
])
def test_tiled_run_matches_untiled_without_seams(tiny_x2, tile, overlap, tiles, mean, p99, worst):
    """Bounds sit just above what this image measures: |diff| mean 0.37, p99 2, max 5 grey
    levels at tile 32/overlap 8; mean 0.03, p99 1, max 1 at tile 48/overlap 16.

    Tiles sit on the untiled run's window grid, so only the few pixels near a tile's edge
    (where its convolutions saw padding) differ, and the feather gives those pixels ~0 weight.
    Measured failures of these bounds: a plain average of overlapping tiles (mean 2.7, max 34,
    edge mean 5.9 vs 1.7 elsewhere); a ramp that trusts tile edges (mean 0.9); tiles 3 px off
    the window grid (mean 0.8, p99 6; the window grid alone moves the untiled output by 0.7).
    """
    image = noise(96, 120)  # float32: the bounds are the blend's, not bf16 rounding's
    untiled = _amplified(swin(tiny_x2, tile=0, dtype="float32")).upscale(image).astype(int)
    tiled_stage = _amplified(swin(tiny_x2, tile=tile, overlap=overlap, min_tile=16,
                                  dtype="float32"))
    shapes = []
    forward = tiled_stage.model.forward
    tiled_stage.model.forward = lambda pixel_values, **kw: (
        shapes.append(tuple(pixel_values.shape)) or forward(pixel_values, **kw))
    tiled = tiled_stage.upscale(image).astype(int)
    assert sum(n for n, *_ in shapes) == tiles and {s[2:] for s in shapes} == {(tile, tile)}
    assert untiled.std() > 15

    diff = np.abs(tiled - untiled).max(axis=2)
    assert diff.mean() < mean and np.percentile(diff, 99) <= p99 and diff.max() <= worst
    # No seam: output pixels within 2 px of an inner tile edge are no worse than the rest.
    edge = np.zeros(diff.shape, dtype=bool)
    for e in _edges(96, tile, tile - overlap):
        edge[2 * e - 2: 2 * e + 2] = True
    for e in _edges(120, tile, tile - overlap):
        edge[:, 2 * e - 2: 2 * e + 2] = True
    assert diff[edge].mean() < 1.5 * diff[~edge].mean() + 0.1


@pytest.mark.parametrize("error", [
    lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("CUDA error: out of memory"),
])
def test_out_of_memory_retries_at_half_the_tile(tiny_x2, error):
    image = noise(80, 72, 4)
    stage = swin(tiny_x2, tile=64, overlap=8, min_tile=16)
    forward, tried = stage.model.forward, []

    def small_tiles_only(pixel_values, **kwargs):
        tried.append(max(pixel_values.shape[2:]))
        if max(pixel_values.shape[2:]) > 32:
            raise error()
        return forward(pixel_values, **kwargs)

    stage.model.forward = small_tiles_only
    out = run(stage, [image])[0]
    assert tried[0] == 64 and set(tried[1:]) == {32}
    np.testing.assert_array_equal(out, swin(tiny_x2, tile=32, overlap=8).upscale(image))


def test_out_of_memory_below_min_tile_is_raised_and_other_errors_are_not_retried(tiny_x2):
    stage = swin(tiny_x2, tile=64, overlap=8, min_tile=64)
    calls = []

    def oom(pixel_values, **kwargs):
        calls.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    stage.model.forward = oom
    with pytest.raises(torch.cuda.OutOfMemoryError):
        stage.upscale(noise(80, 72))
    assert len(calls) == 1
    with pytest.raises(DeviceFault, match="OutOfMemoryError"):  # a device fault: the run's
        stage(batch([noise(80, 72)]))

    stage = swin(tiny_x2, tile=64, overlap=8, min_tile=16)
    stage.model.forward = lambda pixel_values, **kw: (calls.append(1), 1 / 0)[1]
    calls.clear()
    with pytest.raises(ZeroDivisionError):
        stage.upscale(noise(80, 72))
    assert len(calls) == 1


def test_scale_is_the_models_own_and_a_disagreeing_scale_fails_to_load(tiny_x2, tiny_x4):
    assert swin(tiny_x4).scale == 4 and swin(tiny_x2, scale=2).scale == 2
    with pytest.raises(RuntimeError, match=r"params.scale is 4 but model .* upscales by 2"):
        swin(tiny_x2, scale=4)
    with pytest.raises(RuntimeError, match=r"params.scale is 2 but model .* upscales by 4"):
        swin(tiny_x4, scale=2)


def test_pickle_weights_are_refused_unless_allowed(tiny_x2, tmp_path):
    copy = tmp_path / "x2-with-pickle"
    shutil.copytree(tiny_x2, copy)
    torch.save({"not": "weights"}, copy / "pytorch_model.bin")
    with pytest.raises(RuntimeError, match="allow_pickle"):
        swin(copy)
    assert swin(copy, allow_pickle=True).scale == 2


def test_lanczos_is_exactly_pil(tiny_x2):
    rgb, rgba = noise(37, 53, 3), noise(37, 53, 4, seed=2)
    out = run(lanczos(3), [rgb, rgba])
    for source, result in zip((rgb, rgba), out):
        expected = Image.fromarray(source).resize((159, 111), Image.Resampling.LANCZOS)
        np.testing.assert_array_equal(result, np.asarray(expected))
    assert run(lanczos(1), [rgb])[0].tobytes() == rgb.tobytes()


def test_params_are_checked():
    with pytest.raises(ValidationError):
        UpscaleParams(scale=3)
    with pytest.raises(ValidationError, match="overlap"):
        UpscaleParams(tile=32, overlap=32)
    UpscaleParams(tile=0, overlap=64)  # untiled: overlap unused
    with pytest.raises(ValidationError):
        LanczosParams(scale=9)
    with pytest.raises(ValidationError):
        UpscaleParams(sharpen=True)


def test_cards_are_well_formed_with_valid_default_params():
    assert list(CARD) == ["upscale/swin2sr-tiny-x2", "upscale/swin2sr-tiny-x4",
                          "upscale/swin2sr-x2", "upscale/swin2sr-x4", "upscale/lanczos",
                          "upscale/replicate-real-esrgan"]
    for card in CARDS:
        card.params()  # defaults valid for every card: scale None means the model's own
        assert card.kind == "upscale" and card.inputs == card.outputs == ("image",)
        assert (card.weight_format == "none") == (card.source == "")
        assert card.resources.num_gpus == (0.5 if card.source.startswith("caidas/") else 0)
    assert CARD["upscale/swin2sr-tiny-x4"].source == "tiny:swin2sr-tiny-x4"
    assert CARD["upscale/swin2sr-tiny-x2"].revision == "local"


def test_a_batch_shares_forward_passes_across_images_and_copies_to_the_host_once(
        tiny_x2, monkeypatch):
    arrays = [noise(80, 72, seed=i) for i in range(3)] + [noise(37, 53, 4, seed=3)]
    one_by_one = swin(tiny_x2, tile=48, overlap=8, min_tile=16)
    expected = [one_by_one.upscale(a) for a in arrays]
    stage = swin(tiny_x2, tile=48, overlap=8, min_tile=16, tile_batch=8)
    shapes, copies = [], []
    forward = stage.model.forward
    stage.model.forward = lambda pixel_values, **kw: (
        shapes.append(tuple(pixel_values.shape)) or forward(pixel_values, **kw))
    to_host = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu",
                        lambda self, *a, **kw: copies.append(1) or to_host(self, *a, **kw))
    out = run(stage, arrays)
    # 3 images x 4 tiles of 48x48 in passes of 8, then the RGBA image's 2 tiles of 40x48
    assert shapes == [(8, 3, 48, 48), (4, 3, 48, 48), (2, 3, 40, 48)]
    assert len(copies) == 1  # the blend stays on the device; one copy per batch
    for a, b in zip(out, expected):
        np.testing.assert_array_equal(a, b)  # batching changes nothing
