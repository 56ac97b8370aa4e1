"""hosted_fal: fal's queue API as a hosted stage's client (``stages.hosted_base.HostedClient``).

Calls go through fal's official client, ``fal_client.SyncClient``: submit to the queue, poll
the request's status, fetch its result, cancel it. Its own retry policy handles 408/409/429
and fal's ingress errors (exponential backoff with jitter, 10 attempts); it does not read a
429's ``Retry-After``, so a response hook on its HTTP session waits what the header asks
first. fal takes an image wherever it takes an image URL, a data URI included, so nothing is
uploaded to a host of fal's first.

Its variables are the client's own, read where the stage runs: ``FAL_KEY`` (or ``FAL_KEY_ID``
and ``FAL_KEY_SECRET``) and ``FAL_QUEUE_RUN_HOST`` (an HTTPS host, read once per process when
``fal_client`` is imported).
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from stages.hosted_base import (PROVIDERS, Outcome, Provider, poll, refused_key,
                                 wait_retry_after)


class FalQueue:
    """fal's queue API through ``fal_client.SyncClient``: submit, poll, fetch, cancel."""

    provider: ClassVar[Provider] = PROVIDERS["fal"]

    def __init__(self, *, http_timeout_s: float) -> None:
        import fal_client  # the actor's environment: FAL_KEY, FAL_QUEUE_RUN_HOST

        self.fal = fal_client
        self.client = fal_client.SyncClient(default_timeout=http_timeout_s)
        self._paced = False
        self._lock = threading.Lock()

    def _pace(self) -> None:
        """Hook ``wait_retry_after`` into the client's HTTP session. The session is made on
        first use (it reads the key then), so this runs on the first request, not at load."""
        with self._lock:
            if not self._paced:
                self.client._client.event_hooks["response"].append(wait_retry_after)
                self._paced = True

    def arguments(self, request: dict[str, Any]) -> dict[str, Any]:
        """fal's input: ``image`` as ``image_url``, a size as ``image_size``, one image."""
        out = {key: value for key, value in request.items()
               if value is not None and key not in ("image", "width", "height")}
        if request.get("image") is not None:
            out["image_url"] = request["image"]
        if request.get("width") is not None:
            out["image_size"] = {"width": request["width"], "height": request["height"]}
        if "prompt" in request:
            out["num_images"] = 1
        return out

    def submit(self, endpoint: str, arguments: dict[str, Any]) -> str:
        self._pace()
        return self.client.submit(endpoint, arguments).request_id

    def wait(self, endpoint: str, request_id: str, *, timeout_s: float,
             interval_s: float) -> tuple[str, dict[str, Any]]:
        """The URL of the request's first image and its metrics once it completes;
        ``TimeoutError`` (after a cancel) past ``timeout_s``."""
        self._pace()
        handle = self.client.get_handle(endpoint, request_id)
        status = poll(request_id, handle.status,
                      lambda current: isinstance(current, self.fal.Completed), handle.cancel,
                      timeout_s=timeout_s, interval_s=interval_s)
        if getattr(status, "error", None):
            raise RuntimeError(f"request {request_id} failed: {status.error}")
        return _image_url(handle.get()), dict(getattr(status, "metrics", None) or {})

    def classify(self, exc: BaseException) -> Outcome:
        """A failed request as an outcome: the key's fault (raised for the run), the
        provider's or the network's (an outage when every row has it), or the row's."""
        import httpx
        from fal_client.auth import MissingCredentialsError

        if isinstance(exc, MissingCredentialsError):
            return Outcome(error=refused_key(self.provider, None,
                                             " (or FAL_KEY_ID and FAL_KEY_SECRET)"))
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return Outcome(error=refused_key(self.provider, status))
        if (status is not None and status >= 500) or isinstance(exc, httpx.TransportError):
            return Outcome(error=exc, outage=True)
        return Outcome(error=exc)

    @staticmethod
    def not_found(exc: BaseException) -> bool:
        return getattr(exc, "status_code", None) in (404, 410)


def _image_url(result: dict[str, Any]) -> str:
    """The first image of a fal result: ``images[0].url`` (text to image, edits) or
    ``image.url`` (background removal, upscalers)."""
    images = result.get("images") or ([result["image"]] if result.get("image") else [])
    if not images or not isinstance(images[0], dict) or not images[0].get("url"):
        raise ValueError(f"fal returned no image: {str(result)[:200]}")
    return images[0]["url"]
