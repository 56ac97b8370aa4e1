"""``notify:`` in a job spec (``factory.spec.notify``): the secret is never in the spec, a
variable that is not set is named, URLs are checked, and webhooks are not part of a run's
identity."""

from __future__ import annotations

import pytest

from factory.spec.job import SpecError, parse_job
from factory.spec.notify import EVENTS, NotifySecretMissing

VARIABLE = "FACTORY_TEST_WEBHOOK_SECRET"
SECRET_VALUE = "wh-9f8e7d6c5b4a"


def spec(notify: dict | None = None, **top) -> dict:
    data = {"name": "hooked", "manifest": {"uri": "a.csv"}, "output": {"uri": "out"},
            "prompt": {"template": "a {{ title }}"},
            "stages": [{"kind": "generate", "model": "synthetic"}], **top}
    if notify is not None:
        data["notify"] = notify
    return data


def hook(**fields) -> dict:
    return {"url": "https://hooks.example.com/factory", "secret_env": VARIABLE, **fields}


def problems(data: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_job(data, source="hooked.yaml")
    return str(caught.value)


def test_notify_parses_into_a_frozen_config_with_defaults() -> None:
    job = parse_job(spec({"webhooks": [hook(), hook(url="http://ops.example.com:8080/h",
                                                   events=["failed"], timeout_s=3)],
                          "deadline_s": 12}))
    first, second = job.notify.webhooks
    assert first.events == EVENTS and first.secret_env == VARIABLE
    assert first.host == "hooks.example.com" and second.host == "ops.example.com:8080"
    assert second.events == ("failed",) and second.timeout_s == 3
    assert (job.notify.retries, job.notify.backoff_s, job.notify.deadline_s) == (3, 0.5, 12)
    assert job.notify.wanting("failed") == (first, second)
    assert job.notify.wanting("review") == (first,)
    assert parse_job(spec()).notify is None


@pytest.mark.parametrize("key", ["secret", "signing_secret", "token"])
def test_a_secret_in_the_spec_is_refused_and_never_quoted(key: str) -> None:
    message = problems(spec({"webhooks": [hook(**{key: SECRET_VALUE})]}))
    assert f"notify.webhooks[0]: '{key}': a secret never goes in the spec" in message
    assert "secret_env" in message
    assert SECRET_VALUE not in message


@pytest.mark.parametrize("value", [SECRET_VALUE, "whsec_AbCdEf0123", "lower_case",
                                   "HAS-DASH", "1STARTS_WITH_DIGIT", ""])
def test_secret_env_must_be_a_variable_name_and_is_never_quoted(value: str) -> None:
    message = problems(spec({"webhooks": [hook(secret_env=value)]}))
    assert "notify.webhooks[0].secret_env: must be the name of an environment variable" in message
    if value:
        assert value not in message


def test_a_variable_that_is_not_set_is_named(monkeypatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    job = parse_job(spec({"webhooks": [hook()]}))  # the spec is valid wherever it is read
    with pytest.raises(NotifySecretMissing) as caught:
        job.notify.secrets()
    message = str(caught.value)
    assert VARIABLE in message and "notify.webhooks[0].secret_env" in message
    assert "hooks.example.com" in message and "/factory" not in message
    monkeypatch.setenv(VARIABLE, "")  # empty is not set
    with pytest.raises(NotifySecretMissing, match=VARIABLE):
        job.notify.secrets()
    monkeypatch.setenv(VARIABLE, SECRET_VALUE)
    assert job.notify.secrets() == {VARIABLE: SECRET_VALUE}


def test_the_config_never_holds_the_secret(monkeypatch) -> None:
    monkeypatch.setenv(VARIABLE, SECRET_VALUE)
    job = parse_job(spec({"webhooks": [hook()]}))
    assert SECRET_VALUE not in repr(job.notify) and SECRET_VALUE not in "".join(
        job.notify.describe())


@pytest.mark.parametrize("url, expected", [
    ("ftp://hooks.example.com/x", "notify.webhooks[0].url: must be http:// or https://"),
    ("hooks.example.com/x", "notify.webhooks[0].url: must be http:// or https:// (got no scheme)"),
    ("https:///x", "notify.webhooks[0].url: no host"),
    ("https://user:pw@hooks.example.com/x", "notify.webhooks[0].url: credentials in the URL"),
    ("https://hooks.example.com/x#frag", "notify.webhooks[0].url: a fragment"),
    ("https://hooks.example.com:port/x", "notify.webhooks[0].url: not a URL"),
])
def test_bad_urls_are_refused_with_their_key(url: str, expected: str) -> None:
    assert expected in problems(spec({"webhooks": [hook(url=url)]}))


@pytest.mark.parametrize("notify, expected", [
    ({"webhooks": []}, "notify.webhooks: "),
    ({"webhooks": [hook(events=[])]}, "notify.webhooks[0].events: "),
    ({"webhooks": [hook(events=["done"])]}, "notify.webhooks[0].events[0]: "),
    ({"webhooks": [hook(events=["failed", "failed"])]}, "an event is listed twice"),
    ({"webhooks": [hook()], "deadline_s": 0}, "notify.deadline_s: "),
    ({"webhooks": [hook()], "deadline_s": 301}, "notify.deadline_s: "),
    ({"webhooks": [hook(timeout_s=61)]}, "notify.webhooks[0].timeout_s: "),
    ({"webhooks": [hook(colour="red")]}, "notify.webhooks[0].colour: unknown key"),
    ({"webhooks": [{"url": "https://h.example.com/"}]},
     "notify.webhooks[0].secret_env: Field required"),
])
def test_bad_notify_sections_are_refused(notify: dict, expected: str) -> None:
    assert expected in problems(spec(notify))


def test_webhooks_are_not_part_of_the_runs_identity() -> None:
    plain = parse_job(spec())
    hooked = parse_job(spec({"webhooks": [hook()]}))
    other = parse_job(spec({"webhooks": [hook(url="https://elsewhere.example.com/")]}))
    assert plain.spec_hash == hooked.spec_hash == other.spec_hash
    assert parse_job(spec(seed=3)).spec_hash != plain.spec_hash  # the hash does follow the spec
