"""Delivering a run's events to its webhooks: signed POSTs, retried by urllib3, bounded in time.

Each webhook's URL is checked as a photo URL is (``factory.store.photo_fetch.check_url``): the
host is resolved once, every address it resolves to must be public unless the host is named
in the webhook's ``allow_private``, and the connection goes to the address that was checked.
Retries are urllib3's ``Retry`` (connect errors, 429 and 5xx answers; POST allowed; backoff;
``Retry-After`` honoured), bounded by one deadline shared by every delivery of one run's end
(``DeadlineRetry``). Redirects are not followed. Webhooks are served side by side, each one's
events in order, so a slow receiver costs the others nothing.

Nothing here raises: a delivery that fails (refused host, receiver down, a 4xx, retries spent,
the deadline reached) is logged and returned as a ``Notification`` with its reason.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from urllib3.exceptions import (ConnectTimeoutError, HTTPError, MaxRetryError, NewConnectionError,
                                ReadTimeoutError, SSLError)
from urllib3.util import Timeout

from factory.core.photo_decode import PhotoError
from factory.notify.body import encode
from factory.notify.signing import DELIVERY_HEADER, EVENT_HEADER, signed_headers
from factory.spec.notify import NotifyConfig, Webhook
from factory.store.photo_fetch import DeadlineRetry, FetchPolicy, check_url, open_pool

log = logging.getLogger(__name__)

USER_AGENT = "asset-factory/0.1 (run notifications)"
RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Notification:
    """One event's delivery to one webhook.

    Attributes:
        host: the webhook's host (and port); never its path or query.
        event: the event sent.
        status: the receiver's last HTTP status; None when none answered.
        error: why it was not delivered; "" when the receiver answered 2xx.
    """

    host: str
    event: str
    status: int | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        """The receiver answered 2xx."""
        return not self.error

    def line(self) -> str:
        """``hooks.example.com committed: 200`` or ``... committed: not delivered (why)``."""
        said = f"{self.status}" if self.delivered else f"not delivered ({self.error})"
        return f"{self.host} {self.event}: {said}"


class Notifier:
    """Sends events to a job's webhooks (``NotifyConfig``), each signed with its secret.

    Args:
        config: the webhooks, retries, backoff and deadline.
        secrets: each ``secret_env``'s value by variable name (``NotifyConfig.secrets``).
    """

    def __init__(self, config: NotifyConfig, secrets: Mapping[str, str]) -> None:
        self.config = config
        self._secrets = dict(secrets)

    def __repr__(self) -> str:  # never the secrets
        return f"Notifier({len(self.config.webhooks)} webhooks)"

    def send(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[Notification, ...]:
        """Each ``(event, body)`` to every webhook that asked for it, within one deadline
        (``deadline_s`` from now; an attempt under way then may take its ``timeout_s`` more).
        Returns each delivery's outcome, webhook by webhook, events in order."""
        deadline = time.monotonic() + self.config.deadline_s
        plan = [(hook, [(e, b) for e, b in events if e in hook.events])
                for hook in self.config.webhooks]
        plan = [(hook, todo) for hook, todo in plan if todo]
        if not plan:
            return ()
        with ThreadPoolExecutor(max_workers=len(plan),
                                thread_name_prefix="factory-notify") as pool:
            futures = [pool.submit(self._deliver_all, hook, todo, deadline)
                       for hook, todo in plan]
            return tuple(n for future in futures for n in future.result())

    def _deliver_all(self, hook: Webhook, todo: list[tuple[str, Mapping[str, Any]]],
                     deadline: float) -> list[Notification]:
        out = []
        for event, body in todo:
            try:
                note = self._deliver(hook, event, encode(body), deadline)
            except Exception as exc:  # noqa: BLE001 - a notification never stops the run
                note = Notification(hook.host, event, error=f"{type(exc).__name__}: {exc}")
            if note.delivered:
                log.info("webhook %s: %s delivered (%s)", hook.host, event, note.status)
            else:
                log.warning("webhook %s: %s not delivered: %s", hook.host, event, note.error)
            out.append(note)
        return out

    def _deliver(self, hook: Webhook, event: str, body: bytes, deadline: float) -> Notification:
        config = self.config
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Notification(hook.host, event, error=f"not sent: the {config.deadline_s:g} s "
                                                        "deadline had passed")
        try:
            target = check_url(hook.url, FetchPolicy(allow_private=hook.allow_private))
        except PhotoError as exc:
            return Notification(hook.host, event, error=exc.reason)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Host": target.host_header, EVENT_HEADER: event,
                   DELIVERY_HEADER: uuid.uuid4().hex,
                   **signed_headers(self._secrets[hook.secret_env], body)}
        retry = DeadlineRetry(
            total=config.retries, status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"POST"}), backoff_factor=config.backoff_s,
            backoff_max=config.deadline_s, respect_retry_after_header=True,
            raise_on_status=False, redirect=False)
        retry.deadline = deadline
        attempt_s = min(hook.timeout_s, remaining)
        pool = open_pool(target, maxsize=1)
        try:
            response = pool.urlopen(
                "POST", target.path, body=body, headers=headers, retries=retry,
                redirect=False, assert_same_host=False, preload_content=False,
                timeout=Timeout(connect=attempt_s, read=attempt_s))
            status = response.status
            attempts = len(response.retries.history) + 1 if response.retries else 1
            response.close()  # the answer's body is not needed, nor read
        except MaxRetryError as exc:
            return Notification(hook.host, event, error=_explain(exc.reason or exc, hook))
        except HTTPError as exc:
            return Notification(hook.host, event, error=_explain(exc, hook))
        except ValueError as exc:  # http.client refusing a header or path it cannot send
            return Notification(hook.host, event, error=f"cannot send: {exc}")
        finally:
            pool.close()
        if 200 <= status < 300:
            return Notification(hook.host, event, status)
        if 300 <= status < 400:
            why = f"HTTP {status}: redirects are not followed"
        elif status in RETRY_STATUSES:
            why = f"HTTP {status} after {attempts} attempt{'s' if attempts > 1 else ''}"
            if time.monotonic() >= deadline:
                why += f", at the {config.deadline_s:g} s deadline"
        else:
            why = f"HTTP {status} (not retried)"
        return Notification(hook.host, event, status, why)


def _explain(exc: BaseException, hook: Webhook) -> str:
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: a subclass
        return f"cannot connect to {hook.host}"
    if isinstance(exc, ConnectTimeoutError):
        return f"timed out connecting to {hook.host}"
    if isinstance(exc, ReadTimeoutError):
        return f"timed out after {hook.timeout_s:g} s waiting for {hook.host}'s answer"
    if isinstance(exc, SSLError):
        return f"TLS failed with {hook.host}: {exc}"
    return f"{type(exc).__name__}: {exc}"
