"""The product layer: the customer's own pixels kept through every stage that may change them,
and the fidelity figure that says whether they were."""

from __future__ import annotations

import math

import numpy as np

from factory.core import images
from stages.base import StagePlan
from stages.product import (FIDELITY, PRODUCT, composite, fidelity_delta_e, product_mask,
                            resize_layer)
from stages.registry import get_card


def _scene_and_layer(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A grey-blue scene with a red square product (its layer: opaque inside, soft edge)."""
    rng = np.random.default_rng(0)
    scene = np.empty((size, size, 3), dtype=np.uint8)
    scene[...] = (90, 110, 150)
    scene += rng.integers(0, 20, size=scene.shape, dtype=np.uint8)
    layer = np.zeros((size, size, 4), dtype=np.uint8)
    q = size // 4
    layer[q:3 * q, q:3 * q] = (200, 40, 30, 255)
    layer[q - 1, q:3 * q, 3] = 100  # a soft top edge, under half opaque
    layer[q - 1, q:3 * q, :3] = (200, 40, 30)
    return composite(scene, layer), layer


def _batch(image: np.ndarray, layer: np.ndarray) -> dict[str, np.ndarray]:
    out = {"sku": np.array(["P1"], dtype=object), "status": np.array(["ok"], dtype=object),
           "error": np.array([""], dtype=object), "failed_stage": np.array([""], dtype=object),
           "seed": np.array([1]), "prompt": np.array(["x"], dtype=object),
           "negative_prompt": np.array([""], dtype=object), FIDELITY: np.array([0.0])}
    out.update(images.store("image", [image]))
    out.update(images.store(PRODUCT, [layer]))
    return out


def _run(card_name: str, batch: dict[str, np.ndarray], **params) -> dict[str, np.ndarray]:
    card = get_card(card_name)
    plan = StagePlan(name=card.kind, card=card, params=card.make_params(
        {**card.example_params, **params}), source="", revision="x", resources=card.resources)
    return card.runtime(plan=plan)(batch)


def test_composite_puts_opaque_product_pixels_back_exactly_and_blends_the_edge():
    scene, layer = _scene_and_layer()
    noise = np.full_like(scene, 7)
    out = composite(noise, layer)
    opaque = layer[..., 3] == 255
    assert (out[opaque] == layer[..., :3][opaque]).all()
    assert (out[layer[..., 3] == 0] == 7).all()
    edge = out[15, 20]  # alpha 100: the product over the scene, 100/255 of the way
    assert abs(int(edge[0]) - round((200 * 100 + 7 * 155) / 255)) <= 1


def test_resized_layer_has_no_dark_fringe_and_keeps_its_colour():
    _, layer = _scene_and_layer()
    big = resize_layer(layer, (256, 256))
    assert big.shape == (256, 256, 4)
    edge = (big[..., 3] > 16) & (big[..., 3] < 240)
    assert edge.sum() > 100
    # premultiplied resampling: the edge keeps the product's red; a straight resize would
    # blend in the transparent pixels' black (R near 200 * alpha)
    assert big[edge][:, 0].min() >= 170


def test_fidelity_is_zero_for_the_product_itself_and_large_when_it_changes():
    scene, layer = _scene_and_layer()
    assert fidelity_delta_e(scene, layer) < 1e-6
    recoloured = scene.copy()
    recoloured[product_mask(layer)] = (40, 160, 60)
    assert fidelity_delta_e(recoloured, layer) > 30
    assert math.isnan(fidelity_delta_e(scene, np.zeros_like(layer)))


def test_the_measured_pixels_are_eroded_away_from_the_edge():
    _, layer = _scene_and_layer()
    mask = product_mask(layer)
    assert mask.sum() == (32 - 4) ** 2  # the 32-px square, 2 px in from each side


def test_upscale_resizes_the_layer_and_keeps_the_product_pixels():
    scene, layer = _scene_and_layer()
    out = _run("upscale/lanczos", _batch(scene, layer), scale=4)
    image, grown = images.load("image", out)[0], images.load(PRODUCT, out)[0]
    assert image.shape == (256, 256, 3) and grown.shape == (256, 256, 4)
    assert out[FIDELITY][0] < 1.0


def test_recolor_of_the_scene_leaves_the_product_exactly_as_it_came():
    scene, layer = _scene_and_layer()
    out = _run("recolor/lab", _batch(scene, layer), strength=1.0)
    image = images.load("image", out)[0]
    opaque = layer[..., 3] == 255
    assert (image[opaque] == scene[opaque]).all()
    assert (image[~opaque & (layer[..., 3] == 0)] != scene[layer[..., 3] == 0]).any()
    assert out[FIDELITY][0] < 0.5


def test_recolor_of_everything_changes_the_product_and_fidelity_says_so():
    scene, layer = _scene_and_layer()
    out = _run("recolor/lab", _batch(scene, layer), strength=1.0, target="all")
    assert out[FIDELITY][0] > 5.0


def test_recolor_of_the_product_alone_leaves_the_scene():
    scene, layer = _scene_and_layer()
    out = _run("recolor/lab", _batch(scene, layer), strength=1.0, target="product")
    image = images.load("image", out)[0]
    clear = layer[..., 3] == 0
    assert (image[clear] == scene[clear]).all()
    assert out[FIDELITY][0] > 5.0


def test_new_protection_options_at_their_defaults_keep_existing_keys():
    from factory.spec.keys import params_hash

    card = get_card("recolor/lab")
    plan = StagePlan(name="recolor", card=card, params=card.make_params(card.example_params),
                     source="", revision="x", resources=card.resources)
    hashed = params_hash(plan)
    assert "target" not in plan.params.key_params()
    changed = StagePlan(name="recolor", card=card, params=card.make_params(
        {**card.example_params, "target": "all"}), source="", revision="x",
        resources=card.resources)
    assert params_hash(changed) != hashed
