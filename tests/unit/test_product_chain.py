"""The customer's product through the whole chain on tiny models, in one process: source →
studio key → scene (inpainting) → upscale → recolor → LoRA. With the product protected its
pixels leave the chain as they came (fidelity_delta_e ≤ 1.0); toned with the scene, they do not
(the figure can fail)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from factory.core import images
from factory.catalog.product_photos import make_product
from stages.base import StagePlan
from stages.chain import StageChain
from stages.product import FIDELITY, PRODUCT
from stages.registry import get_card
from stages.weights import resolve_source

KINDS = ("bottle", "mug", "sneaker")


def plans(models_dir, recolor_target: str, lora_protects: bool = True) -> list[StagePlan]:
    chain = [("source/photo", {}), ("segment/studio-key", {}),
             ("scene/sd-inpaint-tiny", {"width": 64, "height": 64, "steps": 1}),
             ("upscale/swin2sr-tiny-x2", {"tile": 64, "overlap": 16, "min_tile": 32}),
             ("recolor/lab", {"palette": ["#1B3A5C", "#F2E8D5"], "strength": 1.0,
                              "target": recolor_target}),
             ("lora/sd-tiny-brand", {"lora": "tiny:sd-tiny-lora", "strength": 0.5,
                                     "steps": 1, "protect_product": lora_protects})]
    out = []
    for name, params in chain:
        card = get_card(name)
        out.append(StagePlan(name=card.kind, card=card, params=card.make_params(params),
                             source=resolve_source(card.source, models_dir) if card.source
                             else "", revision="local", resources=card.resources,
                             models_dir=str(models_dir)))
    return out


def batch(tmp_path) -> dict[str, np.ndarray]:
    uris = []
    for kind in KINDS:
        rgb, _ = make_product(kind, size=96, seed=1)
        path = tmp_path / f"{kind}.png"
        Image.fromarray(rgb).save(path)
        uris.append(str(path))
    n = len(KINDS)
    return {"sku": np.array([k.upper() for k in KINDS], dtype=object),
            "variant": np.array(["v"] * n, dtype=object), "seed": np.arange(n) + 5,
            "prompt": np.array(["on a marble counter"] * n, dtype=object),
            "negative_prompt": np.array([""] * n, dtype=object),
            "width": np.zeros(n, dtype=np.int64), "height": np.zeros(n, dtype=np.int64),
            "palette": np.array([""] * n, dtype=object),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object),
            "failed_stage": np.array([""] * n, dtype=object),
            "source_uri": np.array(uris, dtype=object)}


@pytest.fixture(scope="module")
def chain_outputs(models_dir, tmp_path_factory, one_torch_thread):
    tmp = tmp_path_factory.mktemp("photos")
    return {target: StageChain(plans=plans(models_dir, target))(batch(tmp))
            for target in ("scene", "all")}


def test_the_protected_product_leaves_the_chain_as_it_came(chain_outputs):
    out = chain_outputs["scene"]
    assert list(out["status"]) == ["ok"] * len(KINDS), out["error"]
    assert all(0.0 <= f <= 1.0 for f in out[FIDELITY]), out[FIDELITY]
    for image, layer in zip(images.load("image", out), images.load(PRODUCT, out)):
        assert image.shape == (128, 128, 3) and layer.shape == (128, 128, 4)
        solid = layer[..., 3] == 255
        assert solid.mean() > 0.05  # the product is there, and is a real part of the asset
        # the scene around it is the models' (not the source photo's sweep)
        assert np.abs(image[~solid].astype(int) - 235).mean() > 10


def test_toning_everything_moves_the_product_and_the_figure_says_so(chain_outputs):
    toned = chain_outputs["all"][FIDELITY]
    assert (toned > 5.0).all(), toned
    assert (toned > chain_outputs["scene"][FIDELITY] + 4.0).all()
