"""The scene stage: placement and shadow maths without a model, then each tiny inpainting
family (SD, SDXL, Flux Fill) loaded through ``from_pretrained`` and rendering a toy scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from factory.core import images
from stages.base import Resources, StagePlan
from stages.product import PRODUCT
from stages.registry import REGISTRY
from stages.scene_inpaint import (SHADOW_FLATNESS, SHADOW_SPREAD, SOLID_ALPHA, Box,
                                  FluxSceneParams, SceneParams, alpha_box, contact_shadow,
                                  fill_schedule_length, finish, inpaint_mask, place,
                                  product_layer)

FAMILIES = {"sd-inpaint": ("scene/sd-inpaint-tiny", "StableDiffusionInpaintPipeline"),
            "sdxl-inpaint": ("scene/sdxl-inpaint", "StableDiffusionXLInpaintPipeline"),
            "flux-fill": ("scene/flux-fill", "FluxFillPipeline")}


def cutout(size=(40, 40), box=(10, 12, 20, 16), *, seed=0) -> np.ndarray:
    """Random RGBA pixels, opaque inside ``box`` (top, left, height, width) only."""
    image = np.random.default_rng(seed).integers(0, 256, (*size, 4), dtype=np.uint8)
    image[..., 3] = 0
    top, left, height, width = box
    image[top:top + height, left:left + width, 3] = 255
    return image


# -- placement ------------------------------------------------------------------------------

def test_the_box_is_the_alphas_and_ignores_faint_specks():
    image = cutout()
    image[0, 0, 3] = image[39, 39, 3] = 3  # a segmenter's noise
    assert alpha_box(image[..., 3]) == Box(10, 12, 20, 16)
    assert alpha_box(np.zeros((8, 8), np.uint8)) is None


def test_the_larger_side_is_scale_times_the_canvas_centred_a_little_low():
    spot = place((20, 10), (100, 100), scale=0.6, x=0.5, y=0.55, margin=0.05)
    assert spot == Box(top=25, left=35, height=60, width=30)  # centre (55, 50)


def test_the_margins_bound_the_size_before_scale_does():
    assert place((20, 10), (100, 100), scale=1.0, x=0.5, y=0.5, margin=0.1).height == 80


def test_a_non_square_canvas_fits_the_product_on_both_sides():
    spot = place((10, 10), (50, 100), scale=0.6, x=0.5, y=0.5, margin=0.0)
    assert (spot.height, spot.width) == (30, 30)
    wide = place((10, 40), (100, 50), scale=0.6, x=0.5, y=0.5, margin=0.0)
    assert (wide.height, wide.width) == (8, 30)


@pytest.mark.parametrize("size", [(7, 31), (50, 9), (13, 13), (333, 120), (1, 90)])
def test_the_aspect_is_kept_to_the_pixel(size):
    spot = place(size, (64, 96), scale=0.7, x=0.3, y=0.6, margin=0.05)
    height, width = size
    assert abs(spot.width - spot.height * width / height) <= 0.5 + width / height / 2
    assert max(spot.height / 64, spot.width / 96) == pytest.approx(0.7, abs=1 / 64)


@pytest.mark.parametrize("x, y", [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_an_edge_centre_is_clamped_inside_the_margins(x, y):
    spot = place((20, 20), (100, 100), scale=0.4, x=x, y=y, margin=0.1)
    assert spot.top in (10, 50) and spot.left in (10, 50)  # 10 px margins, 40 px product
    assert (spot.top == 50) == (y == 1.0) and (spot.left == 50) == (x == 1.0)


def test_at_scale_one_the_layer_holds_the_cutouts_own_pixels():
    image = cutout()
    # a 20x16 product on a 40x32 canvas at scale 0.5: a factor of exactly 1
    layer = product_layer(image, (40, 32), scale=0.5, x=0.5, y=0.5, margin=0.0)
    assert layer.shape == (40, 32, 4) and layer.dtype == np.uint8
    np.testing.assert_array_equal(layer[10:30, 8:24], image[10:30, 12:28])
    assert layer[..., 3].sum() == image[..., 3].sum()  # nothing outside the product


def test_an_rgb_image_is_refused_naming_the_segment_stage():
    with pytest.raises(ValueError, match="RGBA cut-out .*segment stage"):
        product_layer(np.zeros((8, 8, 3), np.uint8), (16, 16), scale=0.5, x=0.5, y=0.5,
                      margin=0.0)


# -- mask, shadow, composite ----------------------------------------------------------------

def test_the_mask_generates_all_but_solid_product_grown_by_the_latent_cell():
    alpha = np.zeros((32, 32), np.uint8)
    alpha[8:24, 8:24] = 255
    alpha[8, 8:24] = SOLID_ALPHA - 1  # a soft top edge lets the background show through
    mask = inpaint_mask(alpha, grow=0)
    assert set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 0, alpha >= SOLID_ALPHA)
    grown = inpaint_mask(alpha, grow=2)
    kept = np.argwhere(grown == 0)
    assert kept.min(axis=0).tolist() == [11, 10] and kept.max(axis=0).tolist() == [21, 21]


def _standing(canvas=(64, 64), box=(10, 20, 30, 24)) -> np.ndarray:
    layer = np.zeros((*canvas, 4), np.uint8)
    top, left, height, width = box
    layer[top:top + height, left:left + width] = (200, 40, 40, 255)
    return layer


def test_the_shadow_lies_on_the_floor_under_the_product():
    layer = _standing()
    shadow = contact_shadow(layer[..., 3], blur=0.05)
    base, rx = 39, SHADOW_SPREAD * 12
    assert shadow.max() == pytest.approx(1.0) and shadow.min() >= 0.0
    assert not shadow[:int(base - SHADOW_FLATNESS * rx)].any()  # never up the product's sides
    darkest = np.unravel_index(shadow.argmax(), shadow.shape)
    assert darkest[0] >= base and abs(darkest[1] - 31.5) <= 1  # at the base, centred
    reach = rx + 4 * 0.05 * 24 + 2
    assert not shadow[:, :int(31.5 - reach)].any() and not shadow[:, int(31.5 + reach) + 1:].any()


def test_the_shadow_never_touches_the_products_pixels():
    layer = _standing()
    generated = np.full((64, 64, 3), 180, np.uint8)
    plain = finish(generated, layer, shadow=False, opacity=1.0, blur=0.05)
    shaded = finish(generated, layer, shadow=True, opacity=1.0, blur=0.05)
    opaque = layer[..., 3] == 255
    np.testing.assert_array_equal(shaded[opaque], layer[..., :3][opaque])
    np.testing.assert_array_equal(plain, np.where(opaque[..., None], layer[..., :3], generated))
    darker = (shaded < plain).any(axis=2)
    assert darker.any() and not darker[:35].any()  # only near and below the base (row 39)
    assert (shaded <= plain).all()


def test_an_empty_cutout_generates_the_whole_canvas_with_a_transparent_layer():
    image = cutout()
    image[..., 3] = 0
    layer = product_layer(image, (32, 48), scale=0.6, x=0.5, y=0.55, margin=0.05)
    assert layer.shape == (32, 48, 4) and not layer.any()
    assert (inpaint_mask(layer[..., 3], grow=8) == 255).all()
    generated = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(finish(generated, layer, shadow=True, opacity=1.0, blur=0.1),
                                  generated)


# -- params and schedule --------------------------------------------------------------------

@pytest.mark.parametrize("bad", [{"fill": "white"}, {"margin": 0.5}, {"scale": 0.0},
                                 {"x": 1.5}, {"width": 500}, {"strength": 0.0}])
def test_bad_params_are_rejected(bad):
    with pytest.raises(ValidationError):
        SceneParams(**bad)


def test_flux_scene_sides_are_multiples_of_16():
    with pytest.raises(ValidationError, match="multiple of 16"):
        FluxSceneParams(width=1000)
    assert FluxSceneParams().width == 1024 and FluxSceneParams.size_multiple == 16


@pytest.mark.parametrize("strength", [1.0, 0.99, 0.75, 0.35, 0.1])
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_flux_fill_runs_exactly_the_steps_asked_for(steps, strength):
    n = fill_schedule_length(steps, strength)
    runs = lambda m: m - int(max(m - min(m * strength, m), 0))  # FluxFillPipeline.get_timesteps
    assert runs(n) == steps and (n == steps or runs(n - 1) < steps)


# -- the tiny models through the stage ------------------------------------------------------

@pytest.fixture(scope="module")
def inpaint_models(tmp_path_factory) -> Path:
    from stages.tiny.models import FAMILY_MODELS, make_all

    root = tmp_path_factory.mktemp("inpaint_models")
    make_all(root, only=tuple(FAMILY_MODELS[family] for family in FAMILIES))
    return root


def stage_for(family: str, root: Path, **params):
    from stages.tiny.models import FAMILY_MODELS

    card = REGISTRY[FAMILIES[family][0]]
    values = {"width": 48, "height": 32, "steps": 1, **params}
    plan = StagePlan(name="scene", card=card, params=card.make_params(values),
                     source=str(root / FAMILY_MODELS[family]), revision="local",
                     resources=Resources(num_gpus=0, num_cpus=1), models_dir=str(root))
    return card.runtime(plan=plan)


def batch_of(cutouts, seeds) -> dict[str, np.ndarray]:
    n = len(cutouts)
    batch = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
             "status": np.array(["ok"] * n, dtype=object),
             "seed": np.array(seeds, dtype=np.int64),
             "prompt": np.array(["a mug on an oak table"] * n, dtype=object),
             "negative_prompt": np.array(["blurry"] * n, dtype=object)}
    batch.update(images.store("image", cutouts))
    return batch


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_renders_a_scene_around_the_product(family, inpaint_models,
                                                        one_torch_thread):
    stage = stage_for(family, inpaint_models)
    assert type(stage.pipe).__name__ == FAMILIES[family][1]
    empty = cutout(seed=2)
    empty[..., 3] = 0
    out = stage(batch_of([cutout(seed=0), cutout(seed=1), empty], [5, 6, 7]))
    assert list(out["status"]) == ["ok"] * 3, out["error"]
    scenes, layers = images.load("image", out), images.load(PRODUCT, out)
    for scene, layer in zip(scenes, layers):
        assert scene.shape == (32, 48, 3) and layer.shape == (32, 48, 4)
        opaque = layer[..., 3] == 255
        np.testing.assert_array_equal(scene[opaque], layer[..., :3][opaque])
    assert layers[0][..., 3].any() and not layers[2].any()
    assert (scenes[2] != 255).any()  # the empty row's canvas is generated, not the fill
    assert out["fidelity_delta_e"][:2] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert np.isnan(out["fidelity_delta_e"][2])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_same_seed_gives_the_same_bytes(family, inpaint_models, one_torch_thread):
    stage = stage_for(family, inpaint_models)
    rows = [cutout(seed=0), cutout(seed=0)]
    first = images.load("image", stage(batch_of(rows, [3, 4])))
    again = images.load("image", stage(batch_of(rows, [3, 4])))
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[0].tobytes() != first[1].tobytes()  # only the seed differs between the rows


def test_a_row_of_the_wrong_size_fails_alone(inpaint_models, one_torch_thread):
    stage = stage_for("flux-fill", inpaint_models)
    batch = batch_of([cutout(), cutout()], [1, 2])
    batch["width"], batch["height"] = np.array([40, 0]), np.array([0, 0])  # 40: not 16's
    out = stage(batch)
    assert list(out["status"]) == ["failed", "ok"]
    assert "needs multiples of 16" in out["error"][0]
