"""A chain that starts from the catalog's photos is checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.spec.job import SpecError, load_job, parse_job

SOURCE = {"kind": "source", "model": "photo"}
SEGMENT = {"kind": "segment", "model": "studio-key"}
SCENE = {"kind": "scene", "model": "sd-inpaint-tiny"}


def spec(*stages: dict) -> dict:
    return {"name": "t", "manifest": {"uri": "m.csv"}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }} on a table"}, "stages": list(stages)}


def test_the_shipped_photo_job_validates():
    job = load_job(Path(__file__).resolve().parents[2] / "jobs" / "product-photos.yaml")
    assert [p.card.kind for p in job.stages] == ["source", "segment", "scene", "upscale",
                                                 "recolor", "lora"]
    assert job.qa is not None and job.qa.default.thresholds[0].metric == "fidelity_delta_e"


def test_a_scene_without_a_cut_out_before_it_is_rejected():
    with pytest.raises(SpecError) as err:
        parse_job(spec(SOURCE, SCENE))
    assert "stages[1]: scene stage 'scene' builds the scene around a cut-out" in str(err.value)
    parse_job(spec(SOURCE, SEGMENT, SCENE))


def test_the_source_stage_must_come_first():
    with pytest.raises(SpecError) as err:
        parse_job(spec({"kind": "generate", "model": "synthetic"}, SOURCE))
    assert "stages[1]: the source stage 'source'" in str(err.value)
    assert "must come first" in str(err.value)


def test_a_stage_needing_an_image_without_a_source_names_the_column():
    with pytest.raises(SpecError) as err:
        parse_job(spec(SEGMENT, SCENE))
    assert "needs column 'image'" in str(err.value)


def test_the_fidelity_gate_needs_a_chain_that_measures_it():
    data = spec(SOURCE, SEGMENT, {"kind": "upscale", "model": "lanczos"})
    data["qa"] = {"thresholds": {"fidelity_delta_e": {"max": 1.0}}}
    with pytest.raises(SpecError) as err:
        parse_job(data)
    assert "fidelity_delta_e" in str(err.value)
    data["stages"].insert(2, SCENE)
    parse_job(data)
