"""Brand LoRA training on a local Ray: a worker killed mid-run, Ray Train resumes it from the
checkpoint, the adapter is published content-addressed and loads in the lora stage.

One training serves every test here (a Ray Train run costs tens of seconds on two cores).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from factory.lora.adapter import ADAPTER_FILE
from stages.tiny.models import make_tiny_sd

pytestmark = pytest.mark.integration

STEPS, EVERY = 24, 3


def kill_worker_after_first_checkpoint(run_root: Path, stop: threading.Event,
                                       killed: list[int]) -> None:
    """SIGKILL the Ray Train worker once the controller has registered a checkpoint (its
    snapshot file appears), as a node losing the process would. Only this test's worker: the
    local Ray's processes descend from this process, and another test process on the machine
    may be training at the same time (``factory lora demo``)."""
    import os

    import psutil

    while not stop.is_set():
        if any(run_root.glob("lora-*/checkpoint_manager_snapshot.json")):
            for proc in psutil.Process(os.getpid()).children(recursive=True):
                try:
                    cmdline = " ".join(proc.cmdline())
                except psutil.Error:  # ended meanwhile
                    continue
                if "RayTrainWorker" in cmdline:
                    proc.kill()
                    killed.append(proc.pid)
            if killed:
                return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("lora_train")
    make_tiny_sd(root / "sd-tiny")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            root / "images" / f"brand-{i}.png")
    spec = {"name": "acme-test", "base": {"source": str(root / "sd-tiny")},
            "data": {"images": str(root / "images"), "caption": "acme style"},
            "lora": {"rank": 4, "alpha": 4},
            "train": {"steps": STEPS, "checkpoint_every": EVERY, "batch_size": 2,
                      "resolution": 32, "learning_rate": 0.01, "max_failures": 2},
            "output": {"uri": str(root / "out")}}
    (root / "train.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture(scope="module")
def trained(workdir, local_ray):
    import os

    from factory.lora.train import train
    from factory.lora.train_spec import load_training

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.25"  # Ray Train polls workers faster
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_worker_after_first_checkpoint,
                               args=(workdir / "out" / "checkpoints", stop, killed), daemon=True)
    watcher.start()
    try:
        adapter = train(load_training(workdir / "train.yaml"))
    finally:
        stop.set()
        os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
    return adapter, killed


def test_killed_worker_resumes_from_its_checkpoint_to_the_same_step_count(trained):
    adapter, killed = trained
    record = adapter.record
    assert killed, "no training worker was killed"
    assert record["steps"] == STEPS
    assert len(record["losses"]) == STEPS  # no step lost or run twice
    assert len(record["resumed_from"]) == 1, record["resumed_from"]
    resumed = record["resumed_from"][0]
    assert 0 < resumed < STEPS and resumed % EVERY == 0


def test_adapter_is_content_addressed_with_its_record(trained, workdir):
    adapter, _ = trained
    path = Path(adapter.adapter_uri)
    assert path.name == ADAPTER_FILE and path.parent.name == adapter.sha256
    assert hashlib.sha256(path.read_bytes()).hexdigest() == adapter.sha256
    record = json.loads(Path(adapter.record_uri).read_text())
    assert record["base"]["source"] == str(workdir / "sd-tiny")
    assert record["data"]["count"] == 6 and len(record["data"]["fingerprint"]) == 64
    assert record["hyperparameters"]["lora"]["rank"] == 4
    assert np.isfinite(record["final_loss"])
    index = workdir / "out" / "trainings" / f"{adapter.training_id}.json"
    assert json.loads(index.read_text())["sha256"] == adapter.sha256


def test_same_spec_again_finds_the_training_and_starts_nothing(trained, workdir):
    from factory.lora.train import train
    from factory.lora.train_spec import load_training

    started = time.perf_counter()
    again = train(load_training(workdir / "train.yaml"))
    assert not again.trained_now and again.sha256 == trained[0].sha256
    assert time.perf_counter() - started < 5


def test_adapter_by_uri_changes_the_lora_stage(trained, workdir):
    import torch

    from stages.base import Resources, StagePlan
    from stages.lora_diffusers import LoraImg2Img, LoraParams
    from stages.registry import get_card
    from tests.unit.test_lora_stage import image, make_batch, run

    def stage(lora: str | None) -> LoraImg2Img:
        plan = StagePlan(name="lora", card=get_card("lora/sd-tiny-brand"),
                         params=LoraParams(lora=lora, steps=2, strength=0.6),
                         source=str(workdir / "sd-tiny"), revision="local",
                         resources=Resources(), models_dir=str(workdir))
        return LoraImg2Img(plan=plan)

    batch = make_batch([image(32, 32)], seeds=[3])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: OpenMP threads only spin on a busy machine
    try:
        branded = run(stage(trained[0].adapter_uri), batch)[0]
        assert not np.array_equal(branded, run(stage(None), batch)[0])
    finally:
        torch.set_num_threads(threads)
