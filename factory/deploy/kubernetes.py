"""Kubernetes objects for a job spec: KubeRay RayJob and RayCronJob, and a CronJob fallback.

``export`` writes, for one job spec:

- ``<job>-rayjob.yaml``: one run (``factory run``) as a KubeRay ``RayJob`` on a Ray cluster of
  its own (the spec of ``cluster/raycluster.yaml``), deleted when the run ends
  (``shutdownAfterJobFinishes``, ``ttlSecondsAfterFinished``) and stopped after
  ``activeDeadlineSeconds``. ``kubectl create -f`` it: each create is one run (``generateName``).
- per schedule, ``<job>-<schedule>-raycronjob.yaml``: the same RayJob as a KubeRay
  ``RayCronJob`` (KubeRay 1.6+, alpha: the operator's ``RayCronJob`` feature gate) that runs
  ``factory refresh`` on the schedule, in UTC.
- per schedule, ``<job>-<schedule>-cronjob.yaml``: the fallback where that gate is off, a
  ``batch/v1`` CronJob whose pod runs ``factory submit --refresh`` against the long-lived
  RayCluster. Apply one of the two per schedule, not both (nor ``factory schedule run``).

A schedule's ``overlap`` (skip, queue, allow) holds on both, each in its own way. A RayCronJob
has no concurrency policy, and each firing is a Ray cluster of its own, so no Jobs API sees
another firing's run: its entrypoint is ``factory refresh --overlap ... --lease-ttl
<activeDeadlineSeconds>``, whose driver takes the job's lease in the output store first
(``factory.deploy.overlap``): ``skip`` exits 0 at once while another run holds it, ``queue``
waits for it (the wait counts against the RayJob's deadline; each waiting firing keeps its
CPU-only head up, and the waiting firings run one after another). The CronJob's pods submit to
one long-lived RayCluster, whose Jobs API lists every run of the job: ``factory submit
--overlap ...`` checks it before submitting. Its ``concurrencyPolicy`` (``CONCURRENCY``)
alone would not do, since a pod ends once it has submitted, long before the run; ``Forbid``
keeps a queued pod's later slots from piling up behind it (Kubernetes has no queue: they are
dropped, and the waiting pod submits the current catalog once the run in its way ends).

The job spec is shipped in the image (``APP_DIR``, the Dockerfile's ``WORKDIR``), so it must
be a path relative to the repository root. Ray token auth stays on: the RayCluster names the
token's Secret in ``authOptions``, KubeRay passes it to Ray's containers and to RayJob
submitters, and the CronJob's pod reads it from the same Secret by reference, never inline.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from factory.core import settings
from factory.spec.cron import Overlap, validate_cron

if TYPE_CHECKING:  # typing only: this module reads a schedule's name, cron and season
    from factory.spec.seasons import ScheduleSpec

#: The image's working directory (``WORKDIR`` in the Dockerfile): the repository is there.
APP_DIR = "/app"
#: The Secret with Ray's auth token, under KubeRay's key (``authOptions.secretName``).
AUTH_SECRET = "ray-auth-token"
AUTH_SECRET_KEY = "auth_token"
#: What a pod outside Ray (the CronJob's submitter) needs to talk to a token-auth cluster:
#: RAY_AUTH_MODE=token makes Ray's clients send the token to a non-loopback address.
AUTH_ENV = ({"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": AUTH_SECRET, "key": AUTH_SECRET_KEY}}})
#: The driver joins the cluster it runs on instead of starting a Ray of its own.
JOB_ENV = {settings.RAY_ADDRESS: "auto", "PYTHONUNBUFFERED": "1"}
DEFAULT_DEADLINE_S = 6 * 3600
DEFAULT_TTL_S = 600
PART_OF = "asset-factory"
#: The fallback CronJob's ``concurrencyPolicy`` per overlap: its pods end once they have
#: submitted, so ``factory submit --overlap`` does the check; ``Forbid`` keeps at most one
#: queued pod waiting.
CONCURRENCY: dict[str, str] = {"skip": "Forbid", "queue": "Forbid", "allow": "Allow"}
#: How long the fallback CronJob's pod may take when it does not wait (``skip``, ``allow``).
SUBMIT_DEADLINE_S = 900


class ExportError(ValueError):
    """A job or cluster that cannot be exported; the message says which and why."""


def load_cluster(path: str | Path) -> dict[str, Any]:
    """Read a KubeRay RayCluster manifest (``cluster/raycluster.yaml``) as a dict.

    Raises:
        ExportError: The file is not one ``ray.io/v1`` RayCluster with a head group.
    """
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise ExportError(f"{path}: cannot read the RayCluster: {exc}") from exc
    if (len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != "RayCluster"
            or docs[0].get("apiVersion") != "ray.io/v1"
            or "headGroupSpec" not in (docs[0].get("spec") or {})):
        raise ExportError(f"{path}: expected one ray.io/v1 RayCluster with a headGroupSpec")
    return docs[0]


def cluster_spec(cluster: dict[str, Any], *, image: str | None = None) -> dict[str, Any]:
    """A copy of the RayCluster's spec, with every Ray container's image set to ``image``."""
    spec = copy.deepcopy(cluster["spec"])
    if image:
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            for container in group["template"]["spec"]["containers"]:
                container["image"] = image
    return spec


def head_image(cluster: dict[str, Any]) -> str:
    """The image of the RayCluster's head container."""
    return cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def jobs_address(cluster: dict[str, Any]) -> str:
    """The RayCluster's job server as seen from inside Kubernetes (KubeRay's head Service)."""
    return f"http://{cluster['metadata']['name']}-head-svc:8265"


def rayjob_spec(job_path: str, *, cluster: dict[str, Any], image: str | None = None,
                refresh: bool = False, season: str | None = None, overlap: Overlap = "allow",
                deadline_s: int = DEFAULT_DEADLINE_S,
                ttl_s: int = DEFAULT_TTL_S) -> dict[str, Any]:
    """A RayJobSpec that runs (or refreshes) ``job_path`` on a Ray cluster of its own.

    Args:
        job_path: The job spec, relative to the repository root (``jobs/x.yaml``).
        cluster: The RayCluster whose spec the job's cluster copies.
        image: Overrides every Ray container's image.
        refresh: ``factory refresh`` instead of ``factory run``.
        season: Pins a season (``--season``); None picks it by date.
        overlap: ``skip`` or ``queue``: the driver takes the job's lease in the output store
            first (``--overlap``), which expires after ``deadline_s``.
        deadline_s: ``activeDeadlineSeconds``: the run is stopped after this.
        ttl_s: ``ttlSecondsAfterFinished``: how long the finished cluster stays for a look.
    """
    args = ["python", "-m", "factory.cli.main", "refresh" if refresh else "run",
            in_image(job_path)] + (["--season", season] if season else [])
    if overlap != "allow":
        args += ["--overlap", overlap, "--lease-ttl", str(deadline_s)]
    return {"entrypoint": shlex.join(args),
            "runtimeEnvYAML": yaml.safe_dump({"env_vars": dict(JOB_ENV)}, sort_keys=True),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl_s,
            "activeDeadlineSeconds": deadline_s,
            "backoffLimit": 0,  # a rerun resumes, but it is the caller's decision
            "rayClusterSpec": cluster_spec(cluster, image=image)}


def rayjob(job_path: str, job_name: str, *, cluster: dict[str, Any],
           image: str | None = None, deadline_s: int = DEFAULT_DEADLINE_S,
           ttl_s: int = DEFAULT_TTL_S) -> dict[str, Any]:
    """A RayJob that runs ``job_path`` once (see ``rayjob_spec``)."""
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"generateName": k8s_name(job_name, limit=40) + "-",
                         "labels": _labels(job_name)},
            "spec": rayjob_spec(job_path, cluster=cluster, image=image, deadline_s=deadline_s,
                                ttl_s=ttl_s)}


def raycronjob(job_path: str, job_name: str, schedule: ScheduleSpec, *,
               cluster: dict[str, Any], image: str | None = None,
               deadline_s: int = DEFAULT_DEADLINE_S,
               ttl_s: int = DEFAULT_TTL_S) -> dict[str, Any]:
    """A RayCronJob that refreshes ``job_path`` on ``schedule.cron`` (UTC)."""
    _check_cron(schedule)
    return {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
            "metadata": {"name": k8s_name(job_name, schedule.name, limit=40),
                         "labels": _labels(job_name, schedule.name)},
            "spec": {"schedule": schedule.cron, "timeZone": "Etc/UTC",
                     "jobTemplate": rayjob_spec(job_path, cluster=cluster, image=image,
                                                refresh=True, season=schedule.season,
                                                overlap=schedule.overlap,
                                                deadline_s=deadline_s, ttl_s=ttl_s)}}


def submitter_cronjob(job_path: str, job_name: str, schedule: ScheduleSpec, *, image: str,
                      address: str, starting_deadline_s: int = 3600,
                      queue_wait_s: int = DEFAULT_DEADLINE_S) -> dict[str, Any]:
    """A batch/v1 CronJob whose pod submits one refresh per slot to a running RayCluster.

    With ``overlap`` skip or queue the pod asks the cluster's Jobs API first (``factory submit
    --overlap``); a queued pod waits at most ``queue_wait_s`` (``activeDeadlineSeconds``).
    """
    _check_cron(schedule)
    in_image(job_path)
    labels = _labels(job_name, schedule.name)
    season = ["--season", schedule.season] if schedule.season else []
    overlap = ["--overlap", schedule.overlap] if schedule.overlap != "allow" else []
    container = {"name": "submit", "image": image, "workingDir": APP_DIR,
                 "command": ["factory", "submit", job_path, "--address", address, "--refresh",
                             *season, *overlap],
                 "env": [dict(e) for e in AUTH_ENV],
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                               "limits": {"memory": "1Gi"}}}
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": k8s_name(job_name, schedule.name, limit=52), "labels": labels},
            "spec": {"schedule": schedule.cron, "timeZone": "Etc/UTC",
                     "concurrencyPolicy": CONCURRENCY[schedule.overlap],
                     "startingDeadlineSeconds": starting_deadline_s,
                     "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                     "jobTemplate": {"spec": {
                         "backoffLimit": 2,
                         "activeDeadlineSeconds": (queue_wait_s if schedule.overlap == "queue"
                                                   else SUBMIT_DEADLINE_S),
                         "template": {"metadata": {"labels": dict(labels)},
                                      "spec": {"restartPolicy": "Never",
                                               "containers": [container]}}}}}}


def export(job_path: str, job_name: str, schedules: Sequence[ScheduleSpec], out_dir: Path, *,
           cluster: dict[str, Any], image: str | None = None, address: str | None = None,
           deadline_s: int = DEFAULT_DEADLINE_S, ttl_s: int = DEFAULT_TTL_S,
           starting_deadline_s: int = 3600) -> list[Path]:
    """Write the job's RayJob, and a RayCronJob and a fallback CronJob per schedule.

    Args:
        job_path: The job spec's path relative to the repository root (shipped in the image).
        job_name: The job's name (names the objects and files).
        schedules: The job's schedules (name, cron, season); may be empty.
        out_dir: Where the files go (created if missing).
        cluster: The RayCluster manifest (``load_cluster``): the RayJobs' clusters copy its
            spec, and the CronJob submits to it.
        image: The image with the factory; default: the RayCluster's head image.
        address: The job server the CronJob submits to; default: the RayCluster's head Service.
        deadline_s: ``activeDeadlineSeconds`` of every RayJob, the expiry of a RayCronJob
            firing's lease, and how long a queued CronJob pod waits.
        ttl_s: ``ttlSecondsAfterFinished`` of every RayJob.
        starting_deadline_s: How late a missed CronJob slot may still start (once).

    Returns:
        The files written: the RayJob, then RayCronJob and CronJob for each schedule.

    Raises:
        ExportError: A job path outside the repository, a bad cron, clashing names.
    """
    problems = [f"schedule {s.name}: {why}" for s in schedules if (why := validate_cron(s.cron))]
    if len({k8s_name(job_name, s.name, limit=40) for s in schedules}) != len(schedules):
        problems.append("schedule names must stay distinct as Kubernetes names")
    if problems:
        raise ExportError(f"job {job_name}: " + "; ".join(problems))
    in_image(job_path)
    image = image or head_image(cluster)
    address = address or jobs_address(cluster)
    docs: list[tuple[str, dict[str, Any], str, Any]] = [
        (f"{k8s_name(job_name, limit=200)}-rayjob.yaml",
         rayjob(job_path, job_name, cluster=cluster, image=image, deadline_s=deadline_s,
                ttl_s=ttl_s), _RAYJOB_HEADER, None)]
    for schedule in schedules:
        base = k8s_name(job_name, schedule.name, limit=200)
        docs.append((f"{base}-raycronjob.yaml",
                     raycronjob(job_path, job_name, schedule, cluster=cluster, image=image,
                                deadline_s=deadline_s, ttl_s=ttl_s),
                     _RAYCRONJOB_HEADER, schedule))
        docs.append((f"{base}-cronjob.yaml",
                     submitter_cronjob(job_path, job_name, schedule, image=image,
                                       address=address, starting_deadline_s=starting_deadline_s,
                                       queue_wait_s=deadline_s),
                     _CRONJOB_HEADER, schedule))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc, header, schedule in docs:
        text = header.format(job=job_name, path=job_path, app=APP_DIR, out=out_dir.as_posix(),
                             schedule=getattr(schedule, "name", ""),
                             cron=getattr(schedule, "cron", ""),
                             overlap=_OVERLAP_NOTES.get(
                                 (doc["kind"], getattr(schedule, "overlap", "")), ""))
        path = out_dir / name
        path.write_text(text + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100),
                        encoding="utf-8")
        written.append(path)
    return written


def in_image(job_path: str) -> str:
    """The job spec's absolute path inside the image; refuses paths outside the repository."""
    path = PurePosixPath(job_path)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ExportError(f"job spec {job_path}: give it relative to the repository root "
                          f"(it runs from the image's {APP_DIR})")
    return str(PurePosixPath(APP_DIR) / path)


def k8s_name(*parts: str, limit: int) -> str:
    """A DNS-1123 name within ``limit``; a hash suffix keeps truncated names distinct."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-") or "x"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-')}-{digest}"


def _labels(job_name: str, schedule: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/part-of": PART_OF,
              "asset-factory/job": k8s_name(job_name, limit=63)}
    if schedule:
        labels["asset-factory/schedule"] = k8s_name(schedule, limit=63)
    return labels


def _check_cron(schedule: ScheduleSpec) -> None:
    if why := validate_cron(schedule.cron):
        raise ExportError(f"schedule {schedule.name}: {why}")


_GENERATED = ("# Generated by `factory schedule export {path} --out {out}`; edit the spec or\n"
              "# cluster/raycluster.yaml and run that again rather than editing this file.\n")
_RAYJOB_HEADER = _GENERATED + """\
# One run of job {job} ({app}/{path} in the image) on a Ray cluster of its own, a copy of
# cluster/raycluster.yaml, deleted when the run ends. Each `kubectl create -f` is one run
# (generateName; `kubectl apply` cannot). Watch: kubectl get rayjobs -w;
# kubectl logs -f job/<rayjob name> (the submitter follows the driver's output).
"""
_RAYCRONJOB_HEADER = _GENERATED + """\
# Job {job}, schedule {schedule}: `{cron}` UTC. Each slot creates a RayJob that runs
# `factory refresh` on a Ray cluster of its own. RayCronJob is alpha in KubeRay 1.6+: the
# operator needs the feature gate (--feature-gates=RayCronJob=true). Without it, apply the
# -cronjob.yaml beside this file instead, never both.
# {overlap}
"""
_CRONJOB_HEADER = _GENERATED + """\
# Job {job}, schedule {schedule}: `{cron}` UTC. The fallback for a KubeRay without the
# RayCronJob feature gate: each slot's pod submits one refresh (`factory submit --refresh`) to
# the RayCluster of cluster/raycluster.yaml, with the token from its Secret, by reference.
# Apply this OR the -raycronjob.yaml beside it, not both, and not with `factory schedule run`.
# {overlap}
"""
#: A header line per kind and overlap policy (the module docstring says why each works so).
_OVERLAP_NOTES = {
    ("RayCronJob", "skip"): "overlap: skip. The driver takes the job's run lease in the output "
                            "store first;\n# while another run holds it, it exits 0 and runs "
                            "nothing.",
    ("RayCronJob", "queue"): "overlap: queue. The driver takes the job's run lease in the "
                             "output store first;\n# while another run holds it, it waits "
                             "(within activeDeadlineSeconds).",
    ("RayCronJob", "allow"): "overlap: allow. Each slot runs, beside any run of the job still "
                             "going.",
    ("CronJob", "skip"): "overlap: skip. The pod asks the RayCluster's Jobs API first; while "
                         "a run of the job\n# is PENDING or RUNNING, it submits nothing.",
    ("CronJob", "queue"): "overlap: queue. The pod asks the RayCluster's Jobs API first and "
                          "waits until no run of\n# the job is PENDING or RUNNING; Forbid "
                          "drops the slots that come due meanwhile.",
    ("CronJob", "allow"): "overlap: allow. Each slot submits, beside any run of the job still "
                          "going.",
}


class _Dumper(yaml.SafeDumper):
    """Plain YAML, with multi-line strings (runtimeEnvYAML) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
