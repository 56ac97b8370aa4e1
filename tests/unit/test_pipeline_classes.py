"""The diffusion stages load the class diffusers' auto pipelines would choose, without
importing every pipeline family first (``stages.pipelines``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stages.pipelines import AUTO_PIPELINES, TASK_CLASSES, pipeline_loader

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("task", sorted(TASK_CLASSES))
def test_the_table_is_diffusers_own_map(task: str) -> None:
    from diffusers.pipelines import auto_pipeline

    mapping = {"text2image": auto_pipeline.AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
               "image2image": auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
               "inpainting": auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING}[task]
    for checkpoint, name in TASK_CLASSES[task].items():
        chosen = auto_pipeline._get_task_class(mapping, checkpoint)
        assert chosen.__name__ == name, (task, checkpoint)


def test_a_class_the_table_does_not_name_goes_through_the_auto_pipeline() -> None:
    for task, auto in AUTO_PIPELINES.items():
        assert pipeline_loader(task, "KandinskyV22Pipeline").__name__ == auto
        assert pipeline_loader(task, "StableDiffusionPipeline").__name__ == \
            TASK_CLASSES[task]["StableDiffusionPipeline"]


_LOAD = """
import sys
sys.path.insert(0, "tests")
from contract.test_registry_contract import plan_for
from pathlib import Path
from stages.registry import get_card
for card in {cards!r}:
    plan = plan_for(get_card(card), Path({models!r}))
    print(type(plan.card.runtime(plan=plan).pipe).__name__)
print("diffusers.pipelines.auto_pipeline" in sys.modules)
"""

#: card → the class diffusers' auto pipeline (or, for Flux Fill, the checkpoint) names
LOADS = {"generate/sd-tiny": "StableDiffusionPipeline",
         "lora/sd-tiny-brand": "StableDiffusionImg2ImgPipeline",
         "scene/sd-inpaint-tiny": "StableDiffusionInpaintPipeline",
         "scene/flux-fill": "FluxFillPipeline"}


def test_the_diffusion_stages_load_their_task_class_alone(models_dir) -> None:
    code = _LOAD.format(cards=list(LOADS), models=str(models_dir))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    *names, auto_imported = done.stdout.split()[-len(LOADS) - 1:]
    assert names == list(LOADS.values())
    assert auto_imported == "False"  # no other pipeline family was imported to choose them
