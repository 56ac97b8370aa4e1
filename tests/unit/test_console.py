"""The terminal: one progress display (live bar or periodic lines), the dashboard line, and
Ray's noise filtered out."""

from __future__ import annotations

import io
import logging
import os

from factory.core.console import RunProgress, dashboard_line, quiet_ray, slowest_stage
from factory.run.recorder import Counts


def counts(**kw) -> Counts:
    c = Counts(assets=kw.get("assets", 0), failed=kw.get("failed", 0),
               rejected=kw.get("rejected", 0))
    c.stage_ms.update(kw.get("ms", {}))
    c.stage_rows.update(kw.get("rows", {}))
    return c


def test_the_slowest_stage_is_the_one_with_most_ms_per_asset():
    c = counts(ms={"generate": 900.0, "lora": 4000.0, "recolor": 50.0},
               rows={"generate": 30, "lora": 10, "recolor": 10})
    assert slowest_stage(c) == "lora (400 ms/asset)"
    assert slowest_stage(counts()) == ""


def test_off_a_terminal_a_line_every_few_seconds_and_always_the_last():
    out = io.StringIO()
    with RunProgress(stream=out, every_s=3600, live=False) as progress:
        progress(counts(assets=1), 10)  # within the period: nothing
        progress(counts(assets=8, failed=1, rejected=1, ms={"gen": 100.0}, rows={"gen": 8}), 10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("  10/10 rows: 8 assets (")
    assert "1 failed, 1 rejected; slowest stage gen (12 ms/asset)" in lines[0]


def test_on_a_terminal_one_live_bar():
    out = io.StringIO()
    with RunProgress(stream=out, live=True) as progress:
        for done in range(0, 11, 5):
            progress(counts(assets=done), 10)
    text = out.getvalue()
    assert "10/10" in text and "10 assets" in text
    assert text.count("rows: ") == 0  # no periodic lines beside the bar


def test_the_dashboard_line_says_how_to_get_in():
    line = dashboard_line("127.0.0.1:8265", token_auth=True)
    assert line.startswith("dashboard: http://127.0.0.1:8265") and "ray get-auth-token" in line
    assert dashboard_line(None, token_auth=True) is None
    assert "get-auth-token" not in dashboard_line("http://h:8265", token_auth=False)


def test_ray_notices_nobody_can_act_on_are_dropped():
    quiet_ray()
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("Token authentication is enabled for this Ray cluster. Set ...")
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    assert seen == ["something else"]


def test_ray_train_cleaner_polls_without_a_state_api_are_dropped_and_its_cleanups_shown(
        monkeypatch):
    from factory.core.console import TRAIN_PG_CLEANER, quiet_ray_worker

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # as in a worker: its cluster is named
    quiet_ray_worker()
    out = io.StringIO()
    cleaner = logging.getLogger(TRAIN_PG_CLEANER)
    handler = logging.StreamHandler(out)
    cleaner.addHandler(handler)
    try:
        cleaner.warning("Failed to query Ray Train Controller actor state. State API may be "
                        "temporarily unavailable. Continuing to monitor.")
        cleaner.warning("Detected that the Ray Train controller actor (a1) is dead. Cleaning "
                        "up placement group = [pg1] created by this run.")
    finally:
        cleaner.removeHandler(handler)
    assert out.getvalue().splitlines() == [
        "Detected that the Ray Train controller actor (a1) is dead. Cleaning up placement "
        "group = [pg1] created by this run."]


def test_a_worker_names_its_own_cluster_for_the_state_api(monkeypatch):
    """Two local Rays on one machine: the State API in a worker must not have to guess."""
    import ray

    from factory.core.console import pin_state_api_address

    monkeypatch.setenv("RAY_ADDRESS", "")  # recorded, so the test leaves the variable as it was
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: type("Context", (), {"gcs_address": "10.0.0.5:6379"})())
    pin_state_api_address()
    assert os.environ["RAY_ADDRESS"] == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a user's own setting stays
    pin_state_api_address()
    assert os.environ["RAY_ADDRESS"] == "ray://head:10001"
