"""A run's commit on S3 under contention and faults: a real S3 server (moto) on loopback
behind the fault-injecting proxy.

Two drivers committing one run id at once leave one lineage and one result, on a store with
conditional writes and on one without (``checked``); a 409 ConditionalRequestConflict on the
commit is retried and a loser reports the winner; a lineage write that fails for good leaves
the run uncommitted and the rerun resumes it.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pytest

from factory.run.recorder import RunRecorder
from factory.store.run_tables import is_committed, read_rejects, read_summary
from factory.store.s3 import S3Options, StorageError
from factory.store.storage import ConcurrentCommitError, Store
from tests.support.fault_proxy import FaultPolicy, start_fault_proxy
from tests.support.s3_server import start_s3_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    with pytest.MonkeyPatch.context() as env:
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            env.setenv(key, value)
        with start_s3_server() as s3:
            s3.client().create_bucket(Bucket="assets")
            yield s3


@pytest.fixture(scope="module")
def proxy(server):
    with start_fault_proxy(server.endpoint_url) as p:
        yield p


@pytest.fixture(autouse=True)
def no_faults(proxy):
    proxy.policy = FaultPolicy()
    proxy.reset_log()
    yield
    proxy.policy = FaultPolicy()


def store_at(proxy, prefix: str, mode: str = "auto", **options: Any) -> Store:
    store = Store(f"s3://assets/{prefix}", S3Options(endpoint_url=proxy.endpoint_url,
                                                     addressing_style="path",
                                                     create_only=mode, **options))
    return store if mode != "auto" else store.preflight(prefix)


def commit(store: Store, run_id: str, who: str, *, reason: str = "seed 'abc' is not a number"
           ) -> bool:
    """One driver's commit of a tiny run: one asset row, one rejected row."""
    recorder = RunRecorder(store, run_id, ())
    recorder.add(pa.Table.from_pylist([
        {"row": 1, "sku": "SKU-1", "status": "ok", "output_key": "assets/SKU-1/v.png",
         "error": "", "reject_field": "", "written": True},
        {"row": 2, "sku": "SKU-2", "status": "rejected", "error": reason, "reject_field": "seed",
         "written": False}]))
    return recorder.commit({"who": who})


def race(store: Store, run_id: str, whos: tuple[str, ...], **kwargs: Any) -> dict[str, Any]:
    """Commit one run id from a thread per driver, all at once; each driver's outcome (its
    return value or its exception)."""
    barrier = threading.Barrier(len(whos))
    outcome: dict[str, Any] = {}

    def drive(who: str) -> None:
        barrier.wait()
        try:
            outcome[who] = commit(store, run_id, who, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome[who] = exc

    threads = [threading.Thread(target=drive, args=(who,)) for who in whos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcome


def keys_under(server, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(
        Bucket="assets", Prefix=f"{prefix}/")
    return sorted(o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []))


def test_the_proxy_makes_a_store_without_conditional_writes(proxy):
    proxy.policy = FaultPolicy(ignore_if_none_match=True, key_filter="/nocond/")
    store = store_at(proxy, "nocond")
    assert store.write_mode == "checked"


@pytest.mark.parametrize("mode", ["if-none-match", "checked"])
def test_two_drivers_committing_one_run_id_leave_one_result(server, proxy, mode):
    """Both drivers find no lineage, then write theirs (each lineage PUT held for 0.5 s so
    the two overlap): exactly one commits, the other reports that it lost, and the lineage
    and rejects in the store are the winner's."""
    prefix = f"race-{mode}"
    store = store_at(proxy, prefix) if mode == "if-none-match" else store_at(proxy, prefix, mode)
    assert store.write_mode == mode
    proxy.policy = FaultPolicy(put_delay_seconds=0.5, key_filter=f"/{prefix}/runs/r/lineage")
    outcome = race(store, "r", ("a", "b"))
    assert sorted(outcome.values(), key=str) == [False, True], outcome
    winner = next(who for who, won in outcome.items() if won is True)
    assert read_summary(store, "r")["who"] == winner
    assert read_rejects(store, "r").num_rows == 1
    assert keys_under(server, prefix) == ["runs/r/lineage.parquet", "runs/r/rejects.parquet"]


def test_drivers_of_other_inputs_never_mix_their_tables(server, proxy):
    """One explicit run id, two drivers whose rejects differ, on a store without conditional
    writes: one commits; the other loses or refuses; the rejects are the committed run's."""
    prefix = "race-inputs"
    store = store_at(proxy, prefix, "checked")
    proxy.policy = FaultPolicy(put_delay_seconds=0.3, key_filter=f"/{prefix}/runs/r/")
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def drive(who: str) -> None:
        barrier.wait()
        try:
            outcome[who] = commit(store, "r", who, reason=f"reason of {who}")
        except Exception as exc:  # noqa: BLE001
            outcome[who] = exc

    threads = [threading.Thread(target=drive, args=(who,)) for who in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = [who for who, won in outcome.items() if won is True]
    assert len(winners) == 1, outcome
    loser = "b" if winners == ["a"] else "a"
    assert outcome[loser] is False or isinstance(outcome[loser], StorageError), outcome
    assert read_summary(store, "r")["who"] == winners[0]
    assert read_rejects(store, "r")["reason"].to_pylist() == [f"reason of {winners[0]}"]


def test_a_claim_left_behind_is_named_and_never_ignored(server, proxy, monkeypatch):
    """On a store without conditional writes, a driver that stopped mid-commit leaves its
    claim: the next commit refuses, naming it, rather than risk two commits."""
    import factory.store.storage as storage

    monkeypatch.setattr(storage, "CLAIM_TRIES", 2)
    store = store_at(proxy, "stale", "checked")
    store.replace_bytes("runs/r/.commit/left-behind", b"")
    with pytest.raises(ConcurrentCommitError, match="runs/r/.commit/left-behind"):
        commit(store, "r", "me")
    assert not is_committed(store, "r")
    store.delete("runs/r/.commit/left-behind")
    assert commit(store, "r", "me") is True
    assert keys_under(server, "stale") == ["runs/r/lineage.parquet", "runs/r/rejects.parquet"]


def test_a_409_on_the_commit_is_retried(proxy):
    """A conditional PUT that met a concurrent write (409 ConditionalRequestConflict) is
    retried by the client, and the commit goes through."""
    store = store_at(proxy, "c409")
    proxy.policy = FaultPolicy(put_409_first=2, key_filter="/c409/runs/r/lineage")
    assert commit(store, "r", "me") is True
    assert proxy.count(fault="409") == 2
    assert read_summary(store, "r")["who"] == "me"


def test_a_loser_that_meets_a_409_reports_the_winner(proxy):
    """Two drivers: the first lineage PUT to arrive gets a 409 while the other's is in flight;
    it is retried and meets the other's commit (412): one commits, the other loses, neither
    fails."""
    store = store_at(proxy, "l409")
    proxy.policy = FaultPolicy(put_409_first=1, put_delay_seconds=0.5,
                               key_filter="/l409/runs/r/lineage")
    outcome = race(store, "r", ("a", "b"))
    assert proxy.count(fault="409") == 1
    assert sorted(outcome.values(), key=str) == [False, True], outcome
    winner = next(who for who, won in outcome.items() if won is True)
    assert read_summary(store, "r")["who"] == winner


@pytest.mark.parametrize("status", [403, 500])
def test_a_lineage_write_that_fails_for_good_commits_nothing(proxy, status):
    store = store_at(proxy, f"lf{status}", max_attempts=2)
    proxy.policy = FaultPolicy(put_403_every=1 if status == 403 else 0,
                               put_500_every=1 if status == 500 else 0,
                               key_filter=f"/lf{status}/runs/r/lineage")
    with pytest.raises(StorageError, match="access denied" if status == 403 else "InternalError"):
        commit(store, "r", "first")
    assert proxy.count(fault=str(status)) >= 1
    assert not is_committed(store, "r")
    proxy.policy = FaultPolicy()
    assert commit(store, "r", "second") is True  # its rejects from the same inputs are kept
    assert read_summary(store, "r")["who"] == "second"


def test_a_run_whose_lineage_fails_for_good_stops_uncommitted_and_resumes(
        server, proxy, local_ray, models_dir, tmp_path):
    """A whole run, 4 rows: every lineage PUT gets a 500 (botocore retries, then gives up):
    the CLI exits with the store-failure status and nothing is committed; the same command
    again renders nothing already stored and commits."""
    import yaml
    from click.testing import CliRunner

    from factory.catalog.demo import write_catalog
    from factory.cli.exits import EXIT_OK, EXIT_RUN
    from factory.cli.main import main
    from factory.store.run_tables import read_lineage

    catalog = write_catalog(tmp_path / "catalog.csv", 4)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "lineage-fails", "manifest": {"uri": str(catalog)},
        "output": {"uri": "s3://assets/lfjob"}, "seed": 3,
        "prompt": {"template": "a {{ color }} {{ title }}"},
        "storage": {"endpoint_url": proxy.endpoint_url, "addressing_style": "path",
                    "region": "us-east-1", "max_attempts": 2},
        "stages": [{"kind": "generate", "model": "synthetic",
                    "params": {"width": 16, "height": 16}}]}))
    proxy.policy = FaultPolicy(put_500_every=1, key_filter="/lfjob/runs/lf/lineage")
    broken = CliRunner().invoke(main, ["run", str(spec), "--run-id", "lf"],
                                catch_exceptions=False)
    assert broken.exit_code == EXIT_RUN, broken.output
    assert "not committed" in broken.output and "InternalError" in broken.output
    assert proxy.count(fault="500") >= 1
    landed = [k for k in keys_under(server, "lfjob") if k.startswith("assets/")]
    assert len(landed) == 4 and "runs/lf/lineage.parquet" not in keys_under(server, "lfjob")

    proxy.policy = FaultPolicy()
    proxy.reset_log()
    again = CliRunner().invoke(main, ["run", str(spec), "--run-id", "lf"],
                               catch_exceptions=False)
    assert again.exit_code == EXIT_OK, again.output
    assert proxy.count(method="PUT", path_contains="/lfjob/assets/") == 0  # nothing rendered twice
    store = Store("s3://assets/lfjob", S3Options(endpoint_url=proxy.endpoint_url,
                                                 addressing_style="path"))
    lineage, summary = read_lineage(store, "lf")
    assert summary["assets"] == 4 and summary["written"] == 0
    assert sorted(lineage["output_key"].to_pylist()) == sorted(landed)
