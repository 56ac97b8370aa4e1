"""hosted: premium models behind a provider's queue API, as a stage like any other.

A hosted card (``StageCard.hosted``) names a provider, the provider's id of the model and its
published price per billed unit. Its runtime holds no GPU and loads no weights: each actor keeps
up to ``concurrency`` requests in flight (a thread pool, never more than the card's limit) and
calls the provider through its official Python client (fal: ``fal-client``), whose own retry
policy handles 408/409/429 and the provider's ingress errors (exponential backoff with jitter,
10 attempts). That client does not read ``Retry-After``: a response hook on its HTTP session
waits what a 429 asks for before the client's own retry goes on. There is no retry loop here.

What the provider answers decides whose fault it is:

- a 4xx for one row (a refused prompt, a bad size), a result that does not decode, or a request
  still unfinished after ``timeout_s`` (cancelled, best effort): that row's failure; its
  batch-mates go on;
- 401 or 403, or no key at all: ``HostedAuthError``, naming the provider and the variable to
  set; the run stops at its first batch;
- every row of a batch failing with a 5xx or a connection error: ``HostedOutage``; the run stops
  uncommitted, as it does when the store fails, and running it again resumes it.

**Requests are paid once.** fal's queue API takes no idempotency key and has no lookup by one,
so each request's id is recorded in the run's output store as soon as the provider accepts it,
create-only, at ``runs/<run id>/requests/<stage>/<work>.json`` (``work``: a hash of the card,
the endpoint and the request's arguments, so the same row's request in the same run). A resumed
run (the same run id, after a killed driver) finds the record and fetches that request's
result instead of submitting it again. The one window left is between the provider's answer
to a submit and the record's write (one store write): a driver killed there pays twice.

Two runtimes: ``HostedGenerator`` (text to image) and ``HostedScene`` (the product placed on
its canvas as the local scene cards place it, a hosted image-edit model paints the scene, the
product's own pixels go back on top exactly).

Credentials and the provider's address are the client's own environment variables (fal:
``FAL_KEY``, or ``FAL_KEY_ID`` and ``FAL_KEY_SECRET``; ``FAL_QUEUE_RUN_HOST``, an HTTPS host),
read where the stage runs, as boto3 reads ``AWS_*``: they are never in a spec, a plan or the
lineage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from factory.core.status import STATUS_FAILED
from factory.store.s3 import S3Options, StorageError
from factory.store.storage import Store
from stages.base import HostedApi, Stage, StageParams, StagePlan
from stages.product import FIDELITY, PRODUCT, fidelity_delta_e
from stages.scene_inpaint import PlacementParams

log = logging.getLogger(__name__)

#: Where a run keeps the requests its hosted stages made: ``runs/<run id>/requests/``.
REQUESTS_DIR = "requests"
#: Largest image a provider's answer may decode to (the decompression-bomb cap).
MAX_MEGAPIXELS = 64
BILLING_UNITS = ("megapixels", "images", "seconds")


def request_column(stage: str) -> str:
    """The lineage column of the provider's request id for ``stage``."""
    return f"{stage}_request_id"


def units_column(stage: str) -> str:
    """The lineage column of the units the provider billed for ``stage``."""
    return f"{stage}_billed_units"


def provider_column(stage: str) -> str:
    """The lineage column naming the provider that ran ``stage``."""
    return f"{stage}_provider"


class HostedError(RuntimeError):
    """The provider, not a row: the run stops uncommitted."""


class HostedAuthError(HostedError):
    """The provider refused the key, or there is none."""


class HostedOutage(HostedError):
    """Every request of a batch failed on the provider's side or on the way to it."""


@dataclass(frozen=True)
class Provider:
    """A provider: its name and the environment variable that holds its key."""

    name: str
    key_env: str
    host_env: str


PROVIDERS: dict[str, Provider] = {
    "fal": Provider(name="fal", key_env="FAL_KEY", host_env="FAL_QUEUE_RUN_HOST"),
}


class HostedGenerateParams(StageParams):
    """A hosted text-to-image request, and how the stage waits for it.

    Attributes:
        width / height: the image asked for (``image_size``).
        output_format: what the provider encodes.
        timeout_s: a request unfinished after this is cancelled and its row fails.
        poll_interval_s: between status checks of a request in the provider's queue.
        concurrency: requests one actor keeps in flight (at most the card's limit).
    """

    key_neutral: ClassVar[frozenset[str]] = frozenset({"timeout_s", "poll_interval_s",
                                                       "concurrency"})

    width: int = Field(1024, ge=64, le=4096, multiple_of=8)
    height: int = Field(1024, ge=64, le=4096, multiple_of=8)
    output_format: Literal["png", "jpeg"] = "png"
    timeout_s: float = Field(300.0, gt=0, le=3600)
    poll_interval_s: float = Field(0.5, gt=0, le=60)
    concurrency: int = Field(4, ge=1, le=64)


def work_hash(card: str, endpoint: str, arguments: dict[str, Any]) -> str:
    """What a request is: its card, endpoint and arguments (so one row's request in a run)."""
    text = json.dumps({"card": card, "endpoint": endpoint, "arguments": arguments},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def billed_units(unit: str, image: np.ndarray, metrics: dict[str, Any]) -> float:
    """The units a result is billed by: the delivered image's megapixels, one image, or the
    inference seconds the provider reports."""
    if unit == "megapixels":
        return round(image.shape[0] * image.shape[1] / 1_000_000, 6)
    if unit == "images":
        return 1.0
    return float(metrics.get("inference_time") or 0.0)


def expected_units(plan: StagePlan) -> float | None:
    """Units one asset is expected to bill before any run measured it (for ``factory plan``
    and a budget's first estimate): megapixels from the params' size, one image; None for
    seconds (the stage's measured seconds stand in)."""
    hosted = plan.card.hosted
    if hosted is None or hosted.unit == "seconds":
        return None
    if hosted.unit == "images":
        return 1.0
    return round(plan.params.width * plan.params.height / 1_000_000, 6)


@dataclass
class _Outcome:
    image: np.ndarray | None = None
    units: float = 0.0
    request_id: str = ""
    error: BaseException | None = None
    outage: bool = False
    #: further per-row outputs of the stage (a scene's product layer and fidelity)
    extra: dict[str, Any] | None = None


class FalQueue:
    """fal's queue API through ``fal_client.SyncClient``: submit, poll, fetch, cancel."""

    provider: ClassVar[Provider] = PROVIDERS["fal"]

    def __init__(self, *, http_timeout_s: float) -> None:
        import threading

        import fal_client  # the actor's environment: FAL_KEY, FAL_QUEUE_RUN_HOST

        self.fal = fal_client
        self.client = fal_client.SyncClient(default_timeout=http_timeout_s)
        self._paced = False
        self._lock = threading.Lock()

    def _pace(self) -> None:
        """Have the client's HTTP session wait what a 429's ``Retry-After`` asks (at most
        ``MAX_RETRY_AFTER_S``) before its own retry policy backs off and tries again: fal's
        client retries 429s but does not read the header. Its session is made on first use
        (it reads the key then), so this runs on the first request, not at load."""
        with self._lock:
            if not self._paced:
                self.client._client.event_hooks["response"].append(_wait_retry_after)
                self._paced = True

    def submit(self, endpoint: str, arguments: dict[str, Any]) -> str:
        self._pace()
        return self.client.submit(endpoint, arguments).request_id

    def wait(self, endpoint: str, request_id: str, *, timeout_s: float,
             interval_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The request's result and metrics once it completes; ``TimeoutError`` (after a
        cancel) past ``timeout_s``."""
        self._pace()
        handle = self.client.get_handle(endpoint, request_id)
        deadline = time.monotonic() + timeout_s
        while not isinstance(status := handle.status(), self.fal.Completed):
            if time.monotonic() >= deadline:
                try:
                    handle.cancel()
                except Exception:  # noqa: BLE001 - best effort: the row fails either way
                    log.debug("cancel of %s failed", request_id, exc_info=True)
                raise TimeoutError(f"request {request_id} unfinished after {timeout_s:g} s; "
                                   "cancelled")
            time.sleep(interval_s)
        if getattr(status, "error", None):
            raise RuntimeError(f"request {request_id} failed: {status.error}")
        return handle.get(), dict(getattr(status, "metrics", None) or {})

    def classify(self, exc: BaseException) -> _Outcome:
        """A failed request as an outcome: the key's fault (raised for the run), the
        provider's or the network's (an outage when every row has it), or the row's."""
        import httpx
        from fal_client.auth import MissingCredentialsError

        name, variable = self.provider.name, self.provider.key_env
        if isinstance(exc, MissingCredentialsError):
            return _Outcome(error=HostedAuthError(
                f"{name}: no API key: set {variable} (or FAL_KEY_ID and FAL_KEY_SECRET) in the "
                "environment of the cluster's workers"))
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return _Outcome(error=HostedAuthError(
                f"{name} refused the API key ({status}): set {variable} to a valid key in the "
                "environment of the cluster's workers"))
        if (status is not None and status >= 500) or isinstance(exc, httpx.TransportError):
            return _Outcome(error=exc, outage=True)
        return _Outcome(error=exc)

    @staticmethod
    def not_found(exc: BaseException) -> bool:
        return getattr(exc, "status_code", None) in (404, 410)


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


def _wait_retry_after(response: Any) -> None:
    if response.status_code == 429:
        time.sleep(retry_after_s(response.headers.get("retry-after")))


_CLIENTS = {"fal": FalQueue}


class HostedGenerator(Stage):
    """Text to image on a hosted model; the card's ``hosted`` says which and its price."""

    image_columns: ClassVar[tuple[str, ...]] = ("image",)

    def _load(self) -> None:
        self.api: HostedApi = self.plan.card.hosted
        if self.api is None or self.api.provider not in _CLIENTS:
            raise ValueError(f"card '{self.plan.card.name}' names no hosted provider of "
                             f"{sorted(_CLIENTS)}")
        self.client = _CLIENTS[self.api.provider](
            http_timeout_s=min(self.params.timeout_s, 120.0))
        self.workers = max(1, min(self.params.concurrency, self.api.concurrency))
        self.store = (Store(self.plan.requests_uri, self.plan.s3 or S3Options())
                      if self.plan.requests_uri else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().__call__(batch)
        n = len(out["sku"])
        # every batch carries the columns, even one with no row of this stage's
        out.setdefault(request_column(self.plan.name), np.full(n, "", dtype=object))
        out.setdefault(units_column(self.plan.name), np.zeros(n))
        return out

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        """All rows' outputs, or the first row's error (``_run_rows`` is what ``__call__``
        uses: it keeps each row's own outcome)."""
        outcomes = self._call_all(rows)
        for outcome in outcomes:
            if outcome.error is not None:
                raise outcome.error
        columns: dict[str, list[Any]] = {
            "image": [o.image for o in outcomes],
            request_column(self.plan.name): [o.request_id for o in outcomes],
            units_column(self.plan.name): [o.units for o in outcomes]}
        for outcome in outcomes:
            for column, value in (outcome.extra or {}).items():
                columns.setdefault(column, []).append(value)
        return columns

    def _run_rows(self, batch, ok, outputs, status, error, failed_stage) -> None:
        """Every row's request at once (``workers`` in flight); each row's own outcome."""
        outcomes = self._call_all(self._take(batch, ok))
        for outcome in outcomes:
            if isinstance(outcome.error, HostedAuthError):
                raise outcome.error
        if all(o.outage for o in outcomes):
            raise HostedOutage(
                f"stage '{self.plan.name}': {self.api.provider} failed every request of a "
                f"batch ({type(outcomes[0].error).__name__}: {outcomes[0].error}); the run "
                "stops uncommitted, and running it again (the same run id) resumes it without "
                "paying again for the requests already made")
        n = len(batch["sku"])
        images = outputs.setdefault("image", np.empty(n, dtype=object))
        ids = outputs.setdefault(request_column(self.plan.name), np.full(n, "", dtype=object))
        units = outputs.setdefault(units_column(self.plan.name), np.zeros(n))
        for i, outcome in zip(ok, outcomes):
            ids[i] = outcome.request_id
            if outcome.error is None:
                images[i], units[i] = outcome.image, outcome.units
                for column, value in (outcome.extra or {}).items():
                    outputs.setdefault(column, np.full(n, None, dtype=object))[i] = value
                continue
            status[i], failed_stage[i] = STATUS_FAILED, self.plan.name
            error[i] = f"{type(outcome.error).__name__}: {outcome.error}"[:2000]
            log.warning("stage %s: sku %s failed: %s", self.plan.name, batch["sku"][i], error[i])

    def _call_all(self, rows: dict[str, Any]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(rows["sku"])
        requests = []
        for i in range(len(rows["sku"])):
            try:
                requests.append((i, self._arguments(rows, i)))
            except Exception as exc:  # noqa: BLE001 - this row's input, not the provider
                outcomes[i] = _Outcome(error=exc)
        if requests:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(requests)),
                                    thread_name_prefix=f"hosted-{self.plan.name}") as pool:
                for (i, _), outcome in zip(requests, pool.map(
                        lambda item: self._one(item[1], item[0]), requests)):
                    outcomes[i] = outcome
        return outcomes

    def _arguments(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        p = self.params
        width = int(rows["width"][i]) if "width" in rows and rows["width"][i] else p.width
        height = int(rows["height"][i]) if "height" in rows and rows["height"][i] else p.height
        return {"prompt": str(rows["prompt"][i]), "seed": int(rows["seed"][i]),
                "image_size": {"width": width, "height": height}, "num_images": 1,
                "output_format": p.output_format}

    def _finish(self, image: np.ndarray, i: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        """The row's output from the provider's image (and further outputs): as it came."""
        return image, None

    def _one(self, arguments: dict[str, Any], i: int) -> _Outcome:
        request_id = ""
        try:
            request_id, recorded = self._request(arguments)
            try:
                result, metrics = self._wait(request_id)
            except Exception as exc:
                if not (recorded and self.client.not_found(exc)):
                    raise
                # the provider no longer has the recorded request: ask again, once
                request_id, _ = self._request(arguments, replace=True)
                result, metrics = self._wait(request_id)
            image = self._image(result)
            units = billed_units(self.api.unit, image, metrics)
            image, extra = self._finish(image, i)
            return _Outcome(image=image, units=units, request_id=request_id, extra=extra)
        except StorageError:  # the run's store, not the provider: the run stops uncommitted
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into the row's, the key's or an outage
            outcome = self.client.classify(exc)
            outcome.request_id = request_id
            return outcome

    def _wait(self, request_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.client.wait(self.api.endpoint, request_id, timeout_s=self.params.timeout_s,
                                interval_s=self.params.poll_interval_s)

    def _request(self, arguments: dict[str, Any], *, replace: bool = False) -> tuple[str, bool]:
        """The request id for these arguments: recorded by this run already (True), or
        submitted now and recorded (False)."""
        key = self._record_key(arguments)
        if self.store is not None and not replace:
            try:
                return json.loads(self.store.read_bytes(key))["request_id"], True
            except FileNotFoundError:
                pass
            except OSError as exc:  # the store, not this row
                raise StorageError(f"{self.store.uri}: cannot read {key}: {exc}") from exc
        request_id = self.client.submit(self.api.endpoint, arguments)
        if self.store is not None:
            record = json.dumps({"provider": self.api.provider, "endpoint": self.api.endpoint,
                                 "request_id": request_id, "stage": self.plan.name,
                                 "submitted_at": datetime.now(timezone.utc).isoformat()}).encode()
            if replace:
                self.store.replace_bytes(key, record, content_type="application/json")
            else:
                self.store.put_if_absent(key, record, content_type="application/json")
        return request_id, False

    def _record_key(self, arguments: dict[str, Any]) -> str:
        work = work_hash(self.plan.card.name, self.api.endpoint, arguments)
        return f"runs/{self.labels.run_id}/{REQUESTS_DIR}/{self.plan.name}/{work}.json"

    def _image(self, result: dict[str, Any]) -> np.ndarray:
        """The first image of a result, fetched (or a data URI decoded) and decoded
        defensively (``factory.core.photo_decode``)."""
        from factory.core.photo_decode import decode_photo

        images = result.get("images") or []
        if not images or not images[0].get("url"):
            raise ValueError(f"{self.api.provider} returned no image: {str(result)[:200]}")
        url = images[0]["url"]
        if url.startswith("data:"):
            data = base64.b64decode(url.split(",", 1)[1])
        else:
            import httpx

            # no Authorization header: the provider's key never goes to its file host
            response = httpx.get(url, timeout=min(self.params.timeout_s, 120.0),
                                 follow_redirects=True)
            response.raise_for_status()
            data = response.content
        return decode_photo(data, max_pixels=MAX_MEGAPIXELS * 1_000_000)


class HostedSceneParams(HostedGenerateParams, PlacementParams):
    """A hosted scene around the product: where the product goes on the canvas and how it is
    put back, as ``stages.scene_inpaint.SceneParams`` says (``width``/``height`` are the
    canvas)."""


class HostedScene(HostedGenerator):
    """The product placed on its canvas (``stages.scene_inpaint.product_layer``), sent over the
    fill colour to a hosted image-edit model with the row's prompt, the answer scaled to the
    canvas, and the product's own pixels put back on top exactly (``finish``)."""

    image_columns: ClassVar[tuple[str, ...]] = ("image", PRODUCT)

    def _load(self) -> None:
        from stages.colour import parse_hex_colour

        super()._load()
        self.fill = parse_hex_colour(self.params.fill)
        self._layers: dict[int, np.ndarray] = {}

    def _arguments(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        from stages.scene_inpaint import flatten, product_layer

        p = self.params
        width = int(rows["width"][i]) if "width" in rows and rows["width"][i] else p.width
        height = int(rows["height"][i]) if "height" in rows and rows["height"][i] else p.height
        layer = product_layer(rows["image"][i], (height, width), scale=p.scale, x=p.x, y=p.y,
                              margin=p.margin)
        self._layers[i] = layer
        return {"prompt": str(rows["prompt"][i]), "seed": int(rows["seed"][i]),
                "image_url": _data_uri(flatten(layer, self.fill)), "num_images": 1,
                "output_format": p.output_format}

    def _finish(self, image: np.ndarray, i: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        from stages.scene_inpaint import finish

        p = self.params
        layer = self._layers[i]
        generated = np.ascontiguousarray(image[..., :3])
        if generated.shape[:2] != layer.shape[:2]:  # the model answers at its own size
            from PIL import Image

            size = (layer.shape[1], layer.shape[0])
            generated = np.asarray(Image.fromarray(generated).resize(size, Image.LANCZOS))
        scene = finish(generated, layer, shadow=p.shadow, opacity=p.shadow_opacity,
                       blur=p.shadow_blur)
        return scene, {PRODUCT: layer, FIDELITY: fidelity_delta_e(scene, layer)}


def _data_uri(rgb: np.ndarray) -> str:
    """A PNG data URI of ``rgb``: fal takes one wherever it takes an image URL, so nothing is
    uploaded to a host of the provider's first."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
