"""GPU pinning on a multi-node local Ray: two nodes, two logical GPUs each, five stages.

The models run on CPU (there is no CUDA here); what is checked is what Ray assigned: every
stage's actors held the GPU ids or fractions they asked for, the fractional stages shared GPUs,
whole-GPU stages had theirs alone, and SKU accounting is exact. The segment stage stays on CPU:
an ONNX stage may reserve a GPU only where onnxruntime has CUDA (``factory.run.placement``), and
these logical GPUs have none.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from factory.catalog.demo import write_catalog
from factory.store.run_tables import read_lineage, read_rejects
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration

CHAIN = [
    {"kind": "generate", "model": "sd-tiny", "params": {"width": 32, "height": 32, "steps": 1},
     "resources": {"num_gpus": 0.5, "num_cpus": 0.25, "batch_size": 8, "concurrency": 2}},
    {"kind": "segment", "model": "u2net-tiny",
     "resources": {"num_gpus": 0, "num_cpus": 0.25, "batch_size": 8}},
    {"kind": "lora", "model": "sd-tiny-brand",
     "params": {"lora": "tiny:sd-tiny-lora", "steps": 1, "strength": 0.5},
     "resources": {"num_gpus": 1, "num_cpus": 0.25, "batch_size": 8, "concurrency": 1}},
    {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]},
     "resources": {"num_gpus": 0, "num_cpus": 0.25, "batch_size": 8}},
    {"kind": "upscale", "model": "swin2sr-tiny-x2",
     "resources": {"num_gpus": 0.5, "num_cpus": 0.25, "batch_size": 8, "concurrency": 2}},
]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 2})
    c.add_node(num_cpus=3, num_gpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def parse(placement: str) -> tuple[str, str, tuple[str, ...]]:
    match = re.fullmatch(r"node=(\S+) actor=(\S+) gpus=\[([^\]]*)\] device=(\S+)(?: dtype=\S+)?", placement)
    assert match, placement
    node, actor, gpus, _ = match.groups()
    return node, actor, tuple(g for g in gpus.split(",") if g)


def test_five_stage_job_pins_gpus_as_asked(cluster, models_dir, tmp_path, monkeypatch):
    import ray

    from factory.run.pipeline import run_job

    # Every pool's actors up before its first block: on a busy machine the first actor of a
    # pool could otherwise render all five blocks before the second has loaded its model, and
    # the placements below are read from the rows each actor rendered.
    monkeypatch.setattr(ray.data.DataContext.get_current(), "wait_for_min_actors_s", 600)
    catalog = write_catalog(tmp_path / "catalog.csv", 160)  # five blocks: work for every actor
    job = parse_job({"name": "gpus", "manifest": {"uri": str(catalog)},
                     # one machine: every node writes to the same directory
                     "output": {"uri": str(tmp_path / "out"), "shared_mount": True}, "seed": 3,
                     "prompt": {"template": "a {{ color }} {{ title }}"}, "stages": CHAIN})
    result = run_job(job)
    store = Store(str(tmp_path / "out"))
    lineage, _ = read_lineage(store, result.run_id)
    rejects = read_rejects(store, result.run_id)
    rows = lineage.to_pylist()
    assert result.counts.assets == 157 and result.counts.failed == 0
    assert len(rows) + rejects.num_rows == 160

    actors: dict[str, set[tuple[str, str, tuple[str, ...]]]] = defaultdict(set)
    for row in rows:
        for stage in ("generate", "segment", "lora", "recolor", "upscale"):
            actors[stage].add(parse(row[f"{stage}_placement"]))
    # whole-GPU stages: one GPU id per actor, used by no other stage
    gpu_users: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for stage, held in actors.items():
        for node, actor, gpus in held:
            expected = {"generate": 1, "lora": 1, "segment": 0, "upscale": 1, "recolor": 0}
            assert len(gpus) == expected[stage], (stage, gpus)
            for gpu in gpus:
                gpu_users[(node, gpu)].append((stage, actor))
    for node, actor, gpus in actors["lora"]:
        assert gpu_users[(node, gpus[0])] == [("lora", actor)], gpu_users
    # fractional stages: 2 actors each at 0.5; 4 halves on the 3 GPUs left: some must share
    fractional = [users for users in gpu_users.values()
                  if all(stage in ("generate", "upscale") for stage, _ in users)]
    assert len({a for s, a in sum(fractional, []) if s == "generate"}) == 2
    assert len({a for s, a in sum(fractional, []) if s == "upscale"}) == 2
    assert all(len(users) <= 2 for users in fractional)  # 0.5 each: at most two per GPU
    assert any(len(users) == 2 for users in fractional)
    # the models ran on CPU: Ray gave logical GPUs, CUDA is absent
    assert all("device=cpu" in p.split() for p in lineage["generate_placement"].to_pylist())


def test_a_local_output_on_two_nodes_is_refused_before_any_model(cluster, models_dir, tmp_path):
    from factory.run.pipeline import run_job
    from factory.run.placement import OutputNotShared

    catalog = write_catalog(tmp_path / "catalog.csv", 10)
    job = parse_job({"name": "split", "manifest": {"uri": str(catalog)},
                     "output": {"uri": str(tmp_path / "out")},
                     "prompt": {"template": "a {{ color }} {{ title }}"}, "stages": CHAIN[:1]})
    with pytest.raises(OutputNotShared, match="has 2 nodes"):
        run_job(job)
    assert not (tmp_path / "out").exists()  # nothing written, no preflight probe either
