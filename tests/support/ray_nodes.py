"""Real Ray nodes on loopback for tests: ``ray start --head`` and ``ray start --address``.

Each node is a blocking ``ray start`` in its own process group with free ports and its own temp
dir, so a test can SIGKILL one node's raylet and stop exactly its own processes (``ray stop``
would stop every Ray on the machine). Token authentication is on with a throwaway token.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def local_ray_env() -> dict[str, str]:
    """The factory's local Ray settings (``LOCAL_RAY_CONFIG``) as a ``ray start`` node's
    environment (Ray reads ``RAY_<setting>``): test nodes start as a user's local Ray does."""
    from factory.run.pipeline import LOCAL_RAY_CONFIG

    return {f"RAY_{name}": str(int(value) if isinstance(value, bool) else value)
            for name, value in LOCAL_RAY_CONFIG.items()}


#: Ports ``free_ports`` has handed out in this process (never handed out twice).
_HANDED_OUT: set[int] = set()
#: Each test process's own block of ports (pytest-xdist names them gw0, gw1, ...).
_BLOCK = 1500


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free now, for processes this test starts later.

    Taken below the OS's ephemeral range (which it hands out for port 0: Ray's own workers,
    any client socket) and from this test process's own block of it, so that neither the OS
    nor a parallel test process can take one between this check and the bind."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = 20000 + (int(worker) if worker.isdigit() else 0) * _BLOCK
    ports: list[int] = []
    for port in range(start, min(start + _BLOCK, low)):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports in {start}-{start + _BLOCK}")


@dataclass
class Node:
    """One ``ray start --block`` process and what identifies its processes."""

    name: str
    proc: subprocess.Popen
    temp_dir: Path
    node_manager_port: int
    log: Path
    extra: dict = field(default_factory=dict)

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet (found by its node manager port)."""
        import psutil

        for p in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or ())
            if "raylet" in (p.info["name"] or "") and \
                    f"--node_manager_port={self.node_manager_port}" in cmdline:
                return p.pid
        return None

    def processes(self) -> list:
        """Every live process that belongs to this node (by temp dir or node manager port)."""
        import psutil

        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or ())
            if str(self.temp_dir) in cmdline or \
                    f"node_manager_port={self.node_manager_port}" in cmdline:
                found.append(p)
        return found

    def stop(self) -> None:
        """SIGTERM the blocking ``ray start``, then kill whatever of this node is left."""
        import psutil

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for p in self.processes():
            try:
                p.kill()
            except psutil.Error:
                pass


def node_env(token: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node's processes (and so of the jobs' drivers and workers)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "FACTORY_MODELS_DIR")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               # the GCS finds a killed raylet in about 3 s instead of 15 (3 failed checks,
               # 1 s apart; a live but busy raylet still has each check's 10 s to answer)
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               **local_ray_env())
    env.update(extra or {})
    return env


def start_head(env: dict[str, str], *, num_cpus: int, num_gpus: int = 0,
               dashboard: bool = True) -> Node:
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))  # AF_UNIX paths stay short
    gcs, dash, client, node, objects, agent, agent_grpc, metrics, renv = free_ports(9)
    log = temp_dir / "node.log"
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--include-dashboard={str(dashboard).lower()}",
         f"--ray-client-server-port={client}", f"--node-manager-port={node}",
         f"--object-manager-port={objects}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={renv}", "--min-worker-port=0", "--max-worker-port=0",
         f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return Node("head", proc, temp_dir, node, log,
                {"gcs": f"127.0.0.1:{gcs}", "jobs": f"http://127.0.0.1:{dash}"})


def start_worker(name: str, gcs_address: str, env: dict[str, str], *, num_cpus: int,
                 num_gpus: int) -> Node:
    temp_dir = Path(tempfile.mkdtemp(prefix=f"r{name[-1]}", dir="/tmp"))
    node, objects, agent, agent_grpc, metrics, renv = free_ports(6)
    log = temp_dir / "node.log"
    proc = subprocess.Popen(
        [RAY, "start", f"--address={gcs_address}", "--block", "--node-ip-address=127.0.0.1",
         f"--node-manager-port={node}", f"--object-manager-port={objects}",
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv}",
         "--min-worker-port=0", "--max-worker-port=0", f"--num-cpus={num_cpus}",
         f"--num-gpus={num_gpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return Node(name, proc, temp_dir, node, log)


def wait_started(node: Node, timeout: float = 120.0) -> None:
    """Wait until the blocking ``ray start`` says its node is up (drivers can connect)."""
    deadline = time.monotonic() + timeout
    while b"Ray runtime started" not in node.log.read_bytes():
        if node.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{node.name} did not start: {node.log.read_text()[-3000:]}")
        time.sleep(0.1)


def wait_for_nodes(gcs_address: str, env: dict[str, str], count: int,
                   timeout: float = 120.0) -> None:
    """Wait until ``count`` nodes are alive (asked in a subprocess: no Ray in this one)."""
    probe = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([sys.executable, "-c", probe, gcs_address], env=env,
                             capture_output=True, text=True, timeout=60)
        alive = int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and \
            out.stdout.strip() else 0
        if alive >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{alive} of {count} Ray nodes alive: {out.stderr[-2000:]}")
        time.sleep(1.0)


def cleanup(nodes: list[Node]) -> None:
    """Stop every node (workers first) and remove their temp dirs."""
    for node in reversed(nodes):
        node.stop()
    for node in nodes:
        shutil.rmtree(node.temp_dir, ignore_errors=True)
