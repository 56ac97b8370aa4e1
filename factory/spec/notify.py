"""``notify:``: webhooks told when a run ends, each signed with a secret the spec only names.

``notify:`` in a job spec (checked before Ray starts; ``resolve_notify``)::

    notify:
      webhooks:
        - url: https://hooks.example.com/factory
          events: [committed, failed, budget_exhausted, review]   # default: all four
          secret_env: FACTORY_WEBHOOK_SECRET   # the NAME of the variable holding the secret
          allow_private: []                    # hosts that may resolve to private addresses
      retries: 3          # urllib3 retries per delivery (connect errors, 429 and 5xx answers)
      backoff_s: 0.5      # urllib3's backoff factor; Retry-After is honoured up to the deadline
      deadline_s: 30      # every delivery of one run's end, retries and waits included

The secret never appears in the spec, the lineage, the logs or a request's body: the spec
holds the variable's name, and its value is read on the driver when the run starts
(``NotifyConfig.secrets``); a variable that is not set stops the run before any work,
naming the variable. A ``secret:`` key, or a ``secret_env`` that is no variable's name, is a
spec error, and errors in ``notify:`` never quote the values they refuse (a secret pasted in
the wrong place stays off the terminal). The events and the delivery: ``factory.notify``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from factory.core import settings
from factory.core.strict import Strict

#: The events, in the order one run's end sends them.
EVENTS = ("committed", "failed", "budget_exhausted", "review")
Event = Literal["committed", "failed", "budget_exhausted", "review"]
#: An environment variable's name, upper case as such names are (a secret pasted into
#: ``secret_env`` rarely looks like one).
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
#: Keys that would put a secret into the spec itself.
_SECRET_KEYS = ("secret", "signing_secret", "token", "password", "key")
MAX_WEBHOOKS = 16


class NotifySecretMissing(ValueError):
    """A webhook's ``secret_env`` names a variable that is not set where the run starts."""


class WebhookSpec(Strict):
    """One receiver: its URL, the events it wants and the variable holding its secret."""

    url: str = Field(min_length=1, max_length=2048)
    events: tuple[Event, ...] = Field(EVENTS, min_length=1)
    secret_env: str
    #: Hosts, by name or literal IP as written in the URL, that may resolve to loopback,
    #: private, link-local or reserved addresses (``factory.store.photo_fetch``'s rule).
    allow_private: tuple[str, ...] = ()
    #: Per attempt: the connection, and each read of the answer.
    timeout_s: float = Field(10.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _no_secret_here(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _SECRET_KEYS:
                if key in data:
                    raise PydanticCustomError("secret_in_spec", (
                        f"'{key}': a secret never goes in the spec; put it in an environment "
                        "variable and name that variable in secret_env"))
        return data

    @field_validator("secret_env")
    @classmethod
    def _a_variable_name(cls, value: str) -> str:
        if not _ENV_NAME.fullmatch(value):
            # not quoted back: it may be the secret itself, pasted in the wrong place
            raise PydanticCustomError("secret_in_spec", (
                "must be the name of an environment variable (upper-case letters, digits and "
                "underscores, like FACTORY_WEBHOOK_SECRET) that holds the secret, never the "
                "secret itself"))
        return value


class NotifySpec(Strict):
    """``notify:``: the webhooks, and the retry policy and deadline all deliveries share."""

    #: At least one (``resolve_notify``: pydantic's own length check would also fire, less
    #: clearly, whenever one webhook is refused).
    webhooks: tuple[WebhookSpec, ...] = Field(max_length=MAX_WEBHOOKS)
    retries: int = Field(3, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0, le=10)
    deadline_s: float = Field(30.0, gt=0, le=300)


@dataclass(frozen=True)
class Webhook:
    """A validated receiver (``WebhookSpec``)."""

    url: str
    events: tuple[str, ...]
    secret_env: str
    allow_private: tuple[str, ...] = ()
    timeout_s: float = 10.0

    @property
    def host(self) -> str:
        """The URL's host (and port): what logs and results name, never the path or query,
        which may carry a token of the receiver's."""
        return urlsplit(self.url).netloc.rpartition("@")[2]


@dataclass(frozen=True)
class NotifyConfig:
    """A job's webhooks and their delivery bounds, frozen (``resolve_notify``)."""

    webhooks: tuple[Webhook, ...]
    retries: int = 3
    backoff_s: float = 0.5
    deadline_s: float = 30.0

    def wanting(self, event: str) -> tuple[Webhook, ...]:
        """The webhooks that asked for ``event``."""
        return tuple(w for w in self.webhooks if event in w.events)

    def secrets(self) -> dict[str, str]:
        """Each ``secret_env``'s value, read from the environment now, by variable name.

        Raises:
            NotifySecretMissing: a variable is unset or empty, naming it and its webhook.
        """
        out: dict[str, str] = {}
        for i, hook in enumerate(self.webhooks):
            value = settings.named_secret(hook.secret_env)
            if value is None:
                raise NotifySecretMissing(
                    f"notify.webhooks[{i}].secret_env: the environment variable "
                    f"{hook.secret_env} is not set; it holds the signing secret of the webhook "
                    f"to {hook.host}, and must be set where the run's driver runs")
            out[hook.secret_env] = value
        return out

    def describe(self) -> list[str]:
        """Lines for ``factory validate``: each webhook's host, events and variable."""
        lines = []
        for hook in self.webhooks:
            unset = "" if settings.named_secret(hook.secret_env) else " (not set here)"
            lines.append(f"notify {hook.host}: {', '.join(hook.events)}; signed with "
                         f"${hook.secret_env}{unset}")
        return lines


def resolve_notify(spec: NotifySpec, problems: list[str]) -> NotifyConfig:
    """``notify:`` checked beyond its types: each URL is ``http(s)://host[:port]/path`` with
    no credentials or fragment, and an event is not listed twice. Where a host may connect
    (its addresses) is checked at delivery, against the same rules as photo fetching."""
    hooks = []
    if not spec.webhooks:
        problems.append("notify.webhooks: list at least one webhook (or leave notify: out)")
    for i, hook in enumerate(spec.webhooks):
        where = f"notify.webhooks[{i}]"
        try:
            parts = urlsplit(hook.url)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            problems.append(f"{where}.url: not a URL ({exc})")
            continue
        if parts.scheme not in ("http", "https"):
            problems.append(f"{where}.url: must be http:// or https:// (got "
                            f"{parts.scheme or 'no scheme'})")
        elif not parts.hostname:
            problems.append(f"{where}.url: no host")
        if parts.username is not None or parts.password is not None:
            problems.append(f"{where}.url: credentials in the URL; the secret goes in "
                            "secret_env's variable")
        if parts.fragment:
            problems.append(f"{where}.url: a fragment (#...) is never sent; remove it")
        if len(set(hook.events)) != len(hook.events):
            problems.append(f"{where}.events: an event is listed twice")
        hooks.append(Webhook(url=hook.url, events=tuple(dict.fromkeys(hook.events)),
                             secret_env=hook.secret_env, allow_private=hook.allow_private,
                             timeout_s=hook.timeout_s))
    return NotifyConfig(webhooks=tuple(hooks), retries=spec.retries, backoff_s=spec.backoff_s,
                        deadline_s=spec.deadline_s)
