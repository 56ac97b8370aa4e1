"""What a run's end tells its webhooks (``factory.notify.body``, ``factory.run.notified``): the
events a result raises, and each body's contents."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from factory.notify.body import SCHEMA, RunFacts, encode, event_body, run_events
from factory.run.notified import failure_text, run_facts
from factory.run.recorder import Counts
from factory.run.result import RunResult
from factory.spec.job import parse_job

WHEN = datetime(2025, 3, 1, 12, 30, tzinfo=timezone.utc)
KEYS = {"schema", "event", "job", "run_id", "timestamp", "counts", "usd", "budget", "qa",
        "report", "lineage", "output", "published", "wall_s", "error"}


def job():
    return parse_job({"name": "spring", "manifest": {"uri": "a.csv"}, "output": {"uri": "out"},
                      "prompt": {"template": "a {{ title }}"},
                      "stages": [{"kind": "generate", "model": "synthetic"}]})


def result(**changes) -> RunResult:
    base = RunResult(
        run_id="spring-0123456789ab", manifest_rows=30,
        counts=Counts(assets=25, written=20, failed=2, rejected=3),
        wall_s=12.34567, output_uri="s3://assets/spring",
        lineage_path="s3://assets/spring/runs/spring-0123456789ab/lineage.parquet",
        rejects_path="s3://assets/spring/runs/spring-0123456789ab/rejects.parquet",
        report_path="s3://assets/spring/runs/spring-0123456789ab/report.html",
        cost={"usd": 0.125, "stages": {}})
    return replace(base, **changes)


def test_a_committed_run_raises_committed_only() -> None:
    assert run_events(run_facts(job(), result())) == ("committed",)


def test_a_spent_budget_and_flagged_rows_raise_their_events_after_committed() -> None:
    facts = run_facts(job(), result(budget={"usd": 1.0, "spent_usd": 1.02, "exhausted": True},
                                    qa={"review": 4, "retries": 9, "retry_usd": 0.01}))
    assert run_events(facts) == ("committed", "budget_exhausted", "review")
    quiet = run_facts(job(), result(budget={"usd": 5.0, "spent_usd": 1.0, "exhausted": False},
                                    qa={"review": 0, "retries": 2, "retry_usd": 0.0}))
    assert run_events(quiet) == ("committed",)


def test_a_run_that_was_already_committed_raises_nothing() -> None:
    facts = run_facts(job(), result(already_committed=True, qa={"review": 4}))
    assert run_events(facts) == ()


def test_the_committed_body_carries_counts_dollars_and_paths() -> None:
    body = event_body("committed", run_facts(job(), result(qa={"review": 1})), now=WHEN)
    assert set(body) == KEYS
    assert body["schema"] == SCHEMA and body["event"] == "committed"
    assert (body["job"], body["run_id"]) == ("spring", "spring-0123456789ab")
    assert body["timestamp"] == "2025-03-01T12:30:00Z"
    assert body["counts"] == {"manifest_rows": 30, "assets": 25, "written": 20, "failed": 2,
                              "rejected": 3, "deferred": 0, "review": 1}
    assert body["usd"] == 0.125 and body["wall_s"] == 12.346
    assert body["report"].endswith("/report.html") and body["lineage"].endswith("/lineage.parquet")
    assert body["output"] == "s3://assets/spring"
    assert body["published"] == [] and body["budget"] is None and body["error"] is None
    assert body["qa"] == {"review": 1}


def test_published_paths_are_read_from_the_result_where_it_has_them() -> None:
    published = result()
    object.__setattr__(published, "published", ("s3://shop/feed.xml", "s3://shop/images/"))
    body = event_body("committed", run_facts(job(), published), now=WHEN)
    assert body["published"] == ["s3://shop/feed.xml", "s3://shop/images/"]


def test_the_failed_body_names_the_error_and_no_counts() -> None:
    facts = RunFacts(job="spring", run_id=None, output="out",
                     error=failure_text(RuntimeError("Traceback...\n  deep\nStorageError: 403")))
    body = event_body("failed", facts, now=WHEN)
    assert set(body) == KEYS
    assert body["error"] == "RuntimeError: StorageError: 403"
    assert body["counts"] is None and body["run_id"] is None and body["report"] is None
    long = event_body("failed", replace(facts, error="x" * 5000), now=WHEN)
    assert len(long["error"]) == 1000


def test_the_encoded_body_is_compact_sorted_utf8_json() -> None:
    body = event_body("committed", replace(run_facts(job(), result()), job="été"), now=WHEN)
    raw = encode(body)
    assert json.loads(raw) == body
    assert raw.startswith(b'{"budget":null,') and b", " not in raw
    assert "été".encode() in raw


@pytest.mark.parametrize("exc, expected", [
    (ValueError(""), "ValueError"),
    (KeyboardInterrupt(), "KeyboardInterrupt"),
    (OSError("disk full\n\n"), "OSError: disk full"),
])
def test_failure_text_is_one_line(exc: BaseException, expected: str) -> None:
    assert failure_text(exc) == expected
