"""Kill a stage actor mid-run, for each of the five stages, in one job.

Each stage's actor process is SIGKILLed while the job runs; Ray restarts the actor and retries
its tasks. Afterwards SKU accounting is exact and every asset is one object under one key.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from factory.demo import write_catalog
from factory.runs import read_lineage, read_rejects
from factory.spec import parse_job
from factory.storage import Store

pytestmark = pytest.mark.integration

STAGES = {  # stage name -> runtime class name in the actor's Ray class name
    "generate": "DiffusersGenerator", "segment": "RembgSegmenter", "lora": "LoraImg2Img",
    "recolor": "LabRecolor", "upscale": "Swin2SRUpscaler",
}
CHAIN = [
    {"kind": "generate", "model": "sd-tiny", "params": {"width": 64, "height": 64, "steps": 4},
     "resources": {"batch_size": 4, "num_cpus": 0.5}},
    {"kind": "segment", "model": "u2net-tiny", "resources": {"batch_size": 4, "num_cpus": 0.5}},
    {"kind": "lora", "model": "sd-tiny-brand",
     "params": {"lora": "tiny:sd-tiny-lora", "steps": 2, "strength": 0.5},
     "resources": {"batch_size": 4, "num_cpus": 0.5}},
    {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
     "resources": {"batch_size": 4, "num_cpus": 0.5}},
    {"kind": "upscale", "model": "swin2sr-tiny-x2", "params": {"tile": 0},
     "resources": {"batch_size": 4, "num_cpus": 0.5}},
]


def stage_actors() -> dict[str, dict]:
    """Alive stage actors by stage name, from the GCS actor table."""
    from ray._private import state

    found = {}
    for actor in state.actors().values():
        name = str(actor.get("ActorClassName", ""))
        for stage, runtime in STAGES.items():
            if f"{runtime}_{stage}" in name and actor.get("State") == "ALIVE":
                found[stage] = actor
    return found


def test_killing_each_stage_actor_mid_run_keeps_exact_accounting(local_ray, models_dir,
                                                                  tmp_path):
    from factory.pipeline import run_job

    catalog = write_catalog(tmp_path / "catalog.csv", 240)
    job = parse_job({"name": "kills", "manifest": {"uri": str(catalog)},
                     "output": {"uri": str(tmp_path / "out")}, "seed": 5,
                     "prompt": {"template": "a {{ color }} {{ title }}"}, "stages": CHAIN})
    outcome: dict = {}
    progress = {"assets": 0}

    def run() -> None:
        try:
            outcome["result"] = run_job(
                job, on_progress=lambda c, _: progress.__setitem__("assets", c.total))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    killed: dict[str, tuple[int, int]] = {}  # stage -> (pid, rows done when killed)
    deadline = time.monotonic() + 240
    while worker.is_alive() and len(killed) < len(STAGES) and time.monotonic() < deadline:
        alive = stage_actors()
        for stage in STAGES:
            if stage in killed:
                continue
            actor = alive.get(stage)
            if actor and actor.get("Pid"):
                time.sleep(1.0)  # let it load its model and take a batch
                os.kill(int(actor["Pid"]), signal.SIGKILL)
                killed[stage] = (int(actor["Pid"]), progress["assets"])
            break  # in chain order, one at a time
        time.sleep(0.2)
    worker.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert set(killed) == set(STAGES), f"killed {killed} before the job ended"
    assert all(done < 240 for _, done in killed.values()), killed  # all while rows were pending

    store = Store(job.output.uri)
    run_id = outcome["result"].run_id
    lineage, summary = read_lineage(store, run_id)
    rejects = read_rejects(store, run_id)
    rows = lineage.to_pylist()
    assert len(rows) + rejects.num_rows == 240
    assert sorted([r["row"] for r in rows] + rejects["row"].to_pylist()) == list(range(1, 241))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 237 and rejects.num_rows == 3, [r["error"] for r in rows if r["error"]][:3]
    files = [p.relative_to(tmp_path / "out").as_posix()
             for p in (tmp_path / "out" / "assets").rglob("*") if p.is_file()]
    assert sorted(files) == sorted(r["output_key"] for r in ok)  # nothing unlisted, no extras
    assert Counter(f.split("/")[1] for f in files) == Counter(r["sku"] for r in ok)
    # Ray restarted every killed actor (same actor id, new process) and retried its tasks
    from ray._private import state

    restarts = {stage: max((a["NumRestarts"] for a in state.actors().values()
                            if f"{runtime}_{stage}" in str(a.get("ActorClassName"))), default=0)
                for stage, runtime in STAGES.items()}
    assert all(n >= 1 for n in restarts.values()), restarts
