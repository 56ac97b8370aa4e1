"""S3 and S3-compatible stores (AWS, MinIO, R2): options, clients, error translation.

Object writes and reads go through boto3 with botocore's retry configuration (``standard`` or
``adaptive`` mode: 503 SlowDown, throttling and timeouts are retried there, never in a loop of
ours). botocore does not count S3's 409 ``ConditionalRequestConflict`` (a conditional PUT that
met a concurrent write of the same key) as retryable; S3 advises retrying it, so each client
is told to, through botocore's own retry hook (``needs-retry``), within the same attempts.
Streaming reads of a manifest go through pyarrow's ``S3FileSystem`` with the same endpoint,
region and addressing. Credentials come from the standard chains (environment,
profile, instance role) and are never passed, stored or printed here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Literal
from urllib.parse import urlparse

from factory.core import settings

if TYPE_CHECKING:
    import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """A store that cannot be used: no such bucket, access denied, unreachable endpoint."""


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store. Defaults come from ``settings``.

    Attributes:
        endpoint_url: e.g. ``http://127.0.0.1:9000`` for MinIO; None for AWS.
        region: the bucket's region; None lets the SDK decide.
        addressing_style: ``path`` (MinIO, most local servers), ``virtual`` or ``auto``.
        retry_mode: botocore's ``standard`` or ``adaptive`` (client-side rate limiting).
        max_attempts: attempts per request, the first included.
        connect_timeout: seconds.
        read_timeout: seconds.
        create_only: ``if-none-match`` (the server honours conditional PUT), ``checked`` (look
            before writing; the object's metadata carries its work hash), or ``auto`` (the
            preflight finds out).
    """

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    create_only: Literal["auto", "if-none-match", "checked"] = "auto"

    @classmethod
    def from_settings(cls, **overrides: Any) -> S3Options:
        """Options from the environment (see ``factory.core.settings``), then ``overrides``."""
        values = settings.s3_defaults()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"'{uri}' is not an s3://bucket/prefix URI")
    return parsed.netloc, parsed.path.strip("/")


@lru_cache(maxsize=8)
def client(options: S3Options) -> Any:
    """A boto3 S3 client for these options, one per process (clients are thread-safe)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": options.retry_mode, "max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        s3={"addressing_style": options.addressing_style},
        region_name=options.region,
        # named, so presigned URLs (``factory.publish.links``) are SigV4 as requests are:
        # left unset, botocore presigns some endpoints with the deprecated SigV2
        signature_version="s3v4",
    )
    s3 = boto3.session.Session().client("s3", endpoint_url=options.endpoint_url, config=config)
    s3.meta.events.register("needs-retry.s3.PutObject",
                            _retry_conditional_conflict(options.max_attempts))
    return s3


#: The longest wait (seconds) before retrying a 409 ConditionalRequestConflict.
CONFLICT_WAIT_MAX_S = 2.0


def _retry_conditional_conflict(max_attempts: int) -> Callable[..., float | None]:
    """A botocore ``needs-retry`` handler: a 409 ``ConditionalRequestConflict`` is retried,
    with jittered exponential waits, until ``max_attempts``. The retry meets the other write
    finished: a 412 (it created the key) or a success (it failed). Any other answer is left to
    botocore's retry mode (this handler says nothing: None)."""

    def needs_retry(response: Any = None, attempts: int = 0, **_: Any) -> float | None:
        if response is None or attempts >= max_attempts:
            return None
        http, parsed = response
        if getattr(http, "status_code", 0) != 409:
            return None
        if (parsed or {}).get("Error", {}).get("Code") != "ConditionalRequestConflict":
            return None
        return random.uniform(0, min(CONFLICT_WAIT_MAX_S, 0.05 * 2 ** attempts))

    return needs_retry


def pyarrow_filesystem(options: S3Options) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for streaming reads, on the same endpoint and region."""
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts),
        "connect_timeout": options.connect_timeout,
        "request_timeout": options.read_timeout,
    }
    if options.region:
        kwargs["region"] = options.region
    if options.endpoint_url:
        parsed = urlparse(options.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    if options.addressing_style == "virtual":
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


def error_code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a botocore ``ClientError`` (else ``("", 0)``)."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def explain(exc: BaseException, uri: str, action: str) -> StorageError:
    """A ``StorageError`` that says what failed where, without any credential."""
    code, status = error_code(exc)
    bucket = split_uri(uri)[0] if is_s3(uri) else uri
    if code in ("NoSuchBucket",) or (status == 404 and action.startswith("write")):
        return StorageError(f"{uri}: bucket '{bucket}' does not exist ({action})")
    if code in ("AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                "SignatureDoesNotMatch") or status == 403:
        return StorageError(f"{uri}: access denied ({code or status}) when trying to {action}; "
                            "check the credentials and the bucket policy")
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        return StorageError(f"{uri}: cannot reach the S3 endpoint to {action} ({name})")
    return StorageError(f"{uri}: {action} failed: {code or name} {status or ''}".rstrip())
