"""Which diffusers pipeline class loads a checkpoint for a task, without importing them all.

diffusers' auto pipelines (``AutoPipelineForText2Image``, ``...Image2Image``,
``...Inpainting``) read the class ``model_index.json`` names and map it to the class of the
task asked for. Their module builds those maps by importing every pipeline family diffusers
has (ControlNets, Kandinsky, PixArt, ...): about 1.2 CPU seconds in every actor that loads a
diffusion stage, more than loading a tiny model's weights. ``TASK_CLASSES`` is the same map
for the classes the registry's families name; a class found there is imported alone (the
top-level ``diffusers`` module imports each pipeline on first access) and loaded with its
own ``from_pretrained``, which is what the auto pipeline calls after its lookup. A class not
found there goes through the auto pipeline, unchanged. A test holds the table equal to
diffusers' own maps.
"""

from __future__ import annotations

from typing import Any, Literal

Task = Literal["text2image", "image2image", "inpainting"]

#: task → {class ``model_index.json`` names → the class that runs the task}, as diffusers'
#: ``AUTO_*_PIPELINES_MAPPING`` map them, for the SD, SDXL and Flux checkpoints.
TASK_CLASSES: dict[str, dict[str, str]] = {
    "text2image": {
        "StableDiffusionPipeline": "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline": "StableDiffusionPipeline",
        "StableDiffusionInpaintPipeline": "StableDiffusionPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLPipeline",
        "StableDiffusionXLInpaintPipeline": "StableDiffusionXLPipeline",
        "FluxPipeline": "FluxPipeline",
    },
    "image2image": {
        "StableDiffusionPipeline": "StableDiffusionImg2ImgPipeline",
        "StableDiffusionImg2ImgPipeline": "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline": "StableDiffusionImg2ImgPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline": "StableDiffusionXLImg2ImgPipeline",
        "FluxPipeline": "FluxImg2ImgPipeline",
    },
    "inpainting": {
        "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",
        "StableDiffusionImg2ImgPipeline": "StableDiffusionInpaintPipeline",
        "StableDiffusionInpaintPipeline": "StableDiffusionInpaintPipeline",
        "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
        "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLInpaintPipeline",
        "StableDiffusionXLInpaintPipeline": "StableDiffusionXLInpaintPipeline",
        "FluxPipeline": "FluxInpaintPipeline",
    },
}

#: The auto pipeline that does the same for a class ``TASK_CLASSES`` does not name.
AUTO_PIPELINES = {"text2image": "AutoPipelineForText2Image",
                  "image2image": "AutoPipelineForImage2Image",
                  "inpainting": "AutoPipelineForInpainting"}


def checkpoint_class(source: str, *, revision: str | None = None) -> str:
    """The pipeline class a checkpoint's ``model_index.json`` names."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(source, revision=revision)["_class_name"]


def pipeline_loader(task: Task, checkpoint: str) -> Any:
    """The class whose ``from_pretrained`` loads a ``checkpoint``-class checkpoint for
    ``task``: the task's class from ``TASK_CLASSES``, else the task's auto pipeline."""
    import diffusers

    name = TASK_CLASSES[task].get(checkpoint) or AUTO_PIPELINES[task]
    return getattr(diffusers, name)


def load_pipeline(task: Task, source: str, *, revision: str | None = None, **options: Any
                  ) -> Any:
    """``task``'s pipeline for the checkpoint at ``source`` (``from_pretrained`` with
    ``revision`` and ``options``), as the task's auto pipeline would load it."""
    loader = pipeline_loader(task, checkpoint_class(source, revision=revision))
    return loader.from_pretrained(source, revision=revision, **options)
