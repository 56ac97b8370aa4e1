"""Every environment variable the factory reads, in one place (the README lists them).

Functions, not module constants, so tests can set a variable and see it without reloads; the
values are read on the driver and passed on as arguments, never read inside actors.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where ``tiny:NAME`` model sources live (``factory models make-tiny`` writes there).
MODELS_DIR = "FACTORY_MODELS_DIR"
#: Ray address for ``factory run``; unset starts a local Ray.
RAY_ADDRESS = "FACTORY_RAY_ADDRESS"
#: Logging level for the factory's own loggers (default INFO).
LOG_LEVEL = "FACTORY_LOG_LEVEL"


def models_dir() -> Path:
    """Directory of tiny/local models; default ``build/models`` under the working directory."""
    return Path(os.environ.get(MODELS_DIR, "build/models")).expanduser().resolve()


def ray_address() -> str | None:
    """Ray cluster address, or None for a local Ray."""
    return os.environ.get(RAY_ADDRESS) or None


def log_level() -> str:
    """Log level name."""
    return os.environ.get(LOG_LEVEL, "INFO").upper()
