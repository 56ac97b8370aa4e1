"""One Ray for the integration tests of a test process, shared by the modules that can share it.

Starting a Ray, its helper processes and Ray Data's helper actors costs about 15 CPU seconds
each time, so one Ray node (``ray start --head`` in its own process group, free ports, its own
token, no dashboard) serves every module that asks for ``local_ray``, each module a driver of
its own from its first test to its last:
- Ray's worker processes inherit the environment of the node they run on, not the driver's, so
  each module connects with the variables its environment adds or changes (the boto3 chain's
  credentials, a stand-in's address, the models directory) in its runtime env; a module whose
  environment lacks a variable the node started with gets a new node;
- between modules no driver is connected, so a module that starts a cluster of its own
  (``ray.cluster_utils``, ``ray start`` processes, a local Ray with a dashboard) finds this
  process as a module without ``local_ray`` would.
The session's end stops the node (and ``tests/conftest.py`` ends the process).
"""

from __future__ import annotations

import os
import secrets

import pytest

#: Set by pytest per test; not something a worker reads.
_VOLATILE = ("PYTEST_CURRENT_TEST",)
#: The shared node, the environment it started with, its token.
_SHARED: dict = {}


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _VOLATILE}


#: The environment before any module changed it: what the shared node starts with.
_BASE = _environment()


def _node(env: dict[str, str]):
    """The shared node, started (again) where it is not running or ``env`` lacks a variable
    its processes have. It starts with the environment the session started with, so a module's
    own variables (credentials, a stand-in's address) reach only that module's workers."""
    from factory.run.pipeline import local_cpus
    from tests.support.ray_nodes import cleanup, local_ray_env, start_head, wait_started

    node = _SHARED.get("node")
    if node is not None and node.proc.poll() is None and _SHARED["env"].keys() <= env.keys():
        return node
    if node is not None:
        cleanup([node])
    # its own throwaway token (as a local Ray has); stopped without draining
    base = {k: v for k, v in _BASE.items() if k in env}
    node = start_head({**base, **_auth(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                       **local_ray_env()},
                      num_cpus=local_cpus(4), dashboard=False)
    wait_started(node)
    _SHARED.update(node=node, env=base)
    return node


def _auth() -> dict[str, str]:
    """The shared node's token authentication, for its processes and its drivers alike."""
    if "token" not in _SHARED:
        _SHARED["token"] = secrets.token_hex(32)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _SHARED["token"]}


@pytest.fixture(scope="session")
def _shared_ray_node():
    yield
    from tests.support.ray_nodes import cleanup

    if _SHARED.get("node") is not None:
        cleanup([_SHARED.pop("node")])


@pytest.fixture(scope="module")
def local_ray(_shared_ray_node):
    """The shared node, this module a driver of it from its first test to its last."""
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    from factory.run.pipeline import init_ray

    if ray.is_initialized():
        ray.shutdown()
    env = _environment()
    node = _node(env)
    # Ray's own settings are the node's, not something its workers take from a driver
    changed = {k: v for k, v in env.items()
               if _SHARED["env"].get(k) != v and not k.startswith("RAY_")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _auth().items():  # the driver's side of the node's token
            mp.setenv(key, value)
        # Ray reads its auth mode and token once per process: read them again, here and after
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        try:
            init_ray(node.extra["gcs"], dashboard=False, env_vars=changed)
            yield ray
        finally:
            ray.shutdown()
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
