"""Shared fixtures: tiny models built once per session, and the models directory setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """All tiny models, built once; ``tiny:NAME`` sources resolve here for the session."""
    from factory import settings
    from factory.tiny_models import make_all

    directory = tmp_path_factory.mktemp("models")
    make_all(directory)
    previous = os.environ.get(settings.MODELS_DIR)
    os.environ[settings.MODELS_DIR] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop(settings.MODELS_DIR, None)
    else:
        os.environ[settings.MODELS_DIR] = previous


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and spinning OpenMP threads on a busy 2-core
    machine made the modules that use this 5-10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
