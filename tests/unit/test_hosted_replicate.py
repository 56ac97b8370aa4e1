"""Replicate's provider client (``stages.hosted_replicate.ReplicateQueue``) through Replicate's
own client against a loopback stand-in of its HTTP API (``tests/support/replicate_api.py``):
inputs, outputs, 429s, outages, keys, refusals, timeouts and lost predictions. No Ray."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from replicate.exceptions import ReplicateError

from stages.hosted_base import HostedAuthError
from stages.hosted_replicate import ReplicateQueue
from tests.support.replicate_api import ReplicateApiServer

MODEL = "black-forest-labs/flux-schnell"


@pytest.fixture(scope="module")
def server():
    with ReplicateApiServer() as api:
        yield api


@pytest.fixture
def api(server, monkeypatch):
    server.reset()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.reset()


def queue() -> ReplicateQueue:
    """A client made now, from the environment as it is (each test sets it first)."""
    return ReplicateQueue(http_timeout_s=10.0)


def run(client: ReplicateQueue, request: dict, endpoint: str = MODEL, *,
        timeout_s: float = 10.0) -> tuple[str, str, dict]:
    """The prediction's id, and what ``wait`` answered for it."""
    request_id = client.submit(endpoint, client.arguments(request))
    url, metrics = client.wait(endpoint, request_id, timeout_s=timeout_s, interval_s=0.02)
    return request_id, url, metrics


def download(url: str) -> np.ndarray:
    response = httpx.get(url)  # no token: Replicate's file host takes none
    response.raise_for_status()
    with Image.open(io.BytesIO(response.content)) as image:
        return np.asarray(image.convert("RGB"))


def data_uri(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def test_arguments_keep_names_drop_nones_and_ask_for_a_custom_aspect_ratio():
    client = ReplicateQueue.__new__(ReplicateQueue)  # arguments() needs no HTTP session
    assert client.arguments({"prompt": "a mug", "seed": 7, "width": 96, "height": 64,
                             "output_format": "png", "image": None}) == {
        "prompt": "a mug", "seed": 7, "width": 96, "height": 64, "output_format": "png",
        "aspect_ratio": "custom"}
    image = data_uri(4, 4)
    assert client.arguments({"prompt": None, "image": image, "scale": 2}) == {
        "image": image, "scale": 2}  # no size asked: no aspect ratio


@pytest.mark.parametrize("lists", [True, False], ids=["list-output", "string-output"])
def test_a_text_request_comes_back_at_its_size_with_its_predict_time(api, lists):
    api.job_s, api.predict_s = 0.2, 0.75
    if lists:
        api.list_outputs.add(MODEL)  # flux-schnell answers a list of URLs
    request_id, url, metrics = run(queue(), {"prompt": "a red mug", "seed": 9,
                                             "width": 96, "height": 64})
    assert isinstance(url, str) and url.endswith(f"/files/{request_id}.png")
    image = download(url)
    assert image.shape == (64, 96, 3) and int(image[0, 0, 2]) == 9  # the row's own seed
    assert metrics == {"inference_time": 0.75}
    assert api.arguments_of(request_id)["aspect_ratio"] == "custom"
    assert api.created(request_id) == {"path": f"/v1/models/{MODEL}/predictions",
                                       "version": None}
    assert api.count("get") > 1  # polled through starting/processing, not given up on
    assert api.submissions() == 1


def test_an_image_request_comes_back_at_its_input_size_times_scale(api):
    api.predict_s = None  # a prediction without predict_time bills nothing measured
    request_id, url, metrics = run(queue(), {"image": data_uri(40, 30), "scale": 2},
                                   "nightmareai/real-esrgan")
    assert download(url).shape == (60, 80, 3)
    assert api.arguments_of(request_id)["image"].startswith("data:image/png;base64,")
    assert metrics == {"inference_time": 0.0}


def test_a_429_storm_on_create_waits_as_asked_and_is_accepted_once(api):
    api.rate_limit(3)  # each answered with Retry-After: 1
    client = queue()
    started = time.monotonic()
    request_id = client.submit(MODEL, client.arguments({"prompt": "a lamp"}))
    took = time.monotonic() - started
    assert api.rate_limited == 3 and api.count("create") == 4
    assert api.submissions() == 1 and api.arguments_of(request_id) == {"prompt": "a lamp"}
    # 3 waits of a second, as Replicate asked (the backoff alone: 0.1 + 0.2 + 0.4 s)
    assert 3.0 <= took < 15


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_on_create_is_an_outage_and_not_sent_again(api, status):
    api.outage, api.outage_status = True, status
    client = queue()
    with pytest.raises(ReplicateError) as caught:
        client.submit(MODEL, client.arguments({"prompt": "a vase"}))
    assert caught.value.status == status
    assert api.count("create") == 1  # it may have been accepted: never paid twice
    outcome = client.classify(caught.value)
    assert outcome.outage and outcome.error is caught.value


def test_a_connection_refused_is_an_outage(api, monkeypatch):
    import socket

    from tests.support.replicate_api import HOST

    with socket.socket() as free:  # a port nothing listens on
        free.bind((HOST, 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("REPLICATE_BASE_URL", f"http://{HOST}:{port}")
    client = queue()
    with pytest.raises(httpx.TransportError) as caught:
        client.submit(MODEL, {"prompt": "a vase"})
    assert client.classify(caught.value).outage


def test_reads_of_a_prediction_keep_the_clients_retries_of_a_503(api):
    client = queue()
    request_id = client.submit(MODEL, {"prompt": "a lamp"})
    api.unavailable(2)
    url, _ = client.wait(MODEL, request_id, timeout_s=10, interval_s=0.02)
    assert url.endswith(f"{request_id}.png") and api.count("get") == 3


def test_a_refused_token_is_the_keys_fault_naming_the_variable(api, monkeypatch):
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_not-the-token")
    client = queue()
    with pytest.raises(ReplicateError) as caught:
        client.submit(MODEL, {"prompt": "a mug"})
    outcome = client.classify(caught.value)
    assert isinstance(outcome.error, HostedAuthError) and not outcome.outage
    assert "replicate refused the API key (401): set REPLICATE_API_TOKEN" in str(outcome.error)
    assert api.count("create") == 1 and api.submissions() == 0


def test_no_token_at_all_names_the_variable(api, monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN")
    client = queue()
    with pytest.raises(ReplicateError) as caught:
        client.submit(MODEL, {"prompt": "a mug"})
    error = client.classify(caught.value).error
    assert isinstance(error, HostedAuthError)
    assert "replicate: no API key: set REPLICATE_API_TOKEN" in str(error)


def test_a_refused_input_is_the_rows_own_failure(api):
    client = queue()
    with pytest.raises(ReplicateError) as caught:
        client.submit(MODEL, {"prompt": "refuse this one"})
    assert caught.value.status == 422 and "input.prompt" in str(caught.value)
    outcome = client.classify(caught.value)
    assert outcome.error is caught.value and not outcome.outage
    assert not client.not_found(caught.value)
    assert api.count("create") == 1 and api.submissions() == 0


def test_a_failed_prediction_is_the_rows_own_failure_naming_its_error(api):
    client = queue()
    request_id = client.submit(MODEL, {"prompt": "a mug that will fail"})
    with pytest.raises(RuntimeError,
                       match=f"request {request_id} failed: .*out of memory") as caught:
        client.wait(MODEL, request_id, timeout_s=10, interval_s=0.02)
    outcome = client.classify(caught.value)
    assert outcome.error is caught.value and not outcome.outage


def test_a_prediction_past_its_timeout_is_cancelled(api):
    client = queue()
    request_id = client.submit(MODEL, {"prompt": "a slow mug"})
    started = time.monotonic()
    with pytest.raises(TimeoutError,
                       match=f"request {request_id} unfinished after 0.3 s; cancelled"):
        client.wait(MODEL, request_id, timeout_s=0.3, interval_s=0.05)
    assert 0.3 <= time.monotonic() - started < 5
    assert api.count("cancel") == 1
    assert client.client.predictions.get(request_id).status == "canceled"


def test_an_unknown_prediction_is_not_found(api):
    client = queue()
    with pytest.raises(ReplicateError) as caught:
        client.wait(MODEL, "nosuchprediction", timeout_s=1, interval_s=0.02)
    assert client.not_found(caught.value) and caught.value.status == 404
    assert not client.classify(caught.value).outage
    assert not client.not_found(ReplicateError(status=500))
    assert not client.not_found(TimeoutError("request x unfinished"))


def test_a_versioned_endpoint_creates_through_predictions_with_its_version(api):
    version = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
    api.list_outputs.add(version)
    request_id, url, _ = run(queue(), {"prompt": "a lamp", "width": 64, "height": 48},
                             f"acme/upscaler:{version}")
    assert api.created(request_id) == {"path": "/v1/predictions", "version": version}
    assert download(url).shape == (48, 64, 3)
