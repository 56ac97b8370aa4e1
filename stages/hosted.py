"""hosted: premium models behind a provider's queue API, as a stage like any other.

A hosted card (``StageCard.hosted``) names a provider, the provider's id of the model and its
published price per billed unit. Its runtime holds no GPU and loads no weights: each actor keeps
up to ``concurrency`` requests in flight (a thread pool, never more than the card's limit) and
calls the provider through its official Python client, wrapped as a ``HostedClient``
(``stages.hosted_base``): fal's (``stages.hosted_fal``) or Replicate's
(``stages.hosted_replicate``). Retries of 429s and transient errors are those clients' own
policies; there is no retry loop here.

What the provider answers decides whose fault it is:

- a 4xx for one row (a refused prompt, a bad size), a result that does not decode, or a request
  still unfinished after ``timeout_s`` (cancelled, best effort): that row's failure; its
  batch-mates go on;
- 401 or 403, or no key at all: ``HostedAuthError``, naming the provider and the variable to
  set; the run stops at its first batch;
- every row of a batch failing with a 5xx or a connection error: ``HostedOutage``; the run stops
  uncommitted, as it does when the store fails, and running it again resumes it.

**Requests are paid once.** Neither fal's queue API nor Replicate's takes an idempotency key or
looks requests up by one, so each request's id is recorded in the run's output store as soon as the provider accepts it,
create-only, at ``runs/<run id>/requests/<stage>/<work>.json`` (``work``: a hash of the card,
the endpoint and the request's arguments, so the same row's request in the same run). A resumed
run (the same run id, after a killed driver) finds the record and fetches that request's
result instead of submitting it again. The one window left is between the provider's answer
to a submit and the record's write (one store write): a driver killed there pays twice.

``HostedGenerator`` (text to image) is the runtime every hosted stage builds on; the image-in
runtimes (a scene around the product, background removal, upscaling) are in
``stages.hosted_edit``.

Credentials and the provider's address are the client's own environment variables (fal:
``FAL_KEY``, ``FAL_QUEUE_RUN_HOST``; Replicate: ``REPLICATE_API_TOKEN``, ``REPLICATE_BASE_URL``),
read where the stage runs, as boto3 reads ``AWS_*``: they are never in a spec, a plan or the
lineage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field

from factory.core.status import STATUS_FAILED
from factory.store.s3 import S3Options, StorageError
from factory.store.storage import Store
from stages.base import HostedApi, Stage, StageParams, StagePlan
from stages.hosted_base import HostedAuthError, HostedClient, HostedOutage, Outcome

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


class HostedParams(StageParams):
    """How a hosted stage waits for its requests (none of it changes an asset's key).

    Attributes:
        timeout_s: a request unfinished after this is cancelled and its row fails.
        poll_interval_s: between status checks of a request in the provider's queue.
        concurrency: requests one actor keeps in flight (at most the card's limit).
    """

    key_neutral: ClassVar[frozenset[str]] = frozenset({"timeout_s", "poll_interval_s",
                                                       "concurrency"})

    timeout_s: float = Field(300.0, gt=0, le=3600)
    poll_interval_s: float = Field(0.5, gt=0, le=60)
    concurrency: int = Field(4, ge=1, le=64)


class HostedGenerateParams(HostedParams):
    """A hosted text-to-image request.

    Attributes:
        width / height: the image asked for.
        output_format: what the provider encodes.
    """

    width: int = Field(1024, ge=64, le=4096, multiple_of=8)
    height: int = Field(1024, ge=64, le=4096, multiple_of=8)
    output_format: Literal["png", "jpeg"] = "png"


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
    width, height = getattr(plan.params, "width", None), getattr(plan.params, "height", None)
    if width is None or height is None:  # an image-in model: its input's size decides
        return None
    return round(width * height / 1_000_000, 6)


def _clients() -> dict[str, type[HostedClient]]:
    """Each provider's client class, by the name a card's ``hosted.provider`` gives."""
    from stages.hosted_fal import FalQueue
    from stages.hosted_replicate import ReplicateQueue

    return {"fal": FalQueue, "replicate": ReplicateQueue}


class HostedGenerator(Stage):
    """Text to image on a hosted model; the card's ``hosted`` says which and its price."""

    image_columns: ClassVar[tuple[str, ...]] = ("image",)

    def _load(self) -> None:
        self.api: HostedApi = self.plan.card.hosted
        clients = _clients()
        if self.api is None or self.api.provider not in clients:
            raise ValueError(f"card '{self.plan.card.name}' names no hosted provider of "
                             f"{sorted(clients)}")
        self.client = clients[self.api.provider](
            http_timeout_s=min(self.params.timeout_s, 120.0))
        self.workers = max(1, min(self.params.concurrency, self.api.concurrency))
        # the card's rate limit, this actor's share of it: submissions this far apart at least
        actors = max(1, self.plan.resources.concurrency)
        self.spacing_s = actors / self.api.requests_per_s if self.api.requests_per_s > 0 else 0.0
        self._next_submit = 0.0
        self._pacing = threading.Lock()
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

    def _call_all(self, rows: dict[str, Any]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(rows["sku"])
        requests = []
        for i in range(len(rows["sku"])):
            if (ready := self._ready(rows, i)) is not None:
                outcomes[i] = ready
                continue
            try:
                requests.append((i, self._arguments(rows, i)))
            except Exception as exc:  # noqa: BLE001 - this row's input, not the provider
                outcomes[i] = Outcome(error=exc)
        if requests:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(requests)),
                                    thread_name_prefix=f"hosted-{self.plan.name}") as pool:
                for (i, _), outcome in zip(requests, pool.map(
                        lambda item: self._one(item[1], item[0]), requests)):
                    outcomes[i] = outcome
        return outcomes

    def _ready(self, rows: dict[str, Any], i: int) -> Outcome | None:
        """Row ``i``'s outcome when it needs no request (None: it does)."""
        return None

    def _arguments(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        """Row ``i``'s request in the provider's own input schema."""
        return self.client.arguments(self._request_of(rows, i))

    def _request_of(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        """Row ``i``'s provider-neutral request (``stages.hosted_base``)."""
        p = self.params
        width, height = self._size(rows, i)
        return {"prompt": str(rows["prompt"][i]), "seed": int(rows["seed"][i]),
                "width": width, "height": height, "output_format": p.output_format}

    def _size(self, rows: dict[str, Any], i: int) -> tuple[int, int]:
        """The row's own size (a channel's, set by the work list) or the params'."""
        p = self.params
        width = int(rows["width"][i]) if "width" in rows and rows["width"][i] else p.width
        height = int(rows["height"][i]) if "height" in rows and rows["height"][i] else p.height
        return width, height

    def _finish(self, image: np.ndarray, i: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        """The row's output from the provider's image (and further outputs): as it came."""
        return image, None

    def _one(self, arguments: dict[str, Any], i: int) -> Outcome:
        request_id = ""
        try:
            request_id, recorded = self._request(arguments)
            try:
                url, metrics = self._wait(request_id)
            except Exception as exc:
                if not (recorded and self.client.not_found(exc)):
                    raise
                # the provider no longer has the recorded request: ask again, once
                request_id, _ = self._request(arguments, replace=True)
                url, metrics = self._wait(request_id)
            image = self._image(url)
            units = billed_units(self.api.unit, image, metrics)
            image, extra = self._finish(image, i)
            return Outcome(image=image, units=units, request_id=request_id, extra=extra)
        except StorageError:  # the run's store, not the provider: the run stops uncommitted
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into the row's, the key's or an outage
            outcome = self.client.classify(exc)
            outcome.request_id = request_id
            return outcome

    def _wait(self, request_id: str) -> tuple[str, dict[str, Any]]:
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
        self._wait_turn()
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

    def _wait_turn(self) -> None:
        """Space this actor's submissions ``spacing_s`` apart (the card's rate limit)."""
        if not self.spacing_s:
            return
        with self._pacing:
            now = time.monotonic()
            turn = max(now, self._next_submit)
            self._next_submit = turn + self.spacing_s
        if turn > now:
            time.sleep(turn - now)

    def _record_key(self, arguments: dict[str, Any]) -> str:
        work = work_hash(self.plan.card.name, self.api.endpoint, arguments)
        return f"runs/{self.labels.run_id}/{REQUESTS_DIR}/{self.plan.name}/{work}.json"

    def _image(self, url: str) -> np.ndarray:
        """The provider's image at ``url`` (fetched, or a data URI decoded), decoded
        defensively (``factory.core.photo_decode``)."""
        from factory.core.photo_decode import decode_photo

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
