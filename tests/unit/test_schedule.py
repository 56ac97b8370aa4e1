"""Schedules: due slots fire once, survive restarts without double fires, export valid YAML.

The Kubernetes export (``factory.deploy.kubernetes``) is checked against KubeRay's and Kubernetes'
schemas in test_cluster_manifests.py; here, what it writes for a job's schedules.

Hermetic: a local-directory store under tmp_path, a fake clock, a fake submit; no Ray, no sleep.
"""

from __future__ import annotations

import json
import sys
import types
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from factory.deploy import kubernetes
from factory.deploy.schedule import (
    AlreadySubmitted, Scheduler, due_slot, jobs_submitter, run_id_for, validate_cron,
)
from factory.store.storage import Store
from tests.support.schedules import Clock, Sched

CLUSTER = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "asset-factory"},
           "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
               {"name": "ray-head", "image": "asset-factory:0.1.0"}]}}},
               "workerGroupSpecs": [{"groupName": "gpu", "template": {"spec": {"containers": [
                   {"name": "ray-worker", "image": "asset-factory:0.1.0"}]}}}]}}

T0 = datetime(2025, 3, 1, 10, 7, tzinfo=timezone.utc)  # a Saturday, 10:07 UTC


class FakeSubmit:
    """Records calls; ``fail`` raises once per queued exception."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None, datetime]] = []
        self.fail: list[Exception] = []

    def __call__(self, schedule: str, run_id: str, season: str | None, slot: datetime) -> None:
        self.calls.append((schedule, run_id, season, slot))
        if self.fail:
            raise self.fail.pop(0)

    @property
    def run_ids(self) -> list[str]:
        return [c[1] for c in self.calls]


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def _scheduler(tmp_path, clock, submit, schedules=(Sched("hourly", "0 * * * *"),)):
    return Scheduler(store=Store(str(tmp_path / "out")), job_name="catalog", schedules=schedules,
                     submit=submit, running=lambda job: [], clock=clock, sleep=lambda s: None)


def test_due_slot_window_and_coalescing() -> None:
    now = _utc(2025, 3, 1, 12, 30)
    assert due_slot("0 * * * *", None, now) == _utc(2025, 3, 1, 12, 0)
    assert due_slot("0 * * * *", None, _utc(2025, 3, 1, 12, 0)) == _utc(2025, 3, 1, 12, 0)
    # down since 08:xx: one fire, for the latest missed slot
    assert due_slot("0 * * * *", _utc(2025, 3, 1, 8, 0), now) == _utc(2025, 3, 1, 12, 0)
    assert due_slot("0 * * * *", _utc(2025, 3, 1, 12, 0), now) is None  # never twice
    # a schedule first seen at 12:10 does not fire its 12:00 slot, but does fire 13:00
    assert due_slot("0 * * * *", None, now, first_run=_utc(2025, 3, 1, 12, 10)) is None
    assert due_slot("0 * * * *", None, _utc(2025, 3, 1, 13, 0, 20),
                    first_run=_utc(2025, 3, 1, 12, 10)) == _utc(2025, 3, 1, 13, 0)
    # seen at 12:00:40: the 12:00 slot is in the same minute and counts
    assert due_slot("0 * * * *", None, now, first_run=_utc(2025, 3, 1, 12, 0, 40)) == \
        _utc(2025, 3, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone"):
        due_slot("0 * * * *", None, datetime(2025, 3, 1, 12, 30))


def test_due_slot_converts_other_timezones_to_utc() -> None:
    plus5 = timezone(timedelta(hours=5))
    slot = due_slot("0 2 * * *", None, datetime(2025, 3, 1, 9, 0, tzinfo=plus5))  # 04:00 UTC
    assert slot == _utc(2025, 3, 1, 2, 0) and slot.tzinfo == timezone.utc


@pytest.mark.parametrize("expr", ["", "garbage", "* * * *", "0 0 * * * *", "61 * * * *",
                                  "0 0 31 2 *", "0 0 L * *", "0 0 * * 5#3", "H * * * *",
                                  "@reboot", "*/0 * * * *"])
def test_validate_cron_rejects(expr: str) -> None:
    assert validate_cron(expr)


@pytest.mark.parametrize("expr", ["0 * * * *", "*/15 2-4 * * MON-FRI", "0 0 1 JAN,JUL *",
                                  "@daily", "@hourly", "0 0 29 2 *"])
def test_validate_cron_accepts(expr: str) -> None:
    assert validate_cron(expr) is None


def test_new_schedule_waits_for_its_first_slot_then_fires_once(tmp_path) -> None:
    clock, submit = Clock(T0), FakeSubmit()
    scheduler = _scheduler(tmp_path, clock, submit)
    assert scheduler.tick() == []  # 10:00 was before the schedule was seen
    clock.advance(minutes=53)  # 11:00
    fires = scheduler.tick()
    assert [f.run_id for f in fires] == ["catalog-hourly-20250301T1100Z"]
    assert submit.calls == [("hourly", "catalog-hourly-20250301T1100Z", None,
                             _utc(2025, 3, 1, 11, 0))]
    assert scheduler.tick() == []  # same time: nothing
    clock.advance(seconds=59)
    assert scheduler.tick() == [] and len(submit.calls) == 1
    state = scheduler.state("hourly")
    assert state["last_fired"] == "2025-03-01T11:00:00+00:00"
    assert state["run_id"] == "catalog-hourly-20250301T1100Z"
    marker = tmp_path / "out/schedules/catalog/hourly/20250301T1100Z/fired.json"
    assert json.loads(marker.read_text())["run_id"] == "catalog-hourly-20250301T1100Z"


def test_restart_does_not_double_fire_and_coalesces_missed_slots(tmp_path) -> None:
    clock, submit = Clock(T0), FakeSubmit()
    _scheduler(tmp_path, clock, submit).tick()
    clock.advance(minutes=53)
    assert len(_scheduler(tmp_path, clock, submit).tick()) == 1  # 11:00 fired
    # a new process at the same moment sees the fire in the store
    assert _scheduler(tmp_path, clock, submit).tick() == []
    # down from 11:00 to 14:30: 12:00, 13:00 and 14:00 were missed; one fire, for 14:00
    clock.advance(hours=3, minutes=30)
    restarted = _scheduler(tmp_path, clock, submit)
    assert [f.slot for f in restarted.tick()] == [_utc(2025, 3, 1, 14, 0)]
    assert restarted.tick() == []
    assert submit.run_ids == ["catalog-hourly-20250301T1100Z", "catalog-hourly-20250301T1400Z"]
    assert [h["slot"][11:16] for h in restarted.history("hourly")] == ["14:00", "11:00"]


def test_first_seen_survives_a_restart(tmp_path) -> None:
    """A never-fired schedule whose first slot passed while the scheduler was down still fires."""
    clock, submit = Clock(T0), FakeSubmit()
    _scheduler(tmp_path, clock, submit).tick()  # first seen 10:07
    clock.advance(hours=1, minutes=3)  # 11:10; down over 11:00
    assert [f.slot for f in _scheduler(tmp_path, clock, submit).tick()] == \
        [_utc(2025, 3, 1, 11, 0)]


def test_failed_submit_is_retried_next_tick_then_recorded(tmp_path) -> None:
    clock, submit = Clock(T0.replace(minute=0)), FakeSubmit()
    scheduler = _scheduler(tmp_path, clock, submit)
    submit.fail.append(ConnectionError("ray unreachable"))
    assert scheduler.tick() == []
    assert scheduler.last_errors == ["hourly: ray unreachable"]
    assert scheduler.history("hourly") == []  # not recorded as fired
    clock.advance(seconds=30)
    assert [f.run_id for f in scheduler.tick()] == ["catalog-hourly-20250301T1000Z"]
    assert scheduler.last_errors == []
    assert submit.run_ids == ["catalog-hourly-20250301T1000Z"] * 2  # same id both times
    assert scheduler.tick() == []


def test_submitted_but_unrecorded_fire_is_recorded_after_restart(tmp_path) -> None:
    """A crash after submit, before the marker: the resubmission is a duplicate, not a new run."""
    clock, submit = Clock(T0.replace(minute=0)), FakeSubmit()
    submit.fail.append(AlreadySubmitted("catalog-hourly-20250301T1000Z"))
    fires = _scheduler(tmp_path, clock, submit).tick()
    assert [f.run_id for f in fires] == ["catalog-hourly-20250301T1000Z"]
    assert _scheduler(tmp_path, clock, submit).tick() == []


def test_two_schedules_are_independent(tmp_path) -> None:
    clock, submit = Clock(T0), FakeSubmit()
    schedules = (Sched("hourly", "0 * * * *"), Sched("quarter", "*/15 * * * *", "summer"))
    scheduler = _scheduler(tmp_path, clock, submit, schedules)
    assert scheduler.tick() == []
    clock.advance(minutes=8)  # 10:15
    submit.fail.append(ConnectionError("boom"))  # quarter fails; hourly is not due anyway
    assert scheduler.tick() == []
    clock.advance(minutes=45)  # 11:00: both due; quarter's 10:15 failure is coalesced
    fires = scheduler.tick()
    assert sorted((f.schedule, f.season) for f in fires) == [("hourly", None),
                                                              ("quarter", "summer")]
    assert scheduler.history("hourly")[0]["slot"] == scheduler.history("quarter")[0]["slot"]
    clock.advance(minutes=15)
    assert [f.schedule for f in scheduler.tick()] == ["quarter"]


def test_scheduler_rejects_bad_schedules(tmp_path) -> None:
    with pytest.raises(ValueError, match="nightly"):
        _scheduler(tmp_path, Clock(T0), FakeSubmit(), (Sched("nightly", "not a cron"),))
    with pytest.raises(ValueError, match="unique"):
        _scheduler(tmp_path, Clock(T0), FakeSubmit(), (Sched("a", "@daily"),) * 2)


def test_run_sleeps_until_the_next_slot_and_stops(tmp_path) -> None:
    clock, submit = Clock(_utc(2025, 3, 1, 10, 59, 30)), FakeSubmit()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds=seconds)

    scheduler = Scheduler(store=Store(str(tmp_path / "out")), job_name="catalog",
                          schedules=(Sched("hourly", "0 * * * *"),), submit=submit,
                          running=lambda job: [], clock=clock, sleep=sleep)
    scheduler.run(stop=lambda: len(slept) >= 3)
    assert slept == [30.0, 60.0, 60.0]  # to 11:00, then capped at 60 s
    assert submit.run_ids == ["catalog-hourly-20250301T1100Z"]


def test_run_id_is_deterministic_and_a_valid_run_id() -> None:
    rid = run_id_for("Spring catalog/EU", "nightly", _utc(2025, 3, 1, 2, 0))
    assert rid == "Spring-catalog-EU-nightly-20250301T0200Z"


def test_jobs_submitter_translates_duplicates(monkeypatch) -> None:
    class JobsError(RuntimeError):
        pass

    calls = []

    def submit(job_path, *, address, run_id=None, season=None, refresh=False, working_dir="."):
        calls.append((job_path, address, run_id, season, refresh))
        if len(calls) == 2:  # the message factory.deploy.ray_jobs gives for a duplicate submission id
            raise JobsError(f"run {run_id} was already submitted to the Ray cluster at "
                            f"{address}; Ray keeps submission ids unique: give another --run-id")
        if len(calls) == 3:
            raise JobsError("connection refused")
        return run_id

    fake = types.SimpleNamespace(submit=submit, JobsError=JobsError)
    monkeypatch.setitem(sys.modules, "factory.deploy.ray_jobs", fake)  # no Ray: the real one submits
    fn = jobs_submitter("jobs/a.yaml", address="http://head:8265")
    fn("nightly", "rid", "summer", T0)
    with pytest.raises(AlreadySubmitted):
        fn("nightly", "rid", "summer", T0)
    with pytest.raises(JobsError):
        fn("nightly", "rid", None, T0)
    assert calls[0] == ("jobs/a.yaml", "http://head:8265", "rid", "summer", True)


def test_export_writes_a_rayjob_and_per_schedule_a_raycronjob_and_a_fallback(tmp_path) -> None:
    schedules = (Sched("nightly", "0 2 * * *", "summer"), Sched("hourly", "@hourly"))
    paths = kubernetes.export("jobs/catalog.yaml", "Spring Catalog", schedules, tmp_path,
                              cluster=CLUSTER, image="registry.example/asset-factory:1")
    assert [p.name for p in paths] == [
        "spring-catalog-rayjob.yaml",
        "spring-catalog-nightly-raycronjob.yaml", "spring-catalog-nightly-cronjob.yaml",
        "spring-catalog-hourly-raycronjob.yaml", "spring-catalog-hourly-cronjob.yaml"]
    docs = {p.name: list(yaml.safe_load_all(p.read_text())) for p in paths}
    assert all(len(d) == 1 for d in docs.values())
    assert all(p.read_text().startswith("# Generated by `factory schedule export jobs/catalog.yaml")
               for p in paths)

    (once,) = docs["spring-catalog-rayjob.yaml"]
    assert (once["apiVersion"], once["kind"]) == ("ray.io/v1", "RayJob")
    assert once["metadata"]["generateName"] == "spring-catalog-"  # each create is one run
    assert once["spec"]["entrypoint"] == "python -m factory.cli.main run /app/jobs/catalog.yaml"
    assert once["spec"]["shutdownAfterJobFinishes"] is True
    assert once["spec"]["ttlSecondsAfterFinished"] > 0
    assert once["spec"]["activeDeadlineSeconds"] == kubernetes.DEFAULT_DEADLINE_S
    assert yaml.safe_load(once["spec"]["runtimeEnvYAML"]) == {
        "env_vars": {"FACTORY_RAY_ADDRESS": "auto", "PYTHONUNBUFFERED": "1"}}
    head = once["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "registry.example/asset-factory:1"
    assert CLUSTER["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == \
        "asset-factory:0.1.0"  # the cluster it copied is left alone

    (cron,) = docs["spring-catalog-nightly-raycronjob.yaml"]
    assert (cron["apiVersion"], cron["kind"]) == ("ray.io/v1", "RayCronJob")
    assert cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["jobTemplate"]["entrypoint"] == (
        "python -m factory.cli.main refresh /app/jobs/catalog.yaml --season summer "
        "--overlap skip --lease-ttl 21600")  # the default overlap: the driver takes the lease
    assert cron["spec"]["jobTemplate"]["shutdownAfterJobFinishes"] is True

    (fallback,) = docs["spring-catalog-nightly-cronjob.yaml"]
    assert (fallback["apiVersion"], fallback["kind"]) == ("batch/v1", "CronJob")
    assert fallback["spec"]["schedule"] == "0 2 * * *"
    assert fallback["spec"]["concurrencyPolicy"] == "Forbid"
    assert fallback["spec"]["startingDeadlineSeconds"] > 0
    pod = fallback["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["factory", "submit", "jobs/catalog.yaml", "--address",
                                    "http://asset-factory-head-svc:8265", "--refresh",
                                    "--season", "summer", "--overlap", "skip"]
    assert container["workingDir"] == kubernetes.APP_DIR
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert "value" not in env["RAY_AUTH_TOKEN"]  # the token only ever by reference
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ray-auth-token",
                                                                 "key": "auth_token"}
    hourly = docs["spring-catalog-hourly-raycronjob.yaml"][0]
    assert hourly["spec"]["schedule"] == "@hourly"
    assert "--season" not in str(hourly) and "--season" not in str(
        docs["spring-catalog-hourly-cronjob.yaml"])
    for path in paths:
        text = path.read_text()
        assert "&id" not in text and "*id" not in text  # no YAML anchors: plain manifests


def test_export_of_a_job_without_schedules_writes_its_rayjob(tmp_path) -> None:
    paths = kubernetes.export("jobs/gpu.yaml", "gpu", (), tmp_path, cluster=CLUSTER)
    assert [p.name for p in paths] == ["gpu-rayjob.yaml"]
    (doc,) = yaml.safe_load_all(paths[0].read_text())
    containers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert containers["containers"][0]["image"] == "asset-factory:0.1.0"  # the cluster's


def test_export_rejects_bad_cron_and_paths_outside_the_repository(tmp_path) -> None:
    with pytest.raises(kubernetes.ExportError, match="bad"):
        kubernetes.export("j.yaml", "j", (Sched("bad", "nope"),), tmp_path, cluster=CLUSTER)
    for path in ("/etc/job.yaml", "../job.yaml", "jobs/../../job.yaml"):
        with pytest.raises(kubernetes.ExportError, match="relative to the repository root"):
            kubernetes.export(path, "j", (), tmp_path, cluster=CLUSTER)
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_command_writes_the_manifests(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from factory.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs/a.yaml").write_text(yaml.safe_dump({
        "name": "a", "manifest": {"uri": "s3://b/catalog.csv"}, "output": {"uri": "s3://b/out"},
        "schedules": [{"name": "nightly", "cron": "0 2 * * *"}],
        "stages": [{"kind": "generate", "model": "synthetic"}]}))
    (tmp_path / "raycluster.yaml").write_text(yaml.safe_dump(CLUSTER))
    result = CliRunner().invoke(main, ["schedule", "export", "jobs/a.yaml", "--out", "k8s",
                                       "--cluster", "raycluster.yaml"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == [
        "a-nightly-cronjob.yaml", "a-nightly-raycronjob.yaml", "a-rayjob.yaml"]
    bad = CliRunner().invoke(main, ["schedule", "export", "jobs/a.yaml", "--cluster",
                                    "jobs/a.yaml"])
    assert bad.exit_code == 2 and "RayCluster" in bad.output
