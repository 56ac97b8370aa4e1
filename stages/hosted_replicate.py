"""hosted_replicate: Replicate's predictions API as a hosted stage's provider client.

``ReplicateQueue`` answers what a hosted stage asks of a provider (``stages.hosted_base``)
through Replicate's official Python client (``replicate``): a prediction is created for an
official model (``owner/name``, ``POST /v1/models/<owner>/<name>/predictions``) or for a
version of any model (``owner/name:version``, ``POST /v1/predictions``), polled until it
succeeds, fails or is cancelled, and cancelled when it is still unfinished after the stage's
``timeout_s``. Its output (a URL, or a list of them) gives the image's URL; its
``metrics.predict_time`` gives the seconds Replicate bills by.

Retries are the client's own transport (``replicate.client.RetryTransport``, exponential
backoff with jitter, 10 attempts, waiting a 429's ``Retry-After`` when it is in seconds):

- GET, PUT, DELETE and the other idempotent methods, on 429, 503 and 504: the client's default
  transport, which wraps every transport it is given;
- POST (a prediction's create, a cancel), on 429 only: the transport given here. A 429 means
  Replicate did not accept the prediction, so trying again cannot pay twice; a 5xx on a
  create may have been accepted, so it is not retried but reported (an outage when every row
  of a batch has one).

The client waits a ``Retry-After`` itself, so no response hook is added: httpx runs its hooks
only on the answer the transport finally returns, after the transport's own retries.

Credentials and the address are the client's own environment variables,
``REPLICATE_API_TOKEN`` and ``REPLICATE_BASE_URL`` (``https://api.replicate.com`` when unset),
read where the stage runs when the client is made: never in a spec, a plan or the lineage.
"""

from __future__ import annotations

from typing import Any, ClassVar

from stages.hosted_base import PROVIDERS, Outcome, Provider, poll, refused_key

#: A prediction's states in which it will change no more.
FINISHED = ("succeeded", "failed", "canceled")


class ReplicateQueue:
    """Replicate's predictions through ``replicate.Client``: create, poll, cancel."""

    provider: ClassVar[Provider] = PROVIDERS["replicate"]

    def __init__(self, *, http_timeout_s: float) -> None:
        import httpx
        import replicate  # the actor's environment: REPLICATE_API_TOKEN, REPLICATE_BASE_URL
        from replicate.client import RetryTransport

        # the client wraps this in its default RetryTransport (idempotent methods on
        # 429/503/504); this inner one adds POST on 429 only
        posts = RetryTransport(wrapped_transport=httpx.HTTPTransport(),
                               retryable_methods=["POST"], retry_status_codes=[429])
        self.client = replicate.Client(timeout=httpx.Timeout(http_timeout_s), transport=posts)
        # the HTTP session is made now, once, not by the first of the stage's threads to ask
        # for it (two at once would each make one); it reads the token and address here
        self._keyed = "Authorization" in self.client._client.headers

    def arguments(self, request: dict[str, Any]) -> dict[str, Any]:
        """Replicate's input for a provider-neutral request: keys by name (``image`` a data
        URI, which Replicate takes wherever it takes a file), ``aspect_ratio: "custom"`` with
        a ``width``/``height``, and no key whose value is None."""
        out = {key: value for key, value in request.items() if value is not None}
        if "width" in out or "height" in out:
            out["aspect_ratio"] = "custom"
        return out

    def submit(self, endpoint: str, arguments: dict[str, Any]) -> str:
        """The id of a prediction created for ``endpoint``: ``owner/name`` (an official model)
        or ``owner/name:version``."""
        from replicate.identifier import ModelVersionIdentifier

        owner, name, version = ModelVersionIdentifier.parse(endpoint)
        if version:
            prediction = self.client.predictions.create(version=version, input=arguments)
        else:
            prediction = self.client.predictions.create(model=f"{owner}/{name}",
                                                        input=arguments)
        return prediction.id

    def wait(self, endpoint: str, request_id: str, *, timeout_s: float,
             interval_s: float) -> tuple[str, dict[str, Any]]:
        """The first output URL of a succeeded prediction and its metrics
        (``inference_time``: Replicate's ``predict_time``); ``RuntimeError`` when it failed or
        was cancelled; ``TimeoutError`` (after a cancel) past ``timeout_s``."""
        predictions = self.client.predictions
        prediction = poll(request_id, lambda: predictions.get(request_id),
                          lambda current: current.status in FINISHED,
                          lambda: predictions.cancel(request_id),
                          timeout_s=timeout_s, interval_s=interval_s)
        if prediction.status != "succeeded":
            raise RuntimeError(f"request {request_id} {prediction.status}: "
                               f"{prediction.error or 'no error given'}")
        output = prediction.output
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str) or not url:
            raise ValueError(f"{self.provider.name} returned no image for {request_id}: "
                             f"{str(output)[:200]}")
        seconds = (prediction.metrics or {}).get("predict_time")
        return url, {"inference_time": float(seconds or 0.0)}

    def classify(self, exc: BaseException) -> Outcome:
        """A failed request as an outcome: the key's fault (401/403: ``HostedAuthError``),
        Replicate's or the network's (5xx, a connection error: an outage when every row has
        it), or the row's (anything else: a refused input, a failed prediction, a timeout)."""
        import httpx
        from replicate.exceptions import ReplicateError

        status = exc.status if isinstance(exc, ReplicateError) else None
        if status in (401, 403):
            return Outcome(error=refused_key(self.provider, status if self._keyed else None))
        if (status is not None and status >= 500) or isinstance(exc, httpx.TransportError):
            return Outcome(error=exc, outage=True)
        return Outcome(error=exc)

    @staticmethod
    def not_found(exc: BaseException) -> bool:
        """Whether Replicate no longer knows the prediction (404, or 410 gone)."""
        from replicate.exceptions import ReplicateError

        return isinstance(exc, ReplicateError) and exc.status in (404, 410)
