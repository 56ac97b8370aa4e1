"""Shared fixtures: tiny models built once per session, and the models directory setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # without the test extra, the property tests skip themselves
    settings = None
if settings is not None:
    # "default": a small, derandomised budget (the same examples every run, so CI does not
    # flake); "long" (``--hypothesis-profile=long``): many random examples, for a search.
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("default", max_examples=25, derandomize=True, deadline=None,
                              suppress_health_check=_SLOW_OK, print_blob=True)
    settings.register_profile("long", max_examples=2_000, deadline=None,
                              suppress_health_check=_SLOW_OK, print_blob=True)
    settings.load_profile("default")


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each test process gets one core's share: torch's threads in one process spinning on the
    # core the other process is using slow both (see ``one_torch_thread``).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """All tiny models, built once; ``tiny:NAME`` sources resolve here for the session."""
    from factory.core import settings
    from stages.tiny.models import make_all

    directory = _build_once(tmp_path_factory, make_all)
    previous = os.environ.get(settings.MODELS_DIR)
    os.environ[settings.MODELS_DIR] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop(settings.MODELS_DIR, None)
    else:
        os.environ[settings.MODELS_DIR] = previous


def _build_once(tmp_path_factory, make_all) -> Path:
    """The models directory: one per test run, shared by its test processes (xdist workers
    share the parent of their base temp dirs); the first to take the lock builds it, the
    others find it complete (``make_all`` builds only what is missing)."""
    import fcntl

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        directory = tmp_path_factory.mktemp("models")
        make_all(directory)
        return directory
    root = tmp_path_factory.getbasetemp().parent
    directory = root / "models"
    with open(root / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        make_all(directory)
    return directory


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP threads on a busy 2-core
    machine made the modules that use this 5-10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    """Integration modules first. ``make test`` hands whole modules to its processes in this
    order (``--dist loadfile --no-loadscope-reorder``): the few long modules start early and
    the many short unit modules fill in at the end, so both processes finish together."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/integration/"))


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest has reported, without the interpreter's teardown.

    CI once saw ``make test`` die with a segmentation fault *after* all 637 tests had passed
    and the summary was printed: a native library's threads (Ray's core worker, onnxruntime,
    numba, Arrow's S3 client, torch's OpenMP pool; several are loaded in this one process)
    racing their destructors at interpreter exit. Nothing a test checks happens there, so the
    session shuts down what it started (Ray), flushes, and exits with pytest's own status."""
    if not _EXIT_STATUS:
        return
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
