"""Training specs: bad ones are rejected naming file and key, before Ray starts (hermetic)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from factory.lora.data import collect_data
from factory.lora.train import training_id
from factory.lora.train_spec import Training, TrainSpecError, load_training, parse_training

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def brand(tmp_path: Path) -> Path:
    """A folder of three tiny images (any bytes do: nothing decodes them here)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"b{i}.png").write_bytes(f"image {i}".encode())
    (images / "notes.txt").write_text("not an image")
    return tmp_path


def spec(brand: Path, **changes) -> dict:
    doc = {
        "name": "acme",
        "base": {"source": "tiny:sd-tiny"},
        "data": {"images": str(brand / "images"), "caption": "acme style"},
        "lora": {"rank": 4, "alpha": 4},
        "train": {"steps": 4, "resolution": 32, "learning_rate": 0.01},
        "output": {"uri": str(brand / "out")},
    }
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return doc


def write(brand: Path, doc: dict, name: str = "train.yaml") -> Path:
    path = brand / name
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_good_spec_is_frozen_and_resolved(brand):
    training = load_training(write(brand, spec(brand)))
    assert isinstance(training, Training)
    assert training.base_ref == "tiny:sd-tiny" and training.base_revision == "local"
    assert training.train.resolution == 32 and training.lora.target_modules[0] == "to_q"
    with pytest.raises(ValidationError, match="frozen"):
        training.train.steps = 5


def test_shipped_example_parses(brand):
    doc = yaml.safe_load((REPO / "jobs" / "train-brand-lora.yaml").read_text())
    doc["data"].update(images=str(brand / "images"), captions=None)  # made by `lora demo`
    training = parse_training(doc, source="jobs/train-brand-lora.yaml")
    assert training.base_card == "generate/sd-tiny" and training.base_ref == "tiny:sd-tiny"


BAD = {
    "unknown_key": ({"train.epochs": 3}, "train.epochs: unknown key"),
    "resolution": ({"train.resolution": 30},
                   "train.resolution: Value error, must be a multiple of 8"),
    "rank": ({"lora.rank": 0}, "lora.rank: Input should be greater than or equal to 1"),
    "learning_rate": ({"train.learning_rate": -1}, "train.learning_rate: Input should be greater"),
    "both_bases": ({"base.model": "generate/sd-tiny"}, "base: Value error, give exactly one of"),
    "untrainable_card": ({"base.source": None, "base.model": "generate/flux-schnell"},
                         "base.model: cannot train a LoRA for 'generate/flux-schnell'"),
    "unknown_card": ({"base.source": None, "base.model": "nope"}, "base.model: unknown model"),
    "tiny_not_sd": ({"base.source": "tiny:swin2sr-tiny-x2"}, "base.source: 'tiny:swin2sr-tiny-x2'"),
    "missing_images": ({"data.images": "/nowhere/brand"},
                       "data.images: '/nowhere/brand' does not exist"),
    "captions_format": ({"data.captions": "captions.txt"}, "data.captions: cannot tell the format"),
    "no_caption": ({"data.caption": None}, "data: give 'caption'"),
    "bad_name": ({"name": "../x"}, "name: String should match pattern"),
    "missing_output": ({"output": None}, "output: Field required"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_is_rejected_naming_file_and_key(brand, case):
    changes, expected = BAD[case]
    path = write(brand, spec(brand, **changes))
    with pytest.raises(TrainSpecError) as err:
        load_training(path)
    assert str(path) in str(err.value) and "invalid training spec" in str(err.value)
    assert expected in str(err.value), str(err.value)


def test_duplicate_keys_and_bad_yaml_are_rejected(brand):
    path = brand / "dup.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(TrainSpecError, match="duplicate key 'name'"):
        load_training(path)


def test_a_bad_spec_fails_before_ray_starts(brand, monkeypatch):
    from factory.lora import train as lora_train
    from factory.cli.main import main

    def no_training(*args, **kwargs):
        raise AssertionError("training started for a bad spec")

    monkeypatch.setattr(lora_train, "train", no_training)
    path = write(brand, spec(brand, **{"train.resolution": 33, "lora.rank": 0}))
    result = CliRunner().invoke(main, ["lora", "train", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: invalid training spec" in result.output
    assert "train.resolution" in result.output and "lora.rank" in result.output


def test_captions_manifest_naming_a_missing_image_is_rejected_by_row(brand):
    (brand / "captions.csv").write_text("file,caption\nb0.png,red\nb9.png,blue\nb0.png,again\n")
    training = load_training(write(brand, spec(brand, **{
        "data.captions": str(brand / "captions.csv")})))
    with pytest.raises(TrainSpecError) as err:
        collect_data(training)
    assert "data.captions: row 2 names 'b9.png'" in str(err.value)
    assert "row 3 captions 'b0.png' a second time" in str(err.value)


def test_data_fingerprint_and_training_id_follow_content(brand):
    (brand / "captions.jsonl").write_text('{"file": "b1.png", "caption": "blue tote"}\n')
    training = load_training(write(brand, spec(brand, **{
        "data.captions": str(brand / "captions.jsonl")})))
    data = collect_data(training)
    assert [i.name for i in data.images] == ["b0.png", "b1.png", "b2.png"]  # .txt left out
    assert [i.caption for i in data.images] == ["acme style", "blue tote", "acme style"]
    same = training_id(training, collect_data(training))
    assert same == training_id(training, data)
    (brand / "images" / "b2.png").write_bytes(b"changed")
    assert training_id(training, collect_data(training)) != same
    faster = load_training(write(brand, spec(brand, **{"train.learning_rate": 0.1}), "b.yaml"))
    assert training_id(faster, data) != training_id(training, data)
    relaid = load_training(write(brand, spec(brand, **{"train.checkpoint_every": 1}), "c.yaml"))
    assert training_id(relaid, data) == training_id(training, data)  # layout, not the adapter


def test_more_workers_than_images_is_rejected(brand):
    training = load_training(write(brand, spec(brand, **{"train.num_workers": 4})))
    with pytest.raises(TrainSpecError, match="train.num_workers: 4 workers but only 3 images"):
        collect_data(training)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_the_lora_demo_render_job_validates_and_names_its_adapter(tmp_path, store):
    from factory.lora.adapter import ADAPTER_FILE
    from factory.lora.demo import write_render_job
    from factory.spec.job import load_job

    key = f"loras/{'ab' * 32}/{ADAPTER_FILE}"  # where training stores an adapter
    adapter = str(tmp_path / "lora-out" / key) if store == "local" else f"s3://brand/{key}"
    path = write_render_job(adapter, out_dir=tmp_path / "brand", rows=3)
    job = load_job(path)  # the real job parser
    assert [p.card.name for p in job.stages] == ["generate/sd-tiny", "lora/sd-tiny-brand"]
    assert job.stages[1].params.lora == adapter
    assert Path(job.manifest_uri).read_text().count("\n") == 1 + 3  # header and 3 SKUs
