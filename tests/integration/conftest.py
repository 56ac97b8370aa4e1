"""A local Ray for the integration tests, one per test module (some modules start their own)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from factory.run.pipeline import init_ray

    init_ray(None, logical_cpus=4, dashboard=False)
    yield ray
    ray.shutdown()
