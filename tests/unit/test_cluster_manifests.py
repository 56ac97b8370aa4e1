"""Every file in cluster/ validates: KubeRay kinds against KubeRay v1.7.0's CRD schemas (strict),
core kinds and every object's metadata against Kubernetes' own (kubernetes-validate, strict).

The KubeRay schemas live in shared/ beside the repository (``../shared/schemas``), as in CI.
Also: the RayCluster keeps token auth, autoscaling and metrics on; jobs/catalog-gpu.yaml fits
one of its GPU workers; the committed exports are what ``factory schedule export`` writes now.
Hermetic: no Ray, no network, no cluster.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from factory.deploy import kubernetes
from factory.spec.job import load_job

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"
KUBERAY_KINDS = {"RayCluster": "raycluster.json", "RayJob": "rayjob.json",
                 "RayCronJob": "raycronjob.json"}
K8S_VERSION = kubernetes_validate.latest_version()
#: Every Kubernetes object in cluster/ (runtime-env.yaml is a Ray runtime_env: test_image.py).
MANIFESTS = sorted(p for p in (REPO / "cluster").rglob("*.yaml") if p.name != "runtime-env.yaml")
RAYCLUSTER = REPO / "cluster" / "raycluster.yaml"
#: The committed exports: (job spec, folder).
EXPORTS = (("jobs/seasonal-catalog.yaml", "cluster/schedules"),
           ("jobs/catalog-gpu.yaml", "cluster/jobs"))


def _schema(kind: str) -> dict:
    path = SCHEMAS / KUBERAY_KINDS[kind]
    if not path.is_file():
        pytest.fail(f"{path} is missing: the KubeRay schemas come from shared/ beside the "
                    "repository (../shared/schemas/kuberay-v1.7.0)")
    return json.loads(path.read_text(encoding="utf-8"))


def validate(doc: dict) -> None:
    """Raise if ``doc`` is not a valid object of its kind (unknown keys rejected)."""
    kind = doc.get("kind")
    if kind in KUBERAY_KINDS:
        jsonschema.Draft7Validator(_schema(kind)).validate(doc)
        # KubeRay's schemas leave metadata to Kubernetes': check it on a core object.
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": doc.get("metadata", {})},
                                     K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_cluster_holds_the_expected_manifests() -> None:
    names = {p.relative_to(REPO).as_posix() for p in MANIFESTS}
    assert "cluster/raycluster.yaml" in names
    assert "cluster/jobs/catalog-gpu-rayjob.yaml" in names
    assert {"cluster/schedules/seasonal-catalog-nightly-raycronjob.yaml",
            "cluster/schedules/seasonal-catalog-nightly-cronjob.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_manifest_validates(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(("kind", "where", "typo"), [
    ("RayJob", ("spec",), "shutdownAfterJobFinish"),
    ("RayCluster", ("spec",), "enableInTreeAutoscaler"),
    ("RayCluster", ("spec", "headGroupSpec", "template", "spec", "containers", 0), "imagee"),
    ("RayCronJob", ("spec",), "timezone"),
    ("CronJob", ("spec",), "startingDeadlineSecond"),
    ("CronJob", ("metadata",), "lables"),
    ("RayJob", ("metadata",), "lables"),
])
def test_a_misspelt_key_is_rejected(kind: str, where: tuple, typo: str) -> None:
    doc = copy.deepcopy(next(d for p in MANIFESTS for d in _docs(p) if d["kind"] == kind))
    node = doc
    for step in where:
        node = node[step]
    node[typo] = "x"
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError),
                       match=typo):
        validate(doc)


def test_a_wrong_value_is_rejected() -> None:
    (cluster,) = _docs(RAYCLUSTER)
    cluster["spec"]["authOptions"]["mode"] = "tokens"
    with pytest.raises(jsonschema.ValidationError):
        validate(cluster)
    (cluster,) = _docs(RAYCLUSTER)
    cluster["metadata"]["labels"] = ["app.kubernetes.io/part-of=asset-factory"]  # not a map
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(cluster)


def test_raycluster_keeps_auth_autoscaling_metrics_and_a_cpu_only_head() -> None:
    (cluster,) = _docs(RAYCLUSTER)
    spec = cluster["spec"]
    assert cluster["metadata"]["name"] == "asset-factory"
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"] == {"mode": "token", "secretName": kubernetes.AUTH_SECRET}
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in str(head)
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert "nvidia.com/gpu" not in str(groups["cpu"])
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    assert groups["gpu"]["minReplicas"] == 0 and groups["gpu"]["maxReplicas"] >= 8
    for group in [head, *spec["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert {"containerPort": 8080, "name": "metrics"} in ports
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(),
                        re.M).group(1)
    assert {c["image"] for c in _containers(spec)} == {f"asset-factory:{version}"}  # make image


def test_no_token_is_ever_inline() -> None:
    for path in MANIFESTS:
        text = path.read_text(encoding="utf-8")
        for doc in _docs(path):
            for env in _walk_env(doc):
                if "TOKEN" in env["name"] or "SECRET" in env["name"]:
                    assert "value" not in env, f"{path}: {env['name']} inline"
        assert "auth_token=" not in text.replace("--from-literal=auth_token=", "")


def _walk_env(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from value
            else:
                yield from _walk_env(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_env(item)


def test_catalog_gpu_runs_the_five_stages_on_real_cards_within_one_gpu_worker() -> None:
    job = load_job(REPO / "jobs" / "catalog-gpu.yaml")
    assert [p.card.kind for p in job.stages] == ["generate", "segment", "lora", "recolor",
                                                 "upscale"]
    for plan in job.stages:
        assert not (plan.source_ref or "").startswith("tiny:"), plan.name
        assert plan.card.name not in ("generate/synthetic", "upscale/lanczos"), plan.name
    (cluster,) = _docs(RAYCLUSTER)
    gpu_group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    container = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    per_worker = int(container["nvidia.com/gpu"])
    needed = sum(p.resources.num_gpus * p.resources.concurrency for p in job.stages)
    assert 0 < needed <= per_worker + 1e-9
    cards = sum(p.card.resources.num_gpus for p in job.stages)
    assert cards > per_worker  # the cards' defaults (2.75) would not fit: the spec sizes them
    cpus = sum(p.resources.num_cpus * p.resources.concurrency for p in job.stages)
    assert cpus <= float(container["cpu"])
    assert job.output.uri.startswith("s3://") and job.manifest_uri.startswith("s3://")


@pytest.mark.parametrize(("job_path", "folder"), EXPORTS)
def test_committed_exports_are_what_the_export_writes_now(job_path: str, folder: str, tmp_path,
                                                          monkeypatch) -> None:
    job = load_job(REPO / job_path)
    assert job.output.uri.startswith("s3://"), "a cluster job needs an s3:// output"
    cluster = kubernetes.load_cluster(RAYCLUSTER)
    monkeypatch.chdir(tmp_path)  # the files name the folder as given, relative
    written = kubernetes.export(job_path, job.name, job.schedules, Path(folder), cluster=cluster)
    prefix = kubernetes.k8s_name(job.name, limit=200)
    committed = sorted(p.name for p in (REPO / folder).glob(f"{prefix}-*"))
    assert sorted(p.name for p in written) == committed
    for path in written:
        assert path.read_text() == (REPO / folder / path.name).read_text(), (
            f"{folder}/{path.name} is stale: run factory schedule export {job_path} --out {folder}")


def test_every_exported_job_runs_a_spec_shipped_in_the_image() -> None:
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc["kind"] in ("RayCluster", "ConfigMap"):  # ConfigMap: cluster/grafana/
                continue
            spec = doc["spec"].get("jobTemplate", doc["spec"])
            if doc["kind"] == "CronJob":
                container = spec["spec"]["template"]["spec"]["containers"][0]
                job_path = REPO / container["command"][2]
                assert container["workingDir"] == kubernetes.APP_DIR
            else:
                assert spec["shutdownAfterJobFinishes"] is True
                assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
                assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
                entry = spec["entrypoint"].split()
                assert entry[:3] == ["python", "-m", "factory.cli.main"]
                assert entry[3] in ("run", "refresh")
                job_path = REPO / Path(entry[4]).relative_to(kubernetes.APP_DIR)
            assert job_path.is_file(), f"{path.name}: {job_path} is not in the repository"
            load_job(job_path)
