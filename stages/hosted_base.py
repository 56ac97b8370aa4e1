"""hosted_base: what every provider's client shares with the hosted stages (``stages.hosted``).

A provider's client (``stages.hosted_fal.FalQueue``, ``stages.hosted_replicate.ReplicateQueue``)
wraps the provider's official Python client and answers five questions for a stage:

- ``arguments(request)``: the provider's input for a provider-neutral request (``prompt``,
  ``seed``, ``width``/``height``, ``image`` as a data URI, ``scale``, ``output_format``; only
  the keys the stage uses), in the model's own schema;
- ``submit(endpoint, arguments)``: the provider's request id once its queue accepted the job;
- ``wait(endpoint, request_id, timeout_s=, interval_s=)``: ``(image_url, metrics)`` once the
  job completed (``poll`` waits for it), the URL of its first image (an ``https://`` or ``data:`` URL) and what the
  provider measured (``inference_time``: seconds of compute it bills by); ``TimeoutError``
  after a best-effort cancel when the job is unfinished after ``timeout_s``;
- ``classify(exc)``: a failure as an ``Outcome``: the key's fault (``HostedAuthError``), an
  outage of the provider or the network (``outage=True``: a whole batch of them stops the run),
  or the row's own;
- ``not_found(exc)``: whether the provider no longer knows a recorded request.

Retries are the provider client's own policy, never a loop here; ``wait_retry_after`` is the
one addition, for clients that retry a 429 without reading its ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar, Protocol, TypeVar


class HostedError(RuntimeError):
    """The provider, not a row: the run stops uncommitted."""


class HostedAuthError(HostedError):
    """The provider refused the key, or there is none."""


class HostedOutage(HostedError):
    """Every request of a batch failed on the provider's side or on the way to it."""


@dataclass(frozen=True)
class Provider:
    """A provider: its name, the environment variable that holds its key and the one that
    points its client at another address."""

    name: str
    key_env: str
    host_env: str


PROVIDERS: dict[str, Provider] = {
    "fal": Provider(name="fal", key_env="FAL_KEY", host_env="FAL_QUEUE_RUN_HOST"),
    "replicate": Provider(name="replicate", key_env="REPLICATE_API_TOKEN",
                          host_env="REPLICATE_BASE_URL"),
}


@dataclass
class Outcome:
    """One request's end: its image, or why not."""

    image: Any = None
    units: float = 0.0
    request_id: str = ""
    error: BaseException | None = None
    outage: bool = False
    #: further per-row outputs of the stage (a scene's product layer and fidelity)
    extra: dict[str, Any] | None = None


class HostedClient(Protocol):
    """What a stage asks of a provider's client (see the module's docstring)."""

    provider: ClassVar[Provider]

    def __init__(self, *, http_timeout_s: float) -> None: ...

    def arguments(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def submit(self, endpoint: str, arguments: dict[str, Any]) -> str: ...

    def wait(self, endpoint: str, request_id: str, *, timeout_s: float,
             interval_s: float) -> tuple[str, dict[str, Any]]: ...

    def classify(self, exc: BaseException) -> Outcome: ...

    def not_found(self, exc: BaseException) -> bool: ...


def refused_key(provider: Provider, status: int | None, also: str = "") -> HostedAuthError:
    """The error for a key the provider refused (``status``) or that is missing (None)."""
    where = "in the environment of the cluster's workers"
    if status is None:
        return HostedAuthError(f"{provider.name}: no API key: set {provider.key_env}"
                               f"{also} {where}")
    return HostedAuthError(f"{provider.name} refused the API key ({status}): set "
                           f"{provider.key_env} to a valid key {where}")


log = logging.getLogger(__name__)
T = TypeVar("T")


def poll(request_id: str, status: Callable[[], T], finished: Callable[[T], bool],
         cancel: Callable[[], Any], *, timeout_s: float, interval_s: float) -> T:
    """A request's status once ``finished`` says so, asked every ``interval_s``; past
    ``timeout_s`` the request is cancelled (best effort) and ``TimeoutError`` raised."""
    deadline = time.monotonic() + timeout_s
    while not finished(current := status()):
        if time.monotonic() >= deadline:
            try:
                cancel()
            except Exception:  # noqa: BLE001 - best effort: the row fails either way
                log.debug("cancel of %s failed", request_id, exc_info=True)
            raise TimeoutError(f"request {request_id} unfinished after {timeout_s:g} s; "
                               "cancelled")
        time.sleep(interval_s)
    return current


#: The longest a 429's ``Retry-After`` is waited (a provider's hint, not a hold on the actor).
MAX_RETRY_AFTER_S = 60.0


def retry_after_s(value: str | None) -> float:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or an HTTP date), at most
    ``MAX_RETRY_AFTER_S``; 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def wait_retry_after(response: Any) -> None:
    """An httpx response hook: on a 429, wait what its ``Retry-After`` asks before the
    client's own retry policy goes on."""
    if response.status_code == 429:
        time.sleep(retry_after_s(response.headers.get("retry-after")))
