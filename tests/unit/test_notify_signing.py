"""Webhook signatures (``factory.notify.signing``): what is signed verifies, anything changed
does not, and a timestamp outside the replay window is refused."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from factory.notify.signing import (REPLAY_WINDOW_S, SIGNATURE_HEADER, TIMESTAMP_HEADER,
                                    SignatureError, signature, signed_headers, verify)

SECRET = "s3cr3t-for-tests"
BODY = b'{"event":"committed","run_id":"r1"}'
NOW = 1_700_000_000.0


def headers(body: bytes = BODY, secret: str = SECRET, now: float = NOW) -> dict[str, str]:
    return signed_headers(secret, body, now=now)


def check(body: bytes, sent: dict[str, str], *, secret: str = SECRET, now: float = NOW,
          **kwargs) -> None:
    verify(secret, body, timestamp=sent.get(TIMESTAMP_HEADER),
           signature_header=sent.get(SIGNATURE_HEADER), now=now, **kwargs)


def flipped(text: str) -> str:
    """``text`` with its last hex digit changed."""
    return text[:-1] + ("1" if text.endswith("0") else "0")


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    sent = headers()
    assert sent[TIMESTAMP_HEADER] == "1700000000"
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sent[SIGNATURE_HEADER] == f"sha256={expected}"
    assert SECRET not in "".join(sent.values())


def test_a_signed_body_verifies() -> None:
    check(BODY, headers())
    check(BODY, headers(secret=SECRET.encode()))  # bytes and text secrets sign alike


@pytest.mark.parametrize("tamper", [
    lambda body, sent: (body + b" ", sent),  # the body changed
    lambda body, sent: (body.replace(b"r1", b"r2"), sent),
    lambda body, sent: (body, {**sent, TIMESTAMP_HEADER: str(int(NOW) - 1)}),  # timestamp
    lambda body, sent: (body, {**sent, SIGNATURE_HEADER: flipped(sent[SIGNATURE_HEADER])}),
], ids=["body-appended", "body-edited", "timestamp-edited", "signature-edited"])
def test_anything_tampered_with_does_not_verify(tamper) -> None:
    body, sent = tamper(BODY, headers())
    with pytest.raises(SignatureError, match="does not match"):
        check(body, sent)


def test_another_secret_does_not_verify() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        check(BODY, headers(secret="another"))


@pytest.mark.parametrize("age", [-REPLAY_WINDOW_S - 1, REPLAY_WINDOW_S + 1, 86_400])
def test_a_timestamp_outside_the_replay_window_is_refused(age: float) -> None:
    sent = headers(now=NOW - age)  # correctly signed, but too old (or from the future)
    with pytest.raises(SignatureError, match="replay window"):
        check(BODY, sent)


def test_the_window_is_the_receivers_choice() -> None:
    sent = headers(now=NOW - 60)
    check(BODY, sent)  # inside the default window
    with pytest.raises(SignatureError, match="replay window"):
        check(BODY, sent, window_s=30)
    check(BODY, headers(now=NOW - REPLAY_WINDOW_S))  # the window's edge is inside


@pytest.mark.parametrize("sent, message", [
    ({}, "missing"),
    ({TIMESTAMP_HEADER: "1700000000"}, "missing"),
    ({TIMESTAMP_HEADER: "17e8", SIGNATURE_HEADER: "sha256=00"}, "malformed"),
    ({TIMESTAMP_HEADER: "-1700000000", SIGNATURE_HEADER: "sha256=00"}, "malformed"),
    ({TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: "md5=00"}, "sha256="),
    ({TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: "sha256=\u00e9"}, "does not match"),
])
def test_missing_or_malformed_headers_are_refused(sent, message) -> None:
    with pytest.raises(SignatureError, match=message):
        check(BODY, sent)


def test_signature_function_matches_the_headers() -> None:
    assert signature(SECRET, "1700000000", BODY) == headers()[SIGNATURE_HEADER]
