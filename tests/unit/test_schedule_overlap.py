"""A schedule never overlaps a run of its own job, unless its ``overlap:`` allows it.

The scheduler (``factory.deploy.schedule``) against a fake clock, a fake submit and a fake
``running`` (what the Ray Jobs API would list); the run lease a RayCronJob firing takes
(``factory.deploy.overlap``); the Kubernetes exports; ``factory submit`` and ``factory refresh``
with ``--overlap``; ``ray_jobs.running`` against a fake ``JobSubmissionClient``.

``allow`` is checked here at the level of the scheduler (both slots submitted, under distinct
run ids derived from their slots); that two real runs of one job at once commit the same
content-addressed assets is tests/integration/test_cli_run.py's.

Hermetic: local-directory stores under tmp_path; no Ray cluster, no sleep.
"""

from __future__ import annotations

import json
import logging
import shlex
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from factory.core import metrics
from factory.deploy import kubernetes, ray_jobs
from factory.deploy.overlap import RunLease, await_turn
from factory.deploy.schedule import AlreadySubmitted, Scheduler, history
from factory.spec.job import SpecError, parse_job
from factory.store.storage import Store
from tests.support.schedules import Clock, Sched

REPO = Path(__file__).resolve().parents[2]
RAYCRONJOB_SCHEMA = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0" / "raycronjob.json"
CLUSTER = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "asset-factory"},
           "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
               {"name": "ray-head", "image": "asset-factory:0.1.0"}]}}}}}
T11 = datetime(2025, 3, 1, 11, 0, tzinfo=timezone.utc)


class Cluster:
    """A fake cluster: ``submit`` starts a run of the job, ``end`` finishes it, ``running``
    lists the job's runs not yet ended (what ``ray_jobs.running`` answers)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.live: list[str] = []
        self.asked: list[str] = []

    def submit(self, schedule: str, run_id: str, season: str | None, slot: datetime) -> None:
        if run_id in self.submitted:
            raise AlreadySubmitted(run_id)
        self.submitted.append(run_id)
        self.live.append(run_id)

    def running(self, job_name: str) -> list[str]:
        self.asked.append(job_name)
        return list(self.live)

    def end(self, run_id: str) -> None:
        self.live.remove(run_id)


def _scheduler(store_dir: Path, clock: Clock, cluster: Cluster, *schedules: Sched,
               job: str = "catalog") -> Scheduler:
    return Scheduler(store=Store(str(store_dir)), job_name=job,
                     schedules=schedules or (Sched("hourly", "0 * * * *"),),
                     submit=cluster.submit, running=cluster.running, clock=clock,
                     sleep=lambda s: None)


def _skipped_count(job: str, schedule: str) -> float:
    value = metrics.scheduler_registry().get_sample_value(
        "factory_schedule_skipped_total", {"job_name": job, "schedule": schedule})
    return value or 0.0


def _rid(job: str, schedule: str, hhmm: str) -> str:
    return f"{job}-{schedule}-20250301T{hhmm}Z"


# ---- the scheduler ------------------------------------------------------------------------

def test_skip_records_logs_and_counts_a_slot_whose_previous_run_still_runs(tmp_path,
                                                                           caplog) -> None:
    clock, cluster = Clock(T11), Cluster()
    scheduler = _scheduler(tmp_path, clock, cluster, Sched("hourly", "0 * * * *"), job="skipper")
    clock.now = T11 - timedelta(minutes=5)
    assert scheduler.tick() == []  # seen at 10:55: 11:00 is its first slot
    clock.now = T11
    assert [f.run_id for f in scheduler.tick()] == [_rid("skipper", "hourly", "1100")]
    before = _skipped_count("skipper", "hourly")

    clock.advance(hours=1)  # 12:00, and the 11:00 run is still going
    with caplog.at_level(logging.WARNING, logger="factory.deploy.schedule"):
        assert scheduler.tick() == []
    assert cluster.submitted == [_rid("skipper", "hourly", "1100")]  # 12:00 not submitted
    (skip,) = scheduler.last_skipped
    assert (skip.slot, skip.held, skip.running) == (
        T11 + timedelta(hours=1), False, (_rid("skipper", "hourly", "1100"),))
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "hourly" in lines[0] and _rid("skipper", "hourly", "1100") in \
        lines[0]
    assert _skipped_count("skipper", "hourly") == before + 1
    marker = tmp_path / "schedules/skipper/hourly/20250301T1200Z/skipped.json"
    assert json.loads(marker.read_text())["running"] == [_rid("skipper", "hourly", "1100")]
    assert not (marker.parent / "fired.json").exists()

    # not retried: neither while the run goes on, nor once it has ended
    clock.advance(minutes=1)
    assert scheduler.tick() == [] and scheduler.last_skipped == []
    cluster.end(_rid("skipper", "hourly", "1100"))
    clock.advance(minutes=20)
    assert scheduler.tick() == []
    assert _skipped_count("skipper", "hourly") == before + 1
    clock.now = T11 + timedelta(hours=2)  # 13:00, nothing running: fires
    assert [f.run_id for f in scheduler.tick()] == [_rid("skipper", "hourly", "1300")]
    assert [(h["slot"][11:16], h["outcome"]) for h in scheduler.history("hourly")] == [
        ("13:00", "fired"), ("12:00", "skipped"), ("11:00", "fired")]
    assert scheduler.state("hourly")["last_fired"] == "2025-03-01T13:00:00+00:00"


def test_skip_holds_across_a_restart_sharing_the_store(tmp_path) -> None:
    clock, cluster = Clock(T11 - timedelta(minutes=5)), Cluster()
    first = _scheduler(tmp_path, clock, cluster, job="restarts")
    peer = _scheduler(tmp_path, clock, cluster, job="restarts")  # e.g. the old process, still up
    first.tick()
    peer.tick()
    clock.now = T11
    first.tick()
    peer.tick()
    clock.advance(hours=1)  # 12:00: skipped by the first process
    assert first.tick() == [] and len(first.last_skipped) == 1
    count = _skipped_count("restarts", "hourly")
    # the run ends; neither the peer (which last saw 11:00) nor a restarted process fires 12:00
    cluster.end(_rid("restarts", "hourly", "1100"))
    clock.advance(minutes=5)
    assert peer.tick() == [] and peer.last_skipped == []
    clock.advance(minutes=25)
    restarted = _scheduler(tmp_path, clock, cluster, job="restarts")
    assert restarted.tick() == []
    assert cluster.submitted == [_rid("restarts", "hourly", "1100")]
    assert _skipped_count("restarts", "hourly") == count
    clock.advance(minutes=30)  # 13:00
    assert [f.run_id for f in restarted.tick()] == [_rid("restarts", "hourly", "1300")]


def test_two_schedulers_racing_on_one_skip_record_and_count_it_once(tmp_path) -> None:
    class Late(Store):
        """This process checked for the markers before its peer's skip landed."""

        def exists(self, key: str) -> bool:
            return not key.endswith("skipped.json") and super().exists(key)

    clock, cluster = Clock(T11), Cluster()
    cluster.live.append("racer-by-hand")
    schedules = (Sched("hourly", "0 * * * *"),)
    first = _scheduler(tmp_path, clock, cluster, *schedules, job="racer")
    late = Scheduler(store=Late(str(tmp_path)), job_name="racer", schedules=schedules,
                     submit=cluster.submit, running=cluster.running, clock=clock)
    assert first.tick() == [] and len(first.last_skipped) == 1
    assert late.tick() == [] and late.last_skipped == []  # its create-only record lost
    assert _skipped_count("racer", "hourly") == 1 and cluster.submitted == []


def test_queue_submits_the_held_slot_once_the_run_ends(tmp_path, caplog) -> None:
    clock, cluster = Clock(T11 - timedelta(minutes=5)), Cluster()
    scheduler = _scheduler(tmp_path, clock, cluster, Sched("hourly", "0 * * * *",
                                                           overlap="queue"), job="queuer")
    scheduler.tick()
    clock.now = T11
    scheduler.tick()
    clock.advance(hours=1)  # 12:00: held
    with caplog.at_level(logging.WARNING, logger="factory.deploy.schedule"):
        assert scheduler.tick() == []
        clock.advance(minutes=1)
        assert scheduler.tick() == []  # still held: asked again, logged once
    assert [s.held for s in scheduler.last_skipped] == [True]
    assert len([r for r in caplog.records if "held" in r.getMessage()]) == 1
    assert cluster.submitted == [_rid("queuer", "hourly", "1100")]
    assert scheduler.history("hourly")[0]["slot"][11:16] == "11:00"  # nothing recorded
    assert _skipped_count("queuer", "hourly") == 0
    cluster.end(_rid("queuer", "hourly", "1100"))
    clock.advance(minutes=9)  # 12:10
    assert [f.slot for f in scheduler.tick()] == [T11 + timedelta(hours=1)]
    assert cluster.submitted == [_rid("queuer", "hourly", "1100"), _rid("queuer", "hourly", "1200")]


def test_a_queued_slot_is_coalesced_with_the_slots_that_come_due_while_it_waits(tmp_path) -> None:
    clock, cluster = Clock(T11 - timedelta(minutes=5)), Cluster()
    scheduler = _scheduler(tmp_path, clock, cluster, Sched("hourly", "0 * * * *",
                                                           overlap="queue"))
    scheduler.tick()
    clock.now = T11
    scheduler.tick()
    clock.advance(hours=1)  # 12:00 held
    assert scheduler.tick() == []
    clock.advance(hours=1, minutes=5)  # 13:05: the run ends; 12:00 and 13:00 are one slot
    cluster.end(_rid("catalog", "hourly", "1100"))
    # a restart in between changes nothing: the wait was never stored
    scheduler = _scheduler(tmp_path, clock, cluster, Sched("hourly", "0 * * * *",
                                                           overlap="queue"))
    assert [f.run_id for f in scheduler.tick()] == [_rid("catalog", "hourly", "1300")]
    assert _rid("catalog", "hourly", "1200") not in cluster.submitted


def test_allow_submits_beside_the_running_run_under_its_own_run_id(tmp_path) -> None:
    clock, cluster = Clock(T11 - timedelta(minutes=5)), Cluster()
    scheduler = _scheduler(tmp_path, clock, cluster, Sched("hourly", "0 * * * *",
                                                           overlap="allow"))
    scheduler.tick()
    clock.now = T11
    scheduler.tick()
    clock.advance(hours=1)
    assert [f.run_id for f in scheduler.tick()] == [_rid("catalog", "hourly", "1200")]
    assert cluster.live == [_rid("catalog", "hourly", "1100"), _rid("catalog", "hourly", "1200")]
    assert cluster.asked == []  # allow never asks what is running


def test_any_run_of_the_job_counts_and_same_minute_schedules_fire_in_spec_order(tmp_path) -> None:
    clock, cluster = Clock(T11 - timedelta(minutes=5)), Cluster()
    schedules = (Sched("hourly", "0 * * * *"), Sched("launch", "0 11 * * *", "winter"))
    scheduler = _scheduler(tmp_path, clock, cluster, *schedules)
    scheduler.tick()
    clock.now = T11  # both due: hourly fires first, then launch finds its run PENDING
    assert [f.schedule for f in scheduler.tick()] == ["hourly"]
    assert [(s.schedule, s.running) for s in scheduler.last_skipped] == [
        ("launch", (_rid("catalog", "hourly", "1100"),))]
    # a run submitted by hand (factory submit) counts as well
    cluster.end(_rid("catalog", "hourly", "1100"))
    cluster.live.append("catalog-3b77d0c5e2a1-refresh-20250301T115900Z")
    clock.advance(hours=1)
    assert scheduler.tick() == []
    assert scheduler.last_skipped[0].running == ("catalog-3b77d0c5e2a1-refresh-20250301T115900Z",)


def test_the_slots_own_run_is_not_in_its_way_after_a_crash(tmp_path) -> None:
    """Submitted, then a crash before the marker: on restart its own run is running."""
    clock, cluster = Clock(T11), Cluster()
    cluster.submitted.append(_rid("catalog", "hourly", "1100"))
    cluster.live.append(_rid("catalog", "hourly", "1100"))
    fires = _scheduler(tmp_path, clock, cluster).tick()
    assert [f.run_id for f in fires] == [_rid("catalog", "hourly", "1100")]
    assert not (tmp_path / "schedules/catalog/hourly/20250301T1100Z/skipped.json").exists()


def test_a_failing_running_check_is_retried_and_records_nothing(tmp_path) -> None:
    clock, cluster = Clock(T11), Cluster()
    calls = []

    def running(job: str) -> list[str]:
        calls.append(job)
        if len(calls) == 1:
            raise ConnectionError("job server unreachable")
        return []

    scheduler = Scheduler(store=Store(str(tmp_path)), job_name="catalog",
                          schedules=(Sched("hourly", "0 * * * *"),), submit=cluster.submit,
                          running=running, clock=clock)
    assert scheduler.tick() == [] and scheduler.last_errors == ["hourly: job server unreachable"]
    assert cluster.submitted == [] and scheduler.history("hourly") == []
    assert [f.slot for f in scheduler.tick()] == [T11]


def test_scheduler_rejects_an_unknown_overlap(tmp_path) -> None:
    with pytest.raises(ValueError, match="overlap 'never' is not one of skip, queue, allow"):
        _scheduler(tmp_path, Clock(T11), Cluster(), Sched("hourly", "@hourly", overlap="never"))


def test_history_command_shows_skipped_slots(tmp_path, monkeypatch) -> None:
    from factory.cli.main import main

    clock, cluster = Clock(T11 - timedelta(minutes=5)), Cluster()
    scheduler = _scheduler(tmp_path / "out", clock, cluster, job="a")
    scheduler.tick()
    clock.now = T11
    scheduler.tick()
    clock.advance(hours=1)
    scheduler.tick()
    spec = _spec(tmp_path, output=str(tmp_path / "out"))
    result = CliRunner().invoke(main, ["schedule", "history", str(spec)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "hourly (0 * * * *, overlap: skip):"
    assert lines[1].split()[:4] == ["2025-03-01", "12:00", "UTC", "skipped"]
    assert f"(running: {_rid('a', 'hourly', '1100')})" in lines[1]
    assert lines[2].split()[3:5] == ["fired", _rid("a", "hourly", "1100")]


def test_schedule_run_once_asks_the_jobs_api_and_reports_the_skip(tmp_path, monkeypatch) -> None:
    from factory.cli.main import main

    spec = _spec(tmp_path, output=str(tmp_path / "out"))
    spec.write_text(spec.read_text().replace("0 * * * *", "'* * * * *'"))  # due this minute
    asked = []
    monkeypatch.setattr(ray_jobs, "running",
                        lambda job, address: asked.append((job, address)) or ["a-by-hand"])
    monkeypatch.setattr(ray_jobs, "submit", lambda *a, **k: pytest.fail("submitted"))
    result = CliRunner().invoke(main, ["schedule", "run", str(spec), "--once", "--address",
                                       "http://head:8265"])
    assert result.exit_code == 0, result.output
    assert asked == [("a", "http://head:8265")]
    assert "skipped: hourly (" in result.output and "still running: a-by-hand" in result.output


# ---- the run lease (RayCronJob firings) ---------------------------------------------------

def test_the_lease_has_one_holder_until_released_or_expired(tmp_path) -> None:
    clock = Clock(T11)
    store = Store(str(tmp_path))

    def lease(holder: str, hours: float = 6) -> RunLease:
        return RunLease(store, "catalog", expires_at=clock.now + timedelta(hours=hours),
                        holder=holder, clock=clock)

    first, second = lease("pod-a"), lease("pod-b", hours=1)
    assert first.acquire() is None  # taken
    assert first.acquire() is None  # already held by it
    holder = second.acquire()
    assert holder is not None and holder.holder == "pod-a"
    assert "pod-a" in holder.describe() and "held.json" in holder.describe()
    first.release()
    assert second.acquire() is None and second.current().holder == "pod-b"
    # a holder that never released (a killed driver) counts until its lease expires
    third = lease("pod-c")
    assert third.acquire().holder == "pod-b"
    clock.advance(hours=1)
    assert third.acquire() is None
    assert sorted(p.name for p in (tmp_path / "schedules/catalog/_lease").iterdir()) == [
        "0000000001", "0000000002", "0000000003"]


def test_of_two_firings_that_find_the_lease_free_one_takes_it(tmp_path) -> None:
    a = RunLease(Store(str(tmp_path)), "catalog", expires_at=T11 + timedelta(hours=6),
                 holder="a", clock=lambda: T11)
    taken = []

    class Racy(Store):
        """b's view: its first listing comes before a's create lands."""

        def children(self, prefix: str) -> list[str]:
            if not taken:
                taken.append(a.acquire())
                return []
            return super().children(prefix)

    b = RunLease(Racy(str(tmp_path)), "catalog", expires_at=T11 + timedelta(hours=6),
                 holder="b", clock=lambda: T11)
    holder = b.acquire()  # its create of the same folder loses; it looks again
    assert taken == [None] and holder is not None and holder.holder == "a"
    assert [p.name for p in (tmp_path / "schedules/catalog/_lease").iterdir()] == ["0000000001"]


def test_await_turn_skips_queues_or_allows() -> None:
    answers = [["r1"], ["r1"], []]
    slept, told = [], []
    assert await_turn(lambda: ["r1"], overlap="skip") == ["r1"]
    assert await_turn(lambda: pytest.fail("allow asks nothing"), overlap="allow") == []
    assert await_turn(lambda: answers.pop(0), overlap="queue", sleep=slept.append, poll_s=7,
                      on_wait=told.append) == []
    assert slept == [7, 7] and told == [["r1"]] and answers == []


# ---- factory refresh --overlap (what a RayCronJob firing runs) ----------------------------

def _spec(tmp_path: Path, *, output: str, overlap: str = "skip") -> Path:
    (tmp_path / "a.csv").write_text("sku,title\ns1,One\n")
    spec = tmp_path / "a.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "a", "manifest": {"uri": str(tmp_path / "a.csv")}, "output": {"uri": output},
        "schedules": [{"name": "hourly", "cron": "0 * * * *", "overlap": overlap}],
        "stages": [{"kind": "generate", "model": "synthetic"}]}))
    return spec


def test_refresh_with_overlap_skip_runs_nothing_while_another_run_holds_the_lease(
        tmp_path, monkeypatch) -> None:
    from factory.cli import job as job_cli
    from factory.cli.main import main

    out = tmp_path / "out"
    spec = _spec(tmp_path, output=str(out))
    other = RunLease.for_seconds(Store(str(out)), "a", 3600, holder="other-pod")
    assert other.acquire() is None
    monkeypatch.setattr(job_cli, "_execute", lambda *a, **k: pytest.fail("ran while held"))
    result = CliRunner().invoke(main, ["refresh", str(spec), "--overlap", "skip"])
    assert result.exit_code == 0, result.output
    assert "skipped: a run of job a holds its lease: other-pod" in result.output

    other.release()  # free: the refresh runs, holding the lease, and gives it back
    held_during = []
    monkeypatch.setattr(job_cli, "_execute", lambda *a, **k: held_during.append(
        RunLease.for_seconds(Store(str(out)), "a", 60).current()) or 0)
    result = CliRunner().invoke(main, ["refresh", str(spec), "--overlap", "skip",
                                       "--lease-ttl", "600"])
    assert result.exit_code == 0, result.output
    assert held_during[0] is not None and held_during[0].holder != "other-pod"
    assert RunLease.for_seconds(Store(str(out)), "a", 60).current() is None


# ---- factory submit --overlap (what the CronJob fallback's pod runs) ----------------------

def test_submit_with_overlap_skip_submits_nothing_while_the_job_runs(tmp_path,
                                                                      monkeypatch) -> None:
    from factory.cli.main import main

    spec = _spec(tmp_path, output=str(tmp_path / "out"))
    monkeypatch.setattr(ray_jobs, "running", lambda job, address: ["a-1"] if job == "a" else [])
    submitted = []
    monkeypatch.setattr(ray_jobs, "submit", lambda path, **kw: submitted.append(path) or "a-2")
    result = CliRunner().invoke(main, ["submit", str(spec), "--refresh", "--overlap", "skip",
                                       "--address", "http://head:8265"])
    assert result.exit_code == 0, result.output
    assert "skipped: job a still has a-1 running on http://head:8265" in result.output
    assert submitted == []
    result = CliRunner().invoke(main, ["submit", str(spec), "--refresh", "--address",
                                       "http://head:8265"])  # the default: allow
    assert result.exit_code == 0 and submitted == [str(spec)]


# ---- the Kubernetes exports ---------------------------------------------------------------

@pytest.mark.parametrize(("overlap", "policy"), [("skip", "Forbid"), ("queue", "Forbid"),
                                                 ("allow", "Allow")])
def test_exports_carry_the_overlap(tmp_path, overlap: str, policy: str) -> None:
    from factory.cli.cluster import submit
    from factory.cli.job import refresh

    schedule = Sched("nightly", "0 2 * * *", "summer", overlap)
    paths = kubernetes.export("jobs/catalog.yaml", "catalog", (schedule,), tmp_path,
                              cluster=CLUSTER, deadline_s=7200)
    docs = {p.name: yaml.safe_load(p.read_text()) for p in paths}

    cron = docs["catalog-nightly-cronjob.yaml"]
    kubernetes_validate.validate(cron, kubernetes_validate.latest_version(), strict=True)
    assert cron["spec"]["concurrencyPolicy"] == policy
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == (7200 if overlap == "queue" else 900)
    command = job["template"]["spec"]["containers"][0]["command"]
    assert (command[-2:] == ["--overlap", overlap]) == (overlap != "allow")
    assert ("--overlap" in command) == (overlap != "allow")
    # the pod's command is one the CLI takes, with the overlap the spec says
    ctx = submit.make_context("submit", command[2:])
    assert ctx.params["overlap"] == overlap and ctx.params["refresh"] is True

    raycron = docs["catalog-nightly-raycronjob.yaml"]
    jsonschema.Draft7Validator(json.loads(RAYCRONJOB_SCHEMA.read_text())).validate(raycron)
    assert "concurrencyPolicy" not in json.dumps(raycron)  # KubeRay has no such field
    entry = shlex.split(raycron["spec"]["jobTemplate"]["entrypoint"])
    assert entry[:5] == ["python", "-m", "factory.cli.main", "refresh", "/app/jobs/catalog.yaml"]
    ctx = refresh.make_context("refresh", entry[4:])
    assert ctx.params["overlap"] == overlap and ctx.params["season"] == "summer"
    if overlap != "allow":  # the driver's lease lapses with the RayJob's deadline
        assert ctx.params["lease_ttl_s"] == raycron["spec"]["jobTemplate"][
            "activeDeadlineSeconds"] == 7200
    text = (tmp_path / "catalog-nightly-raycronjob.yaml").read_text()
    assert f"# overlap: {overlap}." in text


def test_the_one_off_rayjob_takes_no_lease(tmp_path) -> None:
    (path,) = kubernetes.export("jobs/catalog.yaml", "catalog", (), tmp_path, cluster=CLUSTER)
    assert "--overlap" not in yaml.safe_load(path.read_text())["spec"]["entrypoint"]


# ---- the spec -----------------------------------------------------------------------------

def _job(**schedule: str):
    return parse_job({"name": "a", "manifest": {"uri": "a.csv"}, "output": {"uri": "out"},
                      "schedules": [{"name": "n", "cron": "@daily", **schedule}],
                      "stages": [{"kind": "generate", "model": "synthetic"}]})


def test_spec_overlap_defaults_to_skip_and_rejects_unknown_values() -> None:
    assert _job().schedules[0].overlap == "skip"
    assert _job(overlap="queue").schedules[0].overlap == "queue"
    with pytest.raises(SpecError) as info:
        _job(overlap="never")
    assert "schedules[0].overlap: Input should be 'skip', 'queue' or 'allow' (got 'never')" \
        in str(info.value)


# ---- ray_jobs.running against a fake JobSubmissionClient ----------------------------------

class FakeClient:
    """The part of Ray's ``JobSubmissionClient`` that ``submit`` and ``list_jobs`` use."""

    def __init__(self) -> None:
        self.jobs: list[types.SimpleNamespace] = []

    def get_job_info(self, submission_id: str):
        raise RuntimeError(f"Job {submission_id} does not exist")

    def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata) -> str:
        self.jobs.append(_details(submission_id, "PENDING", metadata, len(self.jobs) + 10))
        return submission_id

    def list_jobs(self):
        return list(reversed(self.jobs))


def _details(submission_id, status, metadata, start):
    return types.SimpleNamespace(submission_id=submission_id, metadata=metadata,
                                 status=types.SimpleNamespace(value=status), start_time=start)


def test_running_lists_the_jobs_pending_and_running_submissions(tmp_path, monkeypatch) -> None:
    client = FakeClient()
    monkeypatch.setattr(ray_jobs, "_client", lambda address: client)
    spec = _spec(tmp_path, output=str(tmp_path / "out"))
    submitted = ray_jobs.submit(str(spec), address="http://head:8265", run_id="a-slot-1",
                                refresh=True, working_dir=str(tmp_path))
    assert client.jobs[0].metadata[ray_jobs.JOB_NAME_KEY] == "a"  # submit tags the job's name
    client.jobs += [_details("a-old", "RUNNING", {"job_name": "a"}, 1),
                    _details("a-done", "SUCCEEDED", {"job_name": "a"}, 2),
                    _details("a-stopped", "STOPPED", {"job_name": "a"}, 3),
                    _details("b-1", "RUNNING", {"job_name": "b"}, 4),
                    _details("by-hand", "RUNNING", {}, 5),
                    _details(None, "RUNNING", None, 6)]  # a ray.init() driver, not a submission
    assert ray_jobs.running("a", address="http://head:8265") == ["a-old", submitted]
    assert ray_jobs.running("b", address="http://head:8265") == ["b-1"]
    client.jobs[0].status.value = "FAILED"
    assert ray_jobs.running("a", address="http://head:8265") == ["a-old"]
