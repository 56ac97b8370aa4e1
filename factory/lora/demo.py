"""The offline brand-LoRA example: brand images from the tiny model, then a render job.

``prepare_brand_images`` renders a few "brand" images with the tiny SD pipeline (the images a
brand team would bring) and writes their captions manifest where ``jobs/train-brand-lora.yaml``
looks for them. ``write_render_job`` writes a job spec whose lora stage names the trained
adapter by its content-addressed URI, over a small demo catalog.
"""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from factory.core import settings

TRAIN_JOB = Path(__file__).resolve().parents[2] / "jobs" / "train-brand-lora.yaml"
BRAND_DIR = Path("build/brand")
#: The brand's instance prompt (the training spec's default caption says the same).
BRAND_CAPTION = "a product photo in acme style"
_SUBJECTS = ["tote bag", "sneaker", "ceramic mug", "desk lamp", "backpack", "water bottle",
             "wool scarf", "kettle"]


def prepare_brand_images(*, count: int = 8, out_dir: Path = BRAND_DIR) -> Path:
    """Render ``count`` brand images with tiny SD into ``out_dir/images`` and caption them in
    ``out_dir/captions.csv``; return ``out_dir``. Deterministic; skipped when present."""
    images, captions = out_dir / "images", out_dir / "captions.csv"
    if captions.exists() and len(list(images.glob("*.png"))) == count:
        return out_dir
    from stages.weights import quiet_loaders

    quiet_loaders()  # before diffusers' import, which asks for the image processors
    import torch
    from diffusers import AutoPipelineForText2Image

    from stages.tiny.models import ensure

    base = ensure(settings.models_dir(), "sd-tiny")
    pipe = AutoPipelineForText2Image.from_pretrained(base, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        subject = _SUBJECTS[i % len(_SUBJECTS)]
        prompt = f"{BRAND_CAPTION}, {subject}"
        with torch.inference_mode():
            image = pipe(prompt, height=64, width=64, num_inference_steps=2, guidance_scale=1.0,
                         generator=torch.Generator("cpu").manual_seed(i)).images[0]
        name = f"brand-{i:02d}.png"
        image.save(images / name)
        rows.append({"file": name, "caption": prompt})
    with captions.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return out_dir


def write_render_job(adapter_uri: str, *, out_dir: Path = BRAND_DIR, rows: int = 8) -> Path:
    """A job spec that generates ``rows`` SKUs and restyles them with ``adapter_uri``."""
    from factory.catalog.demo import write_catalog

    catalog = write_catalog(out_dir / "catalog.csv", rows, bad_rows=False)
    spec = {
        "name": "brand-lora-render",
        "manifest": {"uri": str(catalog)},
        "output": {"uri": str(out_dir / "render-out")},
        "seed": 1234,
        "prompt": {"template": "photo of a {{ color }} {{ material }} {{ title }}"},
        "stages": [
            {"kind": "generate", "model": "sd-tiny",
             "params": {"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
             "resources": {"num_cpus": 1, "batch_size": 8}},
            {"kind": "lora", "model": "sd-tiny-brand",
             "params": {"lora": adapter_uri, "adapter_scale": 1.0, "strength": 0.5, "steps": 2},
             "resources": {"num_cpus": 1, "batch_size": 8}},
        ],
    }
    path = out_dir / "render-brand-lora.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ("# Written by `factory lora demo`: the demo catalog through generate and the brand\n"
              "# LoRA trained by jobs/train-brand-lora.yaml, named by its content-addressed URI.\n")
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path
