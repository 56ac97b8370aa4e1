"""Signing a webhook's body, and checking a signature where it is received.

The signature is HMAC-SHA256 keyed with the webhook's secret over ``<timestamp>.<body>``: the
``X-Factory-Timestamp`` header (Unix seconds, ASCII digits), a dot, then the body's exact
bytes; it is sent as ``X-Factory-Signature: sha256=<hex>``. The timestamp is inside what is
signed, so a receiver that refuses old timestamps (``verify``'s replay window) refuses a
captured request replayed later; within the window, the ``X-Factory-Delivery`` id tells a
retry or a replay from a new delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Factory-Timestamp"
SIGNATURE_HEADER = "X-Factory-Signature"
EVENT_HEADER = "X-Factory-Event"
DELIVERY_HEADER = "X-Factory-Delivery"
#: How far a timestamp may be from the receiver's clock, either way: longer than a delivery's
#: deadline (``notify.deadline_s``, at most 300 s), so a retry near it still verifies.
REPLAY_WINDOW_S = 300
_PREFIX = "sha256="


class SignatureError(ValueError):
    """A request whose signature does not verify; the message says why."""


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def signature(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 with ``secret`` over ``timestamp + "." + body``."""
    message = timestamp.encode("ascii") + b"." + body
    return _PREFIX + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str | bytes, body: bytes, *, now: float | None = None
                   ) -> dict[str, str]:
    """The timestamp and signature headers of ``body``, signed at ``now`` (default: now)."""
    timestamp = str(int(time.time() if now is None else now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(secret: str | bytes, body: bytes, *, timestamp: str | None,
           signature_header: str | None, window_s: float = REPLAY_WINDOW_S,
           now: float | None = None) -> None:
    """Check a received request: its signature over ``timestamp`` and the body's raw bytes
    (before any JSON parsing), and that ``timestamp`` is within ``window_s`` of ``now``.

    Args:
        secret: the webhook's secret (the value of its ``secret_env``).
        body: the request body exactly as received.
        timestamp: the ``X-Factory-Timestamp`` header.
        signature_header: the ``X-Factory-Signature`` header.
        window_s: the replay window: an older (or later) timestamp is refused.
        now: the receiver's clock, Unix seconds (default: now).

    Raises:
        SignatureError: a header is missing or malformed, the timestamp is outside the
            window, or the signature does not match.
    """
    if not timestamp or not signature_header:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError(f"malformed {TIMESTAMP_HEADER}")
    if not signature_header.startswith(_PREFIX):
        raise SignatureError(f"{SIGNATURE_HEADER} is not {_PREFIX}<hex>")
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > window_s:
        raise SignatureError(f"timestamp is {skew:.0f} s from now, outside the {window_s:g} s "
                             "replay window")
    if not hmac.compare_digest(signature(secret, timestamp, body).encode("ascii"),
                               signature_header.encode("ascii", "replace")):
        raise SignatureError("signature does not match the body")
