"""Delivering a run's events (``factory.notify.delivery``, ``factory.run.notified``) to a
loopback receiver (``tests.support.webhook_receiver``): signed POSTs, urllib3's retries, the
photo fetcher's address rules, and a run that stays committed whatever the receiver does."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import replace

import pytest

from factory.notify.delivery import Notification, Notifier
from factory.notify.signing import (DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
                                    TIMESTAMP_HEADER, SignatureError, verify)
from factory.run.notified import run_notified
from factory.run.recorder import Counts
from factory.run.result import RunResult
from factory.spec.job import parse_job
from factory.spec.notify import EVENTS, NotifyConfig, NotifySecretMissing, Webhook
from tests.support.webhook_receiver import WebhookReceiver, down_url

VARIABLE = "FACTORY_TEST_WEBHOOK_SECRET"
SECRET = "wh-test-secret-0123"
LOCAL = ("127.0.0.1",)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> list[tuple]:
    """Every connection is recorded; one that is not to loopback fails the test."""
    connects: list[tuple] = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        connects.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a test tried to connect to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv(VARIABLE, SECRET)
    return connects


@pytest.fixture
def receiver():
    with WebhookReceiver() as running:
        yield running


def config(*urls: str, events: tuple[str, ...] = EVENTS, allow_private=LOCAL, retries: int = 2,
           deadline_s: float = 10.0, timeout_s: float = 5.0) -> NotifyConfig:
    return NotifyConfig(
        webhooks=tuple(Webhook(url=u, events=events, secret_env=VARIABLE,
                               allow_private=allow_private, timeout_s=timeout_s) for u in urls),
        retries=retries, backoff_s=0.01, deadline_s=deadline_s)


def notifier(*urls: str, **kwargs) -> Notifier:
    return Notifier(config(*urls, **kwargs), {VARIABLE: SECRET})


def body(event: str) -> dict:
    return {"event": event, "run_id": "r1", "job": "spring"}


def verified(request) -> dict:
    verify(SECRET, request.body, timestamp=request.headers[TIMESTAMP_HEADER.lower()],
           signature_header=request.headers[SIGNATURE_HEADER.lower()])
    return json.loads(request.body)


def job(notify: NotifyConfig | None):
    base = parse_job({"name": "spring", "manifest": {"uri": "a.csv"}, "output": {"uri": "out"},
                      "run_id": "spring-r1", "prompt": {"template": "a {{ title }}"},
                      "stages": [{"kind": "generate", "model": "synthetic"}]})
    return replace(base, notify=notify)


def result(**changes) -> RunResult:
    return replace(RunResult(run_id="spring-r1", manifest_rows=5,
                             counts=Counts(assets=4, written=4, rejected=1), wall_s=1.0,
                             output_uri="out", lineage_path="out/runs/spring-r1/lineage.parquet",
                             rejects_path="out/runs/spring-r1/rejects.parquet"), **changes)


# -- one signed POST per event ----------------------------------------------------------

def test_each_event_is_one_signed_post_that_verifies(receiver) -> None:
    sent = notifier(receiver.url()).send([(e, body(e)) for e in EVENTS])
    host = f"127.0.0.1:{receiver.port}"
    assert sent == tuple(Notification(host, e, 200) for e in EVENTS)
    assert [r.path for r in receiver.requests] == ["/hook"] * 4
    for event, request in zip(EVENTS, receiver.requests):
        assert request.method == "POST"
        assert request.headers[EVENT_HEADER.lower()] == event
        assert request.headers["content-type"] == "application/json"
        assert verified(request) == body(event)
        assert SECRET not in request.body.decode() and SECRET not in str(request.headers)
    ids = {r.headers[DELIVERY_HEADER.lower()] for r in receiver.requests}
    assert len(ids) == 4  # a delivery id per event
    with pytest.raises(SignatureError):  # another secret does not verify what was sent
        verify("other", receiver.requests[0].body,
               timestamp=receiver.requests[0].headers[TIMESTAMP_HEADER.lower()],
               signature_header=receiver.requests[0].headers[SIGNATURE_HEADER.lower()])


def test_a_webhook_gets_only_the_events_it_asked_for(receiver) -> None:
    sent = notifier(receiver.url(), events=("failed", "review")).send(
        [(e, body(e)) for e in ("committed", "review")])
    assert [n.event for n in sent] == ["review"]
    assert [r.headers[EVENT_HEADER.lower()] for r in receiver.requests] == ["review"]


# -- retries: urllib3's Retry ---------------------------------------------------------------

def test_a_500_then_200_is_retried_once() -> None:
    with WebhookReceiver(statuses=[500, 200]) as receiver:
        (sent,) = notifier(receiver.url()).send([("committed", body("committed"))])
    assert sent.delivered and sent.status == 200
    assert [r.status for r in receiver.requests] == [500, 200]  # exactly two requests
    first, second = receiver.requests
    assert first.body == second.body and verified(second) == body("committed")
    assert first.headers[DELIVERY_HEADER.lower()] == second.headers[DELIVERY_HEADER.lower()]


def test_a_receiver_that_keeps_failing_is_tried_retries_plus_one_times() -> None:
    with WebhookReceiver(default=503) as receiver:
        (sent,) = notifier(receiver.url(), retries=2).send([("committed", body("committed"))])
    assert len(receiver.requests) == 3
    assert not sent.delivered and sent.status == 503
    assert sent.error == "HTTP 503 after 3 attempts"


@pytest.mark.parametrize("status", [400, 401, 404])
def test_a_4xx_is_not_retried(status: int) -> None:
    with WebhookReceiver(default=status) as receiver:
        (sent,) = notifier(receiver.url()).send([("committed", body("committed"))])
    assert len(receiver.requests) == 1
    assert (sent.status, sent.error) == (status, f"HTTP {status} (not retried)")


def test_a_redirect_is_not_followed() -> None:
    with WebhookReceiver(default=302, headers={"Location": "http://10.0.0.1/"}) as receiver:
        (sent,) = notifier(receiver.url()).send([("committed", body("committed"))])
    assert len(receiver.requests) == 1
    assert sent.error == "HTTP 302: redirects are not followed"


def test_the_deadline_bounds_a_receiver_that_asks_to_wait() -> None:
    with WebhookReceiver(default=503, headers={"Retry-After": "60"}) as receiver:
        started = time.monotonic()
        sent = notifier(receiver.url(), retries=5, deadline_s=0.5).send(
            [(e, body(e)) for e in ("committed", "review")])
        took = time.monotonic() - started
    assert took < 5, took  # not the 60 s Retry-After asked for, per attempt
    assert [n.delivered for n in sent] == [False, False]
    assert sent[0].error.startswith("HTTP 503 after ") and sent[0].error.endswith(
        "at the 0.5 s deadline")
    assert sent[1].error == "not sent: the 0.5 s deadline had passed"
    assert len(receiver.requests) <= 3


# -- where a webhook may connect: the photo fetcher's rules -------------------------------

@pytest.mark.parametrize("url, expected", [
    ("http://10.0.0.1/hook", "refused: 10.0.0.1 is a private address"),
    ("http://169.254.169.254/latest/", "refused: 169.254.169.254 is a link-local address"),
    ("http://[::1]:9/hook", "refused: ::1 is a loopback address"),
])
def test_a_private_address_is_refused_without_allow(url, expected, loopback_only) -> None:
    (sent,) = notifier(url, allow_private=()).send([("committed", body("committed"))])
    assert sent.error.startswith(expected) and "allow_private" in sent.error
    assert sent.status is None and loopback_only == []  # no connection at all


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch, loopback_only) -> None:
    def getaddrinfo(host, port, *args, **kwargs):
        assert host == "hooks.internal.test"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    (sent,) = notifier("https://hooks.internal.test/h", allow_private=()).send(
        [("committed", body("committed"))])
    assert sent.error.startswith("refused: hooks.internal.test resolves to 10.1.2.3, a private")
    assert loopback_only == []


def test_loopback_needs_allow_private(receiver) -> None:
    (refused,) = notifier(receiver.url(), allow_private=()).send(
        [("committed", body("committed"))])
    assert refused.error.startswith("refused: 127.0.0.1 is a loopback address")
    assert receiver.requests == []
    (sent,) = notifier(receiver.url()).send([("committed", body("committed"))])
    assert sent.delivered and len(receiver.requests) == 1


# -- the run: never blocked or failed by its notifications --------------------------------

def test_a_committed_run_notifies_after_it_ran_and_records_it(receiver) -> None:
    order = []

    def run() -> RunResult:
        order.append(len(receiver.requests))  # nothing was sent before the run ended
        return result(qa={"review": 2, "retries": 3, "retry_usd": 0.0})

    got = run_notified(job(config(receiver.url())), run)
    assert order == [0]
    assert [n.event for n in got.notifications] == ["committed", "review"]
    assert all(n.delivered for n in got.notifications)
    bodies = [verified(r) for r in receiver.requests]
    assert [b["event"] for b in bodies] == ["committed", "review"]
    assert bodies[0]["counts"]["assets"] == 4 and bodies[0]["run_id"] == "spring-r1"


def test_a_receiver_that_is_down_does_not_fail_the_run() -> None:
    url = down_url()
    got = run_notified(job(config(url, retries=1)), lambda: result())
    assert got.counts.assets == 4 and not got.already_committed  # the run's own result
    (note,) = got.notifications
    assert note.event == "committed" and not note.delivered and note.status is None
    assert note.error.startswith("cannot connect to 127.0.0.1:")


def test_a_down_receiver_costs_another_webhook_nothing(receiver) -> None:
    got = run_notified(job(config(down_url(), receiver.url(), retries=1)), lambda: result())
    assert [n.delivered for n in got.notifications] == [False, True]
    assert len(receiver.requests) == 1


def test_an_already_committed_run_sends_nothing(receiver) -> None:
    got = run_notified(job(config(receiver.url())), lambda: result(already_committed=True))
    assert got.notifications == () and receiver.requests == []


def test_a_failed_run_sends_failed_then_raises_again(receiver) -> None:
    def run() -> RunResult:
        raise RuntimeError("ray task failed\nStorageError: bucket gone")

    with pytest.raises(RuntimeError, match="bucket gone"):
        run_notified(job(config(receiver.url())), run)
    (request,) = receiver.requests
    sent = verified(request)
    assert sent["event"] == "failed" and sent["run_id"] == "spring-r1"
    assert sent["error"] == "RuntimeError: StorageError: bucket gone"


def test_a_failed_run_whose_receiver_is_down_raises_its_own_error() -> None:
    def run() -> RunResult:
        raise ValueError("the run's own error")

    with pytest.raises(ValueError, match="the run's own error"):
        run_notified(job(config(down_url(), retries=0)), run)


def test_a_missing_secret_stops_the_run_before_it_starts(monkeypatch, receiver) -> None:
    monkeypatch.delenv(VARIABLE)
    ran = []
    with pytest.raises(NotifySecretMissing, match=VARIABLE):
        run_notified(job(config(receiver.url())), lambda: ran.append(1) or result())
    assert ran == [] and receiver.requests == []


def test_a_job_without_notify_just_runs(receiver) -> None:
    assert run_notified(job(None), lambda: result()) == result()
