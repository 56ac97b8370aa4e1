"""Where a job may run: capacity now and at the autoscaler's maximum, what every node reaches,
and weights found on the node that loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.run.placement import (
    ClusterTooSmall, OutputNotShared, capacity_verdict, check_output_reach,
)
from factory.spec.job import parse_job
from stages.weights import WeightsError, locate, resolve_source


def job(output: dict | None = None, num_gpus: float = 1, concurrency: int = 2):
    return parse_job({
        "name": "placed", "manifest": {"uri": "m.csv"},
        "output": output or {"uri": "/data/out"},
        "prompt": {"template": "a {{ title }}"},
        "stages": [{"kind": "generate", "model": "synthetic",
                    "resources": {"num_gpus": num_gpus, "num_cpus": 0.5,
                                  "concurrency": concurrency}}]})


def test_a_job_that_fits_now_runs():
    assert capacity_verdict(job(), {"CPU": 4, "GPU": 2}, None) == "fits"


def test_without_an_autoscaler_a_job_too_big_fails_fast_naming_what_is_missing():
    with pytest.raises(ClusterTooSmall, match="needs 2 GPUs, the cluster has 1"):
        capacity_verdict(job(), {"CPU": 4, "GPU": 1}, None)


def test_with_an_autoscaler_a_job_that_fits_the_maximum_waits():
    assert capacity_verdict(job(), {"CPU": 2, "GPU": 0}, {"CPU": 64, "GPU": 8}) == "wait"


def test_a_job_that_cannot_fit_even_at_the_maximum_fails_fast():
    with pytest.raises(ClusterTooSmall, match="16 GPUs, the cluster has 8.*autoscaler's maximum"):
        capacity_verdict(job(concurrency=16), {"CPU": 2, "GPU": 0}, {"CPU": 64, "GPU": 8})


def test_a_local_output_on_several_nodes_is_refused_unless_declared_shared():
    check_output_reach(job(), nodes=1)  # one node: a local directory is fine
    with pytest.raises(OutputNotShared, match="has 3 nodes.*s3://.*shared_mount: true"):
        check_output_reach(job(), nodes=3)
    check_output_reach(job({"uri": "/mnt/nfs/out", "shared_mount": True}), nodes=3)
    check_output_reach(job({"uri": "s3://bucket/out"}), nodes=3)


def test_a_tiny_model_missing_on_this_node_is_built_here(tmp_path, monkeypatch):
    driver = resolve_source("tiny:u2net-tiny.onnx", tmp_path / "driver-models")
    assert not Path(driver).exists()  # the driver's path: not on this "node"
    monkeypatch.setenv("FACTORY_MODELS_DIR", str(tmp_path / "node-models"))
    found = locate(driver, ref="tiny:u2net-tiny.onnx", s3_options=None, cache_dir=str(tmp_path))
    assert found == str(tmp_path / "node-models" / "u2net-tiny.onnx")
    assert Path(found).stat().st_size > 1000
    again = locate(driver, ref="tiny:u2net-tiny.onnx", s3_options=None, cache_dir=str(tmp_path))
    assert again == found


def test_weights_the_node_has_or_hub_ids_pass_and_missing_paths_are_named(tmp_path):
    here = tmp_path / "model.onnx"
    here.write_bytes(b"x")
    assert locate(str(here), ref=str(here), s3_options=None, cache_dir="") == str(here)
    assert locate("stabilityai/sd-turbo", ref="stabilityai/sd-turbo", s3_options=None,
                  cache_dir="") == "stabilityai/sd-turbo"
    with pytest.raises(WeightsError, match="does not exist on node .*s3://"):
        locate("/gone/model.onnx", ref="/gone/model.onnx", s3_options=None, cache_dir="")


def test_an_onnx_stage_reserving_a_gpu_its_nodes_cannot_use_is_refused():
    from factory.run.placement import onnx_gpu_problems

    segment = parse_job({
        "name": "cut", "manifest": {"uri": "m.csv"}, "output": {"uri": "/data/out"},
        "stages": [{"kind": "generate", "model": "synthetic"},
                   {"kind": "segment", "model": "u2net"},  # the card reserves 0.25 GPU
                   {"kind": "segment", "model": "u2net", "name": "cpu_cut",
                    "resources": {"num_gpus": 0}}]})
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert onnx_gpu_problems(segment, {"node-a": cuda}) == []
    assert onnx_gpu_problems(segment, {}) == []  # no GPU node yet: the actor's load checks
    (problem,) = onnx_gpu_problems(segment, {"node-a": cuda, "node-b": cpu_only})
    assert "stage 'segment' (segment/u2net) reserves 0.25 GPU" in problem
    assert "node-b" in problem and "node-a" not in problem and "onnxruntime-gpu" in problem
    assert onnx_gpu_problems(job(), {"node-b": cpu_only}) == []  # no ONNX stage
