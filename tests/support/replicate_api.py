"""A stand-in for Replicate's HTTP API (its predictions), on loopback, over plain HTTP.

Replicate's client reads its address from ``REPLICATE_BASE_URL`` (``http://`` is fine) and its
token from ``REPLICATE_API_TOKEN`` when a client makes its HTTP session, so a stand-in per test
module will do. ``env()`` is what points a client at it::

    api = ReplicateApiServer()
    os.environ.update(api.env())          # REPLICATE_API_TOKEN, REPLICATE_BASE_URL
    ...
    assert api.submissions() == 3

What it serves, as Replicate documents its HTTP API (``Authorization: Bearer <token>``):

- ``POST /v1/models/<owner>/<name>/predictions`` (an official model) and ``POST
  /v1/predictions`` (a body with ``version``): 201 and the prediction, ``starting``;
- ``GET /v1/predictions/<id>``: ``starting``, then ``processing``, then after ``job_s``
  ``succeeded`` with ``output`` the URL of a PNG here (a list of one URL for the endpoints in
  ``list_outputs``) and ``metrics.predict_time`` (``predict_s``; none when it is None);
- ``POST /v1/predictions/<id>/cancel``: the prediction, ``canceled``;
- ``GET /files/<id>.png`` (no token, as Replicate's file host): a gradient of the request's
  ``width`` x ``height``, or of its ``image`` input's size times its ``scale``.

And what a provider does on a bad day: ``rate_limit(n)`` answers the next ``n`` creates 429
with ``Retry-After: 1``; ``outage = True`` answers every create ``outage_status`` (500);
``unavailable(n)`` answers the next ``n`` reads of a prediction 503; an input prompt containing
``refuse`` gets 422, one containing ``slow`` never finishes, one containing ``fail`` ends
``failed``; a token other than ``token`` gets 401. It counts every request by kind
(``count``) and every accepted create (``submissions``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from tests.support.loopback_http import HOST, Handler, LoopbackServer, serve_in_foreground

TOKEN = "r8_stand-in-token"


@dataclass
class _Prediction:
    id: str
    path: str  # what was posted to
    model: str | None  # an official model's owner/name, or None: a version's prediction
    version: str | None
    input: dict
    started: float
    created_at: str
    canceled: bool = False


class _Handler(Handler):
    def _dispatch(self, method: str) -> None:
        api = self.server.owner
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = path.strip("/").split("/")
        kind = ("file" if parts[0] == "files" else "cancel" if parts[-1] == "cancel"
                else "create" if method == "POST" else "get")
        api.counted(kind)
        if kind == "file":
            self._answer(*api.file(parts[-1]))
            return
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            self._json(*_problem(401, "Unauthenticated", "Unauthenticated"))
            return
        if kind == "create" and path == "/v1/predictions":
            request = json.loads(body or b"{}")
            self._json(*api.create(path, None, request.get("version"), request.get("input")))
        elif kind == "create" and len(parts) == 5 and parts[:2] == ["v1", "models"]:
            model = f"{parts[2]}/{parts[3]}"
            self._json(*api.create(path, model, None, json.loads(body or b"{}").get("input")))
        elif kind in ("get", "cancel") and parts[:2] == ["v1", "predictions"]:
            self._json(*api.prediction(parts[2], cancel=kind == "cancel"))
        else:
            self._json(*_problem(404, "Not found", "Not found."))

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        content_type = "application/problem+json" if status >= 400 else "application/json"
        self._answer(status, json.dumps(payload).encode(), content_type, headers)


class ReplicateApiServer:
    """The stand-in, started on a free loopback port; ``stop`` ends it."""

    def __init__(self, *, token: str = TOKEN) -> None:
        self._token = token
        self._lock = threading.Lock()
        self._predictions: dict[str, _Prediction] = {}
        self._requests: dict[str, int] = {}
        self.reset()
        self._server = LoopbackServer((HOST, 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self, *, token: str | None = None) -> dict[str, str]:
        """The variables that point Replicate's client at this server (``token``: another)."""
        return {"REPLICATE_API_TOKEN": self.token if token is None else token,
                "REPLICATE_BASE_URL": self.base_url}

    def reset(self) -> None:
        """Forget predictions and counts; back to good behaviour (``list_outputs``: the
        endpoints, ``owner/name`` or a version, whose output is a list of URLs)."""
        with self._lock:
            self._predictions.clear()
            self._requests.clear()
            self._to_rate_limit = self._to_refuse_reads = self.rate_limited = 0
        self.outage, self.outage_status, self.token = False, 500, self._token
        self.job_s, self.predict_s = 0.0, 0.5
        self.list_outputs: set[str] = set()

    def rate_limit(self, n: int) -> None:
        """Answer the next ``n`` creates 429 with ``Retry-After: 1``."""
        with self._lock:
            self._to_rate_limit = n

    def unavailable(self, n: int) -> None:
        """Answer the next ``n`` reads of a prediction 503."""
        with self._lock:
            self._to_refuse_reads = n

    # what the handler calls
    def counted(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] = self._requests.get(kind, 0) + 1

    def create(self, path: str, model: str | None, version: str | None,
               arguments: dict | None) -> tuple[int, dict, dict]:
        arguments = arguments or {}
        with self._lock:
            if self._to_rate_limit > 0:
                self._to_rate_limit -= 1
                self.rate_limited += 1
                return (*_problem(429, "Request was throttled.", "Request was throttled. "
                                  "Expected available in 1 second."), {"Retry-After": "1"})
            if self.outage:
                return (*_problem(self.outage_status, "Internal Server Error",
                                  "Internal server error"), {})
            if not model and not version:
                return (*_problem(422, "Invalid version or not permitted",
                                  "The specified version does not exist"), {})
            if "refuse" in str(arguments.get("prompt", "")):
                refused = "refused by the content policy"
                return (*_problem(422, "Input validation failed", f"- input.prompt: {refused}",
                                  invalid_fields=[{"type": "content_policy",
                                                   "field": "input.prompt",
                                                   "description": refused}]), {})
            job = _Prediction(base64.b32encode(uuid.uuid4().bytes).decode().lower().rstrip("="),
                              path, model, version, arguments, time.monotonic(), _now())
            self._predictions[job.id] = job
        return 201, self._body(job, "starting"), {}

    def prediction(self, prediction_id: str, *, cancel: bool) -> tuple[int, dict, dict]:
        with self._lock:
            job = self._predictions.get(prediction_id)
            if not cancel and self._to_refuse_reads > 0:
                self._to_refuse_reads -= 1
                return (*_problem(503, "Service Unavailable", "Service Unavailable"), {})
        if job is None:
            return (*_problem(404, "Not found", "Not found."), {})
        status = self._status(job)
        if cancel and status in ("starting", "processing"):
            job.canceled, status = True, "canceled"
        return 200, self._body(job, status), {}

    def _status(self, job: _Prediction) -> str:
        prompt, elapsed = str(job.input.get("prompt", "")), time.monotonic() - job.started
        if job.canceled:
            return "canceled"
        if "slow" in prompt or elapsed < self.job_s:
            return "starting" if elapsed < self.job_s / 2 else "processing"
        return "failed" if "fail" in prompt else "succeeded"

    def _body(self, job: _Prediction, status: str) -> dict:
        url = f"{self.base_url}/v1/predictions/{job.id}"
        model = job.model or "stand-in/versioned"  # Replicate names a version's model
        version = job.version or hashlib.sha256(model.encode()).hexdigest()
        body = {"id": job.id, "model": model, "version": version, "input": job.input,
                "status": status, "output": None, "error": None, "logs": "",
                "metrics": {}, "created_at": job.created_at, "started_at": None,
                "completed_at": None, "data_removed": False, "source": "api",
                "urls": {"get": url, "cancel": f"{url}/cancel"}}
        if status in ("processing", "succeeded", "failed", "canceled"):
            body["started_at"] = job.created_at
        if status in ("succeeded", "failed", "canceled"):
            body["completed_at"] = _now()
        if status == "succeeded":
            image = f"{self.base_url}/files/{job.id}.png"
            body["output"] = ([image] if (job.model or job.version) in self.list_outputs
                              else image)
            body["logs"] = "Generated 1 image\n"
            if self.predict_s is not None:
                body["metrics"] = {"predict_time": self.predict_s}
        elif status == "failed":
            body["error"] = "stand-in model failure: CUDA out of memory"
        return body

    def file(self, name: str) -> tuple[int, bytes, str]:
        with self._lock:
            job = self._predictions.get(name.removesuffix(".png"))
        if job is None:
            return 404, b"no such file", "text/plain"
        return 200, _png(job.input), "image/png"

    # what tests read
    def count(self, kind: str | None = None) -> int:
        """Requests received of one kind (``create``, ``get``, ``cancel``, ``file``; refused
        and rate-limited ones too), or all."""
        with self._lock:
            return sum(n for k, n in self._requests.items() if kind in (None, k))

    def submissions(self, prompt: str | None = None) -> int:
        """Creates accepted (each one a prediction paid for), or those of one prompt."""
        with self._lock:
            return sum(1 for p in self._predictions.values()
                       if prompt in (None, p.input.get("prompt")))

    def arguments_of(self, prediction_id: str) -> dict | None:
        """The input prediction ``prediction_id`` was created with (None: never accepted)."""
        with self._lock:
            job = self._predictions.get(prediction_id)
            return dict(job.input) if job is not None else None

    def created(self, prediction_id: str) -> dict | None:
        """How a prediction was created: the ``path`` posted to and the body's ``version``
        (None for an official model's; the whole answer None: never accepted here)."""
        with self._lock:
            job = self._predictions.get(prediction_id)
            return None if job is None else {"path": job.path, "version": job.version}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReplicateApiServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_SHARED: list[ReplicateApiServer] = []


def shared() -> ReplicateApiServer:
    """This process's stand-in, started on first use and kept (each test calls ``reset``
    first): for suites that exercise every hosted card, as ``hosted_api.shared`` is."""
    if not _SHARED:
        _SHARED.append(ReplicateApiServer())
    return _SHARED[0]


def _problem(status: int, title: str, detail: str, **extra: object) -> tuple[int, dict]:
    """An error as Replicate answers one (RFC 7807 problem details)."""
    return status, {"title": title, "detail": detail, "status": status, **extra}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _png(arguments: dict) -> bytes:
    """A gradient: ``width`` x ``height``, or the ``image`` input's size times ``scale``
    (64 x 64 when neither is given); its blue channel is the ``seed``."""
    import numpy as np
    from PIL import Image

    if arguments.get("image"):
        w, h = _input_size(arguments["image"])
        scale = float(arguments.get("scale") or 1)
        w, h = round(w * scale), round(h * scale)
    else:
        w, h = int(arguments.get("width") or 64), int(arguments.get("height") or 64)
    yy, xx = np.mgrid[:h, :w]
    rgb = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                    np.full((h, w), int(arguments.get("seed") or 0) % 256)],
                   axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _input_size(uri: str) -> tuple[int, int]:
    """The width and height of a data URI's image (64 x 64 for any other URL)."""
    if not uri.startswith("data:"):
        return 64, 64
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        return image.width, image.height


def main() -> None:
    """``python -m tests.support.replicate_api``: a stand-in in the foreground, for trying a job
    with a Replicate stage by hand; it prints the variables to export (``--print-env``: only
    those, as ``NAME=value`` lines), then serves until Ctrl-C."""
    serve_in_foreground(ReplicateApiServer, "replicate",
                        lambda api: api.env()["REPLICATE_BASE_URL"], main.__doc__)


if __name__ == "__main__":
    main()
