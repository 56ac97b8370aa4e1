"""A real S3-compatible HTTP server for tests: moto's standalone server in a subprocess.

It listens on a free loopback port, is waited on until it answers HTTP, and is stopped
cleanly (SIGTERM, then SIGKILL if it lingers)::

    with start_s3_server() as s3:
        client = s3.client()
        client.create_bucket(Bucket="my-bucket")

For humans, ``python -m tests.support.s3_server --port 9000`` runs one in the foreground
and prints the environment variables to export, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


# Runs moto's server, and exits it if the process that started it goes away (even by
# SIGKILL), so a killed test run leaves no server behind.
_BOOTSTRAP = """
import os, sys, threading, time
parent = os.getppid()
def watch_parent():
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watch_parent, daemon=True).start()
from moto.server import main
main(sys.argv[1:])
"""


def free_port(host: str = HOST) -> int:
    """A port the OS says is free now (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def credentials_env(endpoint_url: str) -> dict[str, str]:
    """The environment variables that point the factory (and the AWS SDKs) at ``endpoint_url``."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "FACTORY_S3_ENDPOINT_URL": endpoint_url,
    }


def make_client(endpoint_url: str, **config: Any):
    """A boto3 S3 client for a local endpoint: fake credentials, us-east-1, path addressing.

    ``config`` are keyword arguments for :class:`botocore.config.Config`; an ``s3`` entry is
    merged over ``{"addressing_style": "path"}``.
    """
    import boto3
    from botocore.config import Config

    s3_options = {"addressing_style": "path"}
    s3_options.update(config.pop("s3", None) or {})
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(s3=s3_options, **config),
    )


def wait_until_answers(host: str, port: int, timeout: float = 20.0,
                       process: subprocess.Popen | None = None) -> None:
    """Poll ``GET /`` until the server answers with any HTTP status, or raise."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"S3 server exited early with code {process.returncode}")
        conn = http.client.HTTPConnection(host, port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return
        except OSError as exc:  # refused while starting up
            last_error = exc
            time.sleep(0.05)
        finally:
            conn.close()
    raise TimeoutError(f"S3 server on {host}:{port} did not answer in {timeout}s: {last_error!r}")


@dataclass
class S3Server:
    """A running moto server process; ``endpoint_url`` is ``http://127.0.0.1:PORT``."""

    endpoint_url: str
    process: subprocess.Popen
    host: str = HOST
    port: int = 0
    _stopped: bool = field(default=False, repr=False)

    def client(self, **config: Any):
        """A boto3 S3 client for this server (see :func:`make_client`)."""
        return make_client(self.endpoint_url, **config)

    def env(self) -> dict[str, str]:
        return credentials_env(self.endpoint_url)

    def reset(self) -> None:
        """Drop all buckets and objects (moto's ``/moto-api/reset``)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset")
            conn.getresponse().read()
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()  # moto's main() exits 0 on SIGTERM
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def __enter__(self) -> "S3Server":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:  # a safety net; call stop() explicitly
        try:
            if not self._stopped and self.process.poll() is None:
                self.process.kill()
        except Exception:
            pass


def start_s3_server(port: int | None = None, *, quiet: bool = True,
                    timeout: float = 20.0) -> S3Server:
    """Start moto's server in a subprocess on 127.0.0.1 and wait until it answers.

    With ``port=None`` a free port is chosen (retried a few times in case another process
    grabs the port between choosing and binding it).
    """
    attempts = 1 if port is not None else 3
    last_error: Exception | None = None
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        env = dict(os.environ)
        env.pop("MOTO_PORT", None)  # moto uses it to build URLs; let it follow --port
        command = [sys.executable, "-c", _BOOTSTRAP, "-H", HOST, "-p", str(chosen)]
        output = subprocess.DEVNULL if quiet else None
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=output)
        try:
            wait_until_answers(HOST, chosen, timeout=timeout, process=process)
        except Exception as exc:
            last_error = exc
            if process.poll() is None:
                process.kill()
            process.wait()
            continue
        return S3Server(endpoint_url=f"http://{HOST}:{chosen}", process=process,
                        host=HOST, port=chosen)
    raise RuntimeError(f"could not start the S3 server: {last_error!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.s3_server",
        description="Run a local S3-compatible server (moto) on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (default: a free one)")
    parser.add_argument("--verbose", action="store_true", help="show moto's request log")
    args = parser.parse_args(argv)

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)  # also when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, interrupt)

    server = start_s3_server(args.port, quiet=not args.verbose)
    print(f"S3-compatible server (moto) listening at {server.endpoint_url}")
    print("Export these to point the factory at it:")
    for name, value in server.env().items():
        print(f"  export {name}={value}")
    print("Press Ctrl-C to stop.", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"server exited with code {server.process.returncode}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    finally:
        # Ctrl-C in a terminal reaches the child too (same process group); stop() copes.
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
