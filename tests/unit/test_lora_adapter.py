"""The model side of LoRA training on the tiny SD model: hermetic, CPU, no Ray.

A few steps lower the loss on a fixed batch; a checkpoint restores the adapter and optimizer
exactly (a resumed run goes on as the uninterrupted one would); the saved adapter loads in the
lora stage and changes its output; the lineage names the adapter a lora stage applied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factory.lora.adapter import ADAPTER_FILE, AdapterTrainer, to_pixels
from stages.tiny.models import make_tiny_sd

CAPTIONS = ["a product photo in acme style"] * 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("train_models") / "sd-tiny")


@pytest.fixture(scope="module")
def pixels():
    import torch

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(4)]
    return torch.from_numpy(to_pixels(arrays, resolution=32, center_crop=True,
                                      flips=[False, True, False, True]))


def trainer(base: Path, learning_rate: float = 1e-2) -> AdapterTrainer:
    return AdapterTrainer(base=str(base), revision="local", rank=4, alpha=4,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0"], dropout=0.0,
                          learning_rate=learning_rate, seed=0)


def generator(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def fixed_loss(model: AdapterTrainer, pixels) -> float:
    import torch

    with torch.no_grad():  # the same noise, timesteps and latents every time
        return float(model.loss(pixels, CAPTIONS, generator(123)))


@pytest.fixture(scope="module")
def trained(base, pixels) -> AdapterTrainer:
    model = trainer(base)
    model.before = fixed_loss(model, pixels)
    for step in range(8):
        model.step(pixels, CAPTIONS, generator(step))
    return model


def test_pixels_are_square_normalised_and_flipped():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[:, :15] = 255  # left half white
    out = to_pixels([image, image], resolution=16, center_crop=True, flips=[False, True])
    assert out.shape == (2, 3, 16, 16) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out[0, :, :, 0].mean() > 0.9 and out[1, :, :, 0].mean() < -0.9  # mirrored


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(trained, pixels):
    after = fixed_loss(trained, pixels)
    assert after < trained.before, (trained.before, after)


def test_only_the_adapter_trains(trained):
    names = [n for n, p in trained.unet.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert not any(p.requires_grad for p in trained.vae.parameters())
    assert not any(p.requires_grad for p in trained.text_encoder.parameters())


def test_checkpoint_resumes_exactly(base, pixels, tmp_path):
    import torch

    straight = trainer(base)
    for step in range(4):
        straight.step(pixels, CAPTIONS, generator(step))
    first = trainer(base)
    for step in range(2):
        first.step(pixels, CAPTIONS, generator(step))
    first.save_checkpoint(tmp_path / "ckpt", {"step": 2})
    resumed = trainer(base)  # a fresh worker
    assert resumed.load_checkpoint(tmp_path / "ckpt") == {"step": 2}
    for step in range(2, 4):
        resumed.step(pixels, CAPTIONS, generator(step))
    for (name, a), (_, b) in zip(straight.unet.named_parameters(),
                                 resumed.unet.named_parameters()):
        assert torch.equal(a, b), name


def test_adapter_loads_in_the_lora_stage_and_changes_its_output(trained, base, tmp_path):
    from safetensors.torch import load_file

    from stages.base import Resources, StagePlan
    from stages.lora_diffusers import LoraImg2Img, LoraParams
    from stages.registry import get_card
    from tests.unit.test_lora_stage import image, make_batch, run

    path = trained.save_adapter(tmp_path / "adapter")
    assert path.name == ADAPTER_FILE
    assert all(k.startswith("unet.") for k in load_file(str(path)))  # diffusers' LoRA format

    def stage(lora: str | None) -> LoraImg2Img:
        plan = StagePlan(name="lora", card=get_card("lora/sd-tiny-brand"),
                         params=LoraParams(lora=lora, steps=2, strength=0.6),
                         source=str(base), revision="local", resources=Resources(),
                         models_dir=str(base.parent))
        return LoraImg2Img(plan=plan)

    batch = make_batch([image(32, 32), image(32, 32, 4, seed=1)], seeds=[3, 4])
    branded, plain = run(stage(str(path)), batch), run(stage(None), batch)
    for b, p in zip(branded, plain):
        assert b.shape == p.shape and not np.array_equal(b, p)


def test_lineage_names_the_adapter_of_each_lora_stage(tmp_path):
    import pyarrow as pa

    from factory.store.run_tables import read_lineage
    from factory.run.recorder import RunRecorder
    from factory.store.storage import Store
    from stages.base import Resources, StagePlan
    from stages.lora_diffusers import LoraParams
    from stages.registry import get_card

    uri = "s3://brand/loras/" + "a" * 64 + "/" + ADAPTER_FILE
    plans = tuple(StagePlan(name=name, card=get_card("lora/sd-tiny-brand"),
                            params=LoraParams(lora=lora), source="", revision="local",
                            resources=Resources())
                  for name, lora in (("brand", uri), ("plain", None)))
    store = Store(str(tmp_path))
    recorder = RunRecorder(store, "r1", plans)
    recorder.add(pa.table({"status": ["ok"], "row": [0], "sku": ["S1"], "written": [True]}))
    assert recorder.commit({})
    lineage, _ = read_lineage(store, "r1")
    assert lineage.column("brand_adapter").to_pylist() == [uri]
    assert "plain_adapter" not in lineage.column_names
