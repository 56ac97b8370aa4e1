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
#: Ray Jobs API address (the dashboard) for submit/status/logs/stop/list and schedules.
JOBS_ADDRESS = "FACTORY_RAY_JOBS_ADDRESS"
DEFAULT_JOBS_ADDRESS = "http://127.0.0.1:8265"
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


#: S3-compatible storage (see README, "Object storage"). Credentials are NOT settings here:
#: they come from boto3's and the AWS SDK's standard chains.
S3_ENDPOINT_URL = "FACTORY_S3_ENDPOINT_URL"
S3_REGION = "FACTORY_S3_REGION"
S3_ADDRESSING_STYLE = "FACTORY_S3_ADDRESSING_STYLE"
S3_RETRY_MODE = "FACTORY_S3_RETRY_MODE"
S3_MAX_ATTEMPTS = "FACTORY_S3_MAX_ATTEMPTS"
S3_CREATE_ONLY = "FACTORY_S3_CREATE_ONLY"
#: Local cache for model directories named by s3:// URIs.
CACHE_DIR = "FACTORY_CACHE_DIR"


def s3_defaults() -> dict:
    """S3 options from the environment; unset ones keep the library defaults."""
    env = os.environ
    values: dict = {}
    endpoint = env.get(S3_ENDPOINT_URL) or env.get("AWS_ENDPOINT_URL_S3") or env.get(
        "AWS_ENDPOINT_URL")
    if endpoint:
        values["endpoint_url"] = endpoint
    region = env.get(S3_REGION) or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        values["region"] = region
    for variable, key in ((S3_ADDRESSING_STYLE, "addressing_style"),
                          (S3_RETRY_MODE, "retry_mode"), (S3_CREATE_ONLY, "create_only")):
        if env.get(variable):
            values[key] = env[variable]
    if env.get(S3_MAX_ATTEMPTS):
        values["max_attempts"] = int(env[S3_MAX_ATTEMPTS])
    return values


def cache_dir() -> Path:
    """Where s3:// model directories are copied before loading."""
    return Path(os.environ.get(CACHE_DIR, "~/.cache/asset-factory")).expanduser().resolve()


def named_secret(variable: str) -> str | None:
    """The value of the environment variable a spec names for a secret (``notify``'s
    ``secret_env``: a webhook's signing secret), or None when it is unset or empty. The spec
    holds the variable's name only; the value is read on the driver, when the run starts."""
    return os.environ.get(variable) or None
