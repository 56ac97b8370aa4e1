"""Webhook notifications end to end (``factory.notify``): the demo job, a handful of rows,
through ``factory run`` on a local Ray, told to a loopback receiver. The committed event
arrives once, after the commit, signed, with the run's own counts; running it again (already
committed) tells nobody anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.catalog.demo import DEMO_JOB, write_catalog
from factory.cli.main import main
from factory.notify.signing import EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from factory.store.run_tables import is_committed, read_lineage
from factory.store.storage import Store
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

ROWS = 5
VARIABLE = "FACTORY_IT_WEBHOOK_SECRET"
SECRET = "it-webhook-secret-42"


def demo_spec(tmp: Path, catalog: Path, output: Path, url: str) -> Path:
    data = yaml.safe_load(DEMO_JOB.read_text(encoding="utf-8"))
    data["manifest"] = {"uri": str(catalog)}
    data["output"] = {**data["output"], "uri": str(output)}
    for stage in data["stages"]:  # a handful of rows fill one actor of each pool
        stage.get("resources", {}).pop("concurrency", None)
    data["notify"] = {"webhooks": [{"url": url, "secret_env": VARIABLE,
                                    "events": ["committed", "failed"],
                                    "allow_private": ["127.0.0.1"]}],
                      "retries": 1, "backoff_s": 0.05, "deadline_s": 10}
    path = tmp / "demo-notify.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_committed_run_sends_one_signed_event_with_its_counts(local_ray, models_dir, tmp_path,
                                                                monkeypatch) -> None:
    monkeypatch.setenv(VARIABLE, SECRET)  # after Ray started: the driver reads it, not workers
    catalog = write_catalog(tmp_path / "catalog.csv", ROWS)
    out = tmp_path / "out"
    with WebhookReceiver() as receiver:
        spec = demo_spec(tmp_path, catalog, out, receiver.url("/factory"))
        run = CliRunner().invoke(main, ["run", str(spec), "--run-id", "hooked",
                                        "--no-dashboard"], catch_exceptions=False)
        assert run.exit_code == 0, run.output
        assert f"notify:  127.0.0.1:{receiver.port} committed: 200" in run.output, run.output

        (request,) = receiver.requests
        assert request.path == "/factory" and request.headers[EVENT_HEADER.lower()] == "committed"
        verify(SECRET, request.body, timestamp=request.headers[TIMESTAMP_HEADER.lower()],
               signature_header=request.headers[SIGNATURE_HEADER.lower()])
        assert SECRET.encode() not in request.body
        body = json.loads(request.body)
        store = Store(str(out))
        assert is_committed(store, "hooked")  # sent after the commit
        _, summary = read_lineage(store, "hooked")
        channels = len(yaml.safe_load(DEMO_JOB.read_text())["channels"])
        assert body["counts"] == {"manifest_rows": ROWS, "assets": ROWS * channels,
                                  "written": ROWS * channels, "failed": 0, "rejected": 0,
                                  "deferred": 0, "review": 0}
        assert {k: body["counts"][k] for k in ("assets", "failed", "rejected")} == {
            k: summary[k] for k in ("assets", "failed", "rejected")}
        assert (body["event"], body["run_id"], body["job"]) == ("committed", "hooked",
                                                                "demo-catalog")
        assert body["usd"] == pytest.approx(summary["cost_usd"])
        assert Path(body["report"]).name == "report.html" and Path(body["report"]).exists()
        assert body["error"] is None

        again = CliRunner().invoke(main, ["run", str(spec), "--run-id", "hooked",
                                          "--no-dashboard"], catch_exceptions=False)
        assert "already committed" in again.output, again.output
        assert len(receiver.requests) == 1  # a committed run is announced once
