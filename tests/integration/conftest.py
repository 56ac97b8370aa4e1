"""A local Ray for the integration tests, shared by the modules that can share one.

Starting a local Ray and warming its workers costs seconds each time, so one Ray serves every
module that asks for ``local_ray``, started again only when it must be:
- a module that starts its own cluster (``ray.cluster_utils``, ``ray start`` processes, a Ray
  with a dashboard) shuts the shared one down first; the next ``local_ray`` starts a new one;
- Ray's worker processes inherit the environment of the driver when Ray starts (the boto3
  chain's credentials, Ray's own settings), so a module whose environment differs from the one
  the running Ray started with gets a fresh Ray.
The session's end shuts the last one down (``tests/conftest.py``).
"""

from __future__ import annotations

import os

import pytest

#: What the running shared Ray's workers inherited: the driver's environment when it started.
_STARTED_WITH: dict[str, dict[str, str]] = {}
#: Set by pytest per test; not something a worker reads.
_VOLATILE = ("PYTEST_CURRENT_TEST",)


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _VOLATILE}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from factory.run.pipeline import init_ray

    if ray.is_initialized() and _STARTED_WITH.get("env") != _environment():
        ray.shutdown()
    if not ray.is_initialized():
        init_ray(None, logical_cpus=4, dashboard=False)
        _STARTED_WITH["env"] = _environment()
    yield ray
