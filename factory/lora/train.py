"""Brand LoRA training on Ray Train: a folder of brand images in, a content-addressed adapter out.

``train(training)`` lists and fingerprints the images (``collect_data``) and derives the
training's id from the base model, the data and the hyper-parameters, all before Ray starts.
If the store already holds that training's record it returns it; otherwise it streams the
images as a Ray Dataset (``factory.lora.data``: decoded, resized, cropped and flipped in Ray
Data tasks on CPU) into a ``TorchTrainer`` of ``num_workers`` data-parallel workers (one per
GPU with ``use_gpu``), each a thin loop over ``AdapterTrainer``. Checkpoints go to ``<output>/checkpoints/lora-<id>`` through
Ray Train's own checkpointing: a worker that dies is replaced and the group resumes from the
latest checkpoint (``FailureConfig.max_failures``), and a run whose driver died resumes from it
when the same spec runs again (same id, same Ray Train run name and storage path).

The store then gets, create-only, ``loras/<sha256>/pytorch_lora_weights.safetensors`` (the
adapter, keyed by the hash of its bytes), ``loras/<sha256>/training.json`` (its record: base,
revision, data fingerprint, hyper-parameters, final loss) and ``trainings/<id>.json`` last, the
commit point of the training.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from factory.lora.adapter import ADAPTER_FILE
from factory.lora.data import TrainData, collect_data, filesystem, image_dataset
from factory.store.s3 import is_s3
from factory.store.storage import Store
from factory.lora.train_spec import Training

RECORD_FILE = "training.json"
#: Step losses averaged into the record's ``final_loss``.
FINAL_LOSS_WINDOW = 10


@dataclass(frozen=True)
class TrainedAdapter:
    """Where a training's adapter and record are, and whether this call trained it."""

    training_id: str
    sha256: str
    adapter_uri: str
    record_uri: str
    record: dict[str, Any]
    trained_now: bool


def training_id(training: Training, data: TrainData) -> str:
    """What decides the adapter: base, revision, data and hyper-parameters (not the layout)."""
    text = json.dumps({"base": training.base_ref, "revision": training.base_revision,
                       "data": data.fingerprint, "hyperparameters": training.hyperparameters()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def train(training: Training, *, address: str | None = None,
          dashboard: bool = False) -> TrainedAdapter:
    """Train (or resume, or find) the adapter ``training`` describes.

    Args:
        training: the validated spec.
        address: Ray address; None starts a local Ray.
        dashboard: start the local Ray's dashboard.
    """
    data = collect_data(training)
    tid = training_id(training, data)
    store = Store(training.output_uri, training.s3)
    if store.is_s3:
        store = store.preflight(f"lora-{tid}")
    if (done := _committed(store, tid)) is not None:
        return done
    started = time.time()
    result = _fit(training, data, tid, address=address, dashboard=dashboard)
    if result.checkpoint is None:
        raise RuntimeError(f"training {tid} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as directory:
        adapter = (Path(directory) / ADAPTER_FILE).read_bytes()
        state = json.loads((Path(directory) / "state.json").read_text(encoding="utf-8"))
    return _publish(store, training, data, tid, adapter, state, wall_s=time.time() - started)


#: Ray Train's switch for its preemption watcher (an actor that polls whether the nodes of the
#: worker group are being drained). Ray Train hands the driver's value to its controller.
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def _fit(training: Training, data: TrainData, tid: str, *, address: str | None,
         dashboard: bool) -> Any:
    import os

    from ray.data import DataContext, ExecutionOptions
    from ray.train import (CheckpointConfig, DataConfig, FailureConfig, LoggingConfig,
                           RunConfig, ScalingConfig)
    from ray.train.torch import TorchTrainer

    from factory.run.pipeline import init_ray

    t = training.train
    init_ray(address, logical_cpus=t.num_workers * t.cpus_per_worker, dashboard=dashboard)
    storage_path, filesystem = _storage(training)
    ingest = DataContext.get_current().execution_options
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=_loop_config(training),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=RunConfig(
            name=f"lora-{tid}", storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO (resources asked for, worker group started, each checkpoint)
            # goes to its log files under the session's logs/train/; its warnings still show.
            logging_config=LoggingConfig(log_level="WARNING")),
        # Ray Train's default ingest options copy the deprecated exclude_resources field, and
        # its setter warns in the dataset manager; the same options, given without it.
        dataset_config=DataConfig(execution_options=ExecutionOptions(
            resource_limits=ingest.resource_limits, preserve_order=ingest.preserve_order,
            verbose_progress=ingest.verbose_progress)),
        datasets={"train": image_dataset(training, data)},
    )
    if address is not None or PREEMPTION_WATCHER_ENV in os.environ:
        return trainer.fit()
    # A local Ray is one node that no autoscaler drains: the preemption watcher has nothing
    # to watch (and its creation, with the workers' handles as arguments, prints Ray's
    # actor-restart advisory, factory.core.console). Clusters keep it.
    os.environ[PREEMPTION_WATCHER_ENV] = "0"
    try:
        return trainer.fit()
    finally:
        del os.environ[PREEMPTION_WATCHER_ENV]


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from the latest checkpoint, step, checkpoint, report.

    Every worker runs exactly ``steps`` steps, so reports line up across workers (the stream
    holds enough passes over the images; a shard that runs dry first is read again). Each step's noise and timesteps come from a generator
    seeded by (seed, rank, step): a resumed run draws what the killed one would have.
    """
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    from factory.core.console import quiet_train_worker
    from factory.lora.adapter import AdapterTrainer
    from stages.weights import locate, quiet_loaders

    quiet_train_worker()
    quiet_loaders()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = str(ray.train.torch.get_device())
    base = locate(config["base_source"], ref=config["base_ref"], s3_options=config["s3"],
                  cache_dir=config["cache_dir"])
    model = AdapterTrainer(base=base, revision=config["revision"], device=device,
                           **config["adapter"])
    state: dict[str, Any] = {"step": 0, "losses": [], "resumed_from": [], "world_size": world}
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            state = model.load_checkpoint(Path(directory))
        state["resumed_from"] = [*state["resumed_from"], state["step"]]
    if world > 1:
        model.model = ray.train.torch.prepare_model(model.unet, move_to_device=False)
    steps, every = config["steps"], config["checkpoint_every"]
    shard = ray.train.get_dataset_shard("train")

    def report(final: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                model.save_checkpoint(Path(tmp), state)
                if final:
                    model.save_adapter(Path(tmp))
                checkpoint = Checkpoint.from_directory(tmp)
            loss = state["losses"][-1] if state["losses"] else float("nan")
            ray.train.report({"step": state["step"], "loss": loss}, checkpoint=checkpoint,
                             checkpoint_dir_name=f"step-{state['step']:08d}")

    while state["step"] < steps:
        for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy"):
            generator = torch.Generator().manual_seed(
                _step_seed(config["seed"], rank, state["step"]))
            pixels = torch.from_numpy(np.array(batch["pixels"]))  # a writable copy
            loss = model.step(pixels, list(batch["caption"]), generator)
            state["step"] += 1
            state["losses"].append(_mean_over_workers(loss, world))
            if state["step"] == steps:
                break
            if state["step"] % every == 0:
                report(final=False)
    report(final=True)


def _step_seed(seed: int, rank: int, step: int) -> int:
    text = f"{seed}/{rank}/{step}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def _mean_over_workers(loss: float, world: int) -> float:
    if world == 1:
        return loss
    import torch
    import torch.distributed as dist

    value = torch.tensor([loss], dtype=torch.float64)
    dist.all_reduce(value)
    return float(value.item()) / world


def _loop_config(training: Training) -> dict[str, Any]:
    t, lora = training.train, training.lora
    return {"base_source": training.base_source, "base_ref": training.base_ref,
            "revision": training.base_revision, "s3": training.s3,
            "cache_dir": training.cache_dir, "steps": t.steps,
            "checkpoint_every": t.checkpoint_every, "batch_size": t.batch_size, "seed": t.seed,
            "adapter": {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                        "target_modules": tuple(lora.target_modules),
                        "learning_rate": t.learning_rate, "seed": t.seed}}


def _publish(store: Store, training: Training, data: TrainData, tid: str, adapter: bytes,
             state: dict[str, Any], *, wall_s: float) -> TrainedAdapter:
    sha = hashlib.sha256(adapter).hexdigest()
    adapter_key, record_key = f"loras/{sha}/{ADAPTER_FILE}", f"loras/{sha}/{RECORD_FILE}"
    losses = state["losses"]
    window = losses[-FINAL_LOSS_WINDOW:]
    record = {
        "kind": "lora-adapter", "name": training.name, "training_id": tid,
        "adapter": store.path(adapter_key), "sha256": sha, "bytes": len(adapter),
        "format": "diffusers-lora-safetensors", "target": "unet",
        "base": {"model": training.base_card, "source": training.base_ref,
                 "revision": training.base_revision},
        "data": {"images": training.images_uri, "captions": training.captions_uri,
                 "count": len(data.images), "fingerprint": data.fingerprint},
        "hyperparameters": training.hyperparameters(),
        "steps": state["step"], "final_loss": sum(window) / len(window),
        "first_loss": losses[0], "losses": [round(x, 6) for x in losses],
        "resumed_from": state["resumed_from"], "spec_sha256": training.spec_hash,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(wall_s, 3),
    }
    body = json.dumps(record, indent=2, sort_keys=True).encode()
    store.put_if_absent(adapter_key, adapter, content_type="application/octet-stream")
    store.put_if_absent(record_key, body, content_type="application/json")
    store.put_if_absent(f"trainings/{tid}.json", body, content_type="application/json")
    return TrainedAdapter(training_id=tid, sha256=sha, adapter_uri=store.path(adapter_key),
                          record_uri=store.path(record_key), record=record, trained_now=True)


def _committed(store: Store, tid: str) -> TrainedAdapter | None:
    try:
        record = json.loads(store.read_bytes(f"trainings/{tid}.json"))
    except FileNotFoundError:
        return None
    sha = record["sha256"]
    return TrainedAdapter(training_id=tid, sha256=sha,
                          adapter_uri=store.path(f"loras/{sha}/{ADAPTER_FILE}"),
                          record_uri=store.path(f"loras/{sha}/{RECORD_FILE}"), record=record,
                          trained_now=False)


def _storage(training: Training) -> tuple[str, Any]:
    """Ray Train's ``storage_path`` and filesystem: the output store's ``checkpoints/``."""
    if not is_s3(training.output_uri):
        return str(Path(training.output_uri) / "checkpoints"), None
    return training.output_uri.removeprefix("s3://").rstrip("/") + "/checkpoints", \
        filesystem(training)
