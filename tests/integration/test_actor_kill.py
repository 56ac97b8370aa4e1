"""Kill stage actors mid-run: each of the five stages' pools, or the one pool of a CPU chain.

With ``fuse_cpu_stages: false`` each stage has its own pool (as on a GPU cluster) and each
stage's actor process is SIGKILLed once; by default the five CPU stages share one pool
(``stages.chain``) and its actor is killed twice. Ray restarts the actor and retries its tasks.
Afterwards SKU accounting is exact and every asset is one object under one key.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest

from factory.catalog.demo import write_catalog
from factory.store.run_tables import read_lineage, read_rejects
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration

ROWS = 36  # three of them rejected (rows 11, 21, 31); the kills land within the first few
STAGES = {  # target -> what the actor's Ray class name holds
    "generate": "DiffusersGenerator_generate", "segment": "RembgSegmenter_segment",
    "lora": "LoraImg2Img_lora", "recolor": "LabRecolor_recolor",
    "upscale": "Swin2SRUpscaler_upscale",
}
CHAIN_POOL = "StageChain_generate_segment_lora_recolor_upscale"
TARGETS = {False: STAGES, True: {"chain, first kill": CHAIN_POOL,
                                 "chain, second kill": CHAIN_POOL}}
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


def alive_actors(targets: dict[str, str], dead: set[int]) -> dict[str, dict]:
    """Alive actors by target, from the GCS actor table (not one of the ``dead`` processes)."""
    from ray._private import state

    found = {}
    for actor in state.actors().values():
        name = str(actor.get("ActorClassName", ""))
        for target, class_name in targets.items():
            if (class_name in name and actor.get("State") == "ALIVE"
                    and int(actor.get("Pid") or 0) not in dead):
                found[target] = actor
    return found


@pytest.mark.parametrize("fused", [False, True], ids=["pool-per-stage", "cpu-chain"])
def test_killing_stage_actors_mid_run_keeps_exact_accounting(local_ray, models_dir, tmp_path,
                                                             fused: bool):
    from factory.run.pipeline import run_job

    targets = TARGETS[fused]
    catalog = write_catalog(tmp_path / "catalog.csv", ROWS)
    job = parse_job({"name": "kills", "manifest": {"uri": str(catalog)},
                     "output": {"uri": str(tmp_path / "out")}, "seed": 5,
                     "prompt": {"template": "a {{ color }} {{ title }}"}, "stages": CHAIN,
                     "fuse_cpu_stages": fused})
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
    killed: dict[str, tuple[int, int]] = {}  # target -> (pid, rows done when killed)
    deadline = time.monotonic() + 240
    while worker.is_alive() and len(killed) < len(targets) and time.monotonic() < deadline:
        alive = alive_actors(targets, {pid for pid, _ in killed.values()})
        for target in targets:
            if target in killed:
                continue
            actor = alive.get(target)
            if actor and actor.get("Pid"):
                time.sleep(1.0)  # let it load its model and take a batch
                os.kill(int(actor["Pid"]), signal.SIGKILL)
                killed[target] = (int(actor["Pid"]), progress["assets"])
            break  # in chain order, one at a time
        time.sleep(0.2)
    worker.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert set(killed) == set(targets), f"killed {killed} before the job ended"
    assert all(done < ROWS for _, done in killed.values()), killed  # all while rows pending

    store = Store(job.output.uri)
    run_id = outcome["result"].run_id
    lineage, summary = read_lineage(store, run_id)
    rejects = read_rejects(store, run_id)
    rows = lineage.to_pylist()
    assert len(rows) + rejects.num_rows == ROWS
    assert sorted([r["row"] for r in rows] + rejects["row"].to_pylist()) == list(
        range(1, ROWS + 1))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == ROWS - 3 and rejects.num_rows == 3, [r["error"] for r in rows
                                                           if r["error"]][:3]
    files = [p.relative_to(tmp_path / "out").as_posix()
             for p in (tmp_path / "out" / "assets").rglob("*") if p.is_file()]
    assert sorted(files) == sorted(r["output_key"] for r in ok)  # nothing unlisted, no extras
    assert Counter(f.split("/")[1] for f in files) == Counter(r["sku"] for r in ok)
    # Ray restarted every killed actor (same actor id, new process) and retried its tasks
    from ray._private import state

    restarts = {target: max((a["NumRestarts"] for a in state.actors().values()
                             if class_name in str(a.get("ActorClassName"))), default=0)
                for target, class_name in targets.items()}
    assert all(n >= sum(1 for c in targets.values() if c == class_name)
               for class_name, n in zip(targets.values(), restarts.values())), restarts
