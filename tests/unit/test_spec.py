"""Job spec parsing: every broken fixture is rejected with its file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from factory.spec.job import SpecError, load_job

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "specs"
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))


def _expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: ...'"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_is_rejected_naming_file_and_key(path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_job(path)
    message = str(err.value)
    assert str(path) in message
    assert _expected(path) in message, message


def test_there_is_a_fixture_per_kind_of_breakage() -> None:
    assert len(BAD) >= 20


def test_good_spec_parses_into_frozen_typed_objects() -> None:
    job = load_job(FIXTURES / "good.yaml")
    assert job.name == "fixture-good"
    assert [p.card.name for p in job.stages] == ["generate/synthetic", "recolor/lab"]
    recolor = job.stages[1]
    assert recolor.params.palette == ("#C8553D", "#2D3047")  # a string palette is split
    assert recolor.params.strength == 0.5
    # spec resources override the card's field by field
    assert recolor.resources.batch_size == 4 and recolor.resources.concurrency == 2
    assert recolor.resources.num_gpus == recolor.card.resources.num_gpus
    assert job.manifest_format == "csv"
    assert job.template_fields == ("color", "title")
    with pytest.raises(Exception):
        job.stages[1].params.strength = 1.0  # frozen


def test_the_spec_hash_is_stable_and_follows_the_spec(tmp_path: Path) -> None:
    a = load_job(FIXTURES / "good.yaml")
    assert a.spec_hash == load_job(FIXTURES / "good.yaml").spec_hash
    assert a.run_id is None  # no run_id in the spec: derived at run time from the inputs
    changed = tmp_path / "changed.yaml"
    changed.write_text((FIXTURES / "good.yaml").read_text().replace("seed: 7", "seed: 8"))
    assert load_job(changed).spec_hash != a.spec_hash


def test_overrides_apply_and_are_checked() -> None:
    job = load_job(FIXTURES / "good.yaml").with_overrides(output_uri="/tmp/x", run_id="r-1")
    assert job.output.uri == "/tmp/x" and job.run_id == "r-1"
    with pytest.raises(SpecError, match="run_id"):
        load_job(FIXTURES / "good.yaml").with_overrides(run_id="a/b")


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    spec = tmp_path / "many.yaml"
    spec.write_text("name: x\nmanifest: {uri: a.csv}\noutput: {uri: o}\nstages:\n"
                    "  - {kind: generate, model: nope}\n"
                    "  - {kind: recolor, model: lab, params: {palette: ['#000'], strength: 3}}\n")
    with pytest.raises(SpecError) as err:
        load_job(spec)
    assert len(err.value.problems) == 2
    assert "stages[0].model" in str(err.value) and "stages[1].params.strength" in str(err.value)


def test_diffusion_after_upscale_warns_but_validates(monkeypatch) -> None:
    from factory.spec import job as spec_module
    from stages.base import StageCard
    from stages.registry import REGISTRY, get_card
    from stages.synthetic import Passthrough

    upscale = StageCard(name="upscale/test", kind="upscale", runtime=Passthrough,
                        inputs=("image",), outputs=("image",))
    monkeypatch.setitem(REGISTRY, upscale.name, upscale)
    job = spec_module.parse_job({
        "name": "order", "manifest": {"uri": "a.csv"}, "output": {"uri": "o"},
        "prompt": {"template": "x"},
        "stages": [{"kind": "generate", "model": "synthetic"},
                   {"kind": "upscale", "model": "test"},
                   {"kind": "generate", "model": "synthetic", "name": "again"}]})
    assert get_card("upscale/test") is upscale
    assert any("runs after an upscale" in w for w in job.warnings)


def test_shipped_job_specs_validate() -> None:
    from factory.lora.train_spec import TrainingSpecDoc

    paths = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        if path.name.startswith("train-"):  # a LoRA training spec (factory lora train): its
            # keys and types; its image folder is made by `factory lora demo` first
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert TrainingSpecDoc.model_validate(data).name, path
            continue
        assert load_job(path).stages, path
