"""Factory runs as Ray jobs on a real local Ray head, through ``factory.deploy.ray_jobs`` (Ray's Jobs API).

The head is a ``ray start --head --block`` on loopback with free ports, its own temp dir and
token authentication on with a throwaway token; teardown ends only the processes of that head
(``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from factory.deploy import ray_jobs as jobs
from factory.store.run_tables import is_committed, read_lineage
from factory.store.storage import Store
from tests.support.ray_nodes import free_ports

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class Head:
    address: str
    token: str
    temp_dir: Path


def _reset_token_cache() -> None:
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def head(models_dir):
    """A Ray head with the dashboard (job server) on a free loopback port, token auth on."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # AF_UNIX paths stay short
    gcs, dash, client, node, objects, agent, agent_grpc, metrics, renv = free_ports(9)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # models_dir has set FACTORY_MODELS_DIR; the head and so the job drivers inherit it.
    # The entrypoint runs `python`: the venv's, as on a cluster whose image has the factory
    # installed, even where pytest runs as .venv/bin/python without the venv activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # no drain wait on SIGTERM: teardown is immediate
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=token, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    log = open(temp_dir / "head.log", "wb")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
         f"--ray-client-server-port={client}", f"--node-manager-port={node}",
         f"--object-manager-port={objects}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={renv}", "--min-worker-port=0", "--max-worker-port=0",
         "--num-cpus=6", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", token)
        mp.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-" + secrets.token_hex(8))
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, (temp_dir / "head.log").read_text(errors="replace")
                try:
                    jobs.list_jobs(address=address)
                    break
                except jobs.JobsError:
                    assert time.monotonic() < deadline, "the Jobs API never answered"
                    time.sleep(1)
            yield Head(address, token, temp_dir)
        finally:
            _stop_head(proc, temp_dir)
            log.close()
            _reset_token_cache()  # the process-wide cache must not keep the throwaway token,
            # whether the head came up or not: a later local Ray would present it


def _stop_head(proc: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM the blocking ``ray start`` (it ends its node's processes), then kill, by pid,
    anything still running with this head's temp dir on its command line."""
    import psutil

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(temp_dir) in " ".join(p.info["cmdline"] or ()):
                p.kill()
        except psutil.Error:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def _workdir(root: Path, name: str, rows: int, size: int, out: Path) -> Path:
    """A working directory holding a spec and its manifest (relative: it is uploaded)."""
    root.mkdir(parents=True)
    lines = ["sku,title"] + [f"SKU-{i:05d},mug {i}" for i in range(1, rows + 1)]
    (root / "catalog.csv").write_text("\n".join(lines) + "\n")
    (root / f"{name}.yaml").write_text(f"""
name: {name}
manifest: {{uri: catalog.csv}}
output: {{uri: "{out}"}}
seed: 7
stages:
  - kind: generate
    model: synthetic
    params: {{width: {size}, height: {size}}}
  - kind: identity
    model: passthrough
""")
    return root / f"{name}.yaml"


@pytest.fixture(scope="module")
def small_run(head, tmp_path_factory):
    """A 20-SKU job submitted and followed to its end."""
    tmp = tmp_path_factory.mktemp("jobs")
    out = tmp / "out"
    spec = _workdir(tmp / "wd", "small", 20, 64, out)
    run_id = jobs.submit(str(spec), address=head.address, run_id="small-1",
                         working_dir=str(spec.parent))
    chunks: list[str] = []
    jobs.logs(run_id, address=head.address, follow=True, out=chunks.append)
    return run_id, spec, out, "".join(chunks)


def test_submit_runs_and_commits(head, small_run):
    run_id, _, out, text = small_run
    assert run_id == "small-1"
    info = jobs.status(run_id, address=head.address)
    assert info["status"] == "SUCCEEDED", text[-3000:]
    assert info["exit_code"] == 0
    assert "20 rows → 20 assets" in text
    lineage, summary = read_lineage(Store(str(out)), run_id)
    assert lineage.num_rows == 20 and set(lineage["status"].to_pylist()) == {"ok"}
    assert summary["assets"] == 20
    assert info["metadata"] == {"job_name": "small", "catalog": "catalog.csv", "season": "",
                                "run_id": "small-1"}
    assert info["entrypoint"] == "python -m factory.cli.main run small.yaml --run-id small-1"
    assert info["start_time"] and info["end_time"]
    listed = {j["run_id"]: j for j in jobs.list_jobs(address=head.address)}
    assert listed["small-1"]["job_name"] == "small"
    assert listed["small-1"]["status"] == "SUCCEEDED"
    past: list[str] = []
    jobs.logs(run_id, address=head.address, follow=False, out=past.append)
    assert "20 rows → 20 assets" in "".join(past)


def test_same_run_id_twice_is_refused(head, small_run):
    _, spec, _, _ = small_run
    with pytest.raises(jobs.AlreadySubmittedError, match="run small-1 was already submitted"):
        jobs.submit(str(spec), address=head.address, run_id="small-1",
                    working_dir=str(spec.parent))


def test_refresh_in_a_season_is_pinned(head, small_run):
    _, spec, out, _ = small_run
    seasonal = spec.with_name("seasonal.yaml")  # the same job, with a season that always holds
    seasonal.write_text(spec.read_text()
                        + 'seasons:\n  - {name: always, start: "01-01", end: "12-31"}\n')
    run_id = jobs.submit(str(seasonal), address=head.address, refresh=True,
                         working_dir=str(spec.parent))
    assert re.fullmatch(r"small-always-[0-9a-f]{12}-refresh-\d{8}T\d{6}Z", run_id)
    assert jobs.wait(run_id, address=head.address, timeout_s=120) == "SUCCEEDED"
    info = jobs.status(run_id, address=head.address)
    assert info["entrypoint"] == (f"python -m factory.cli.main refresh seasonal.yaml --run-id {run_id}"
                                  " --season always")
    assert info["metadata"]["season"] == "always"
    text: list[str] = []
    jobs.logs(run_id, address=head.address, follow=False, out=text.append)
    assert "refresh since run small-1" in "".join(text)
    _, summary = read_lineage(Store(str(out)), run_id)
    assert summary["season"] == "always" and summary["assets"] == 20


def test_stop_cancels_a_running_job(head, tmp_path):
    out = tmp_path / "out"
    spec = _workdir(tmp_path / "wd", "long", 1000, 1024, out)  # minutes of work on 2 cores
    run_id = jobs.submit(str(spec), address=head.address, run_id="long-1",
                         working_dir=str(spec.parent))
    deadline = time.monotonic() + 90
    while not (out / "assets").is_dir() or not any((out / "assets").iterdir()):  # mid-stream
        state = jobs.status(run_id, address=head.address)["status"]
        if state not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            driver: list[str] = []
            jobs.logs(run_id, address=head.address, follow=False, out=driver.append)
            pytest.fail(f"{state}, no asset yet:\n{''.join(driver)[-3000:]}")
        time.sleep(0.5)
    assert jobs.status(run_id, address=head.address)["status"] == "RUNNING"
    assert jobs.running("long", address=head.address) == ["long-1"]  # what overlap: asks
    assert jobs.stop(run_id, address=head.address) is True
    assert jobs.wait(run_id, address=head.address, timeout_s=60) == "STOPPED"
    assert jobs.running("long", address=head.address) == []
    assert not is_committed(Store(str(out)), run_id)
    assert jobs.stop(run_id, address=head.address) is False


def test_token_and_credentials_never_leak(head, small_run, monkeypatch):
    run_id, _, _, text = small_run
    info = json.dumps(jobs.status(run_id, address=head.address))
    listed = json.dumps(jobs.list_jobs(address=head.address))
    for secret in (head.token, os.environ["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in info and secret not in listed and secret not in text
    assert "AWS_" not in info and "RAY_AUTH" not in info
    env_vars = jobs.status(run_id, address=head.address)["runtime_env"]["env_vars"]
    assert set(env_vars) == {"FACTORY_RAY_ADDRESS", "FACTORY_LOG_LEVEL", "PYTHONUNBUFFERED"}
    # a wrong token is refused with a message that names the address and no token
    wrong = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_TOKEN", wrong)
    with pytest.raises(jobs.JobsError, match="token authentication") as refused:
        jobs.status(run_id, address=head.address)
    assert head.address in str(refused.value)
    assert wrong not in str(refused.value) and head.token not in str(refused.value)


def test_clear_errors_for_unknown_run_and_unreachable_address(head):
    with pytest.raises(jobs.JobsError, match=f"no run nope-1 .* {head.address}"):
        jobs.status("nope-1", address=head.address)
    with pytest.raises(jobs.JobsError, match="no run nope-1"):
        jobs.stop("nope-1", address=head.address)
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(jobs.JobsError, match=f"cannot reach the Ray job server at {closed}"):
        jobs.list_jobs(address=closed)


def test_entrypoint_for_refresh_and_season():
    assert jobs.entrypoint("jobs/a b.yaml", "r-1", season="spring 26", refresh=True) == (
        "python -m factory.cli.main refresh 'jobs/a b.yaml' --run-id r-1 --season 'spring 26'")
    assert jobs.entrypoint("j.yaml", "r-1") == "python -m factory.cli.main run j.yaml --run-id r-1"
