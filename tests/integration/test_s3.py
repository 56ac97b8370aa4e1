"""Object storage end to end: a real S3 server (moto, standalone) on loopback behind a
fault-injecting proxy. Manifests are read from and assets written to the bucket.

Every test checks exact SKU accounting and that the bucket holds exactly the keys the
committed lineage lists.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest

from factory.catalog.demo import write_catalog
from factory.store.run_tables import is_committed, list_runs, read_lineage, read_rejects
from factory.store.s3 import S3Options, StorageError
from factory.spec.job import parse_job
from factory.store.storage import Store
from tests.support.fault_proxy import FaultPolicy, start_fault_proxy
from tests.support.s3_server import start_s3_server

pytestmark = pytest.mark.integration

# Distinctive fake credentials: the credential test looks for them everywhere.
ACCESS_KEY = "AKIAFACTORYTEST00042"
SECRET_KEY = "factory-secret-DO-NOT-LOG-7f3a9c1e"
FAIL = "SKU-00007"


@pytest.fixture(scope="module")
def s3_env():
    """Credentials in the environment before Ray starts, as the boto3 chain expects."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            env.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def server(s3_env):
    with start_s3_server() as s3:
        client = s3.client()
        for bucket in ("catalogs", "assets"):
            client.create_bucket(Bucket=bucket)
        yield s3


@pytest.fixture(scope="module")
def proxy(server):
    with start_fault_proxy(server.endpoint_url) as p:
        yield p


@pytest.fixture(scope="module")
def catalog_uri(server, tmp_path_factory):
    local = write_catalog(tmp_path_factory.mktemp("cat") / "catalog.csv", 40)  # 3 bad rows
    server.client().upload_file(str(local), "catalogs", "spring/catalog.csv")
    return "s3://catalogs/spring/catalog.csv"


def make_job(catalog_uri: str, endpoint: str, prefix: str, **extra):
    spec = {
        "name": "s3-job", "manifest": {"uri": catalog_uri}, "output": {"uri": f"s3://assets/{prefix}"},
        "seed": 11, "prompt": {"template": "a {{ color }} {{ title }}"},
        "storage": {"endpoint_url": endpoint, "addressing_style": "path", "region": "us-east-1",
                    "max_attempts": 10},
        "stages": [
            {"kind": "generate", "model": "synthetic", "params": {"width": 48, "height": 48}},
            {"kind": "recolor", "model": "lab", "params": {"palette": ["#C8553D", "#2D3047"]}},
            {"kind": "identity", "model": "passthrough", "params": {"fail_skus": [FAIL]}},
        ],
    }
    spec.update(extra)
    return parse_job(spec, source="<s3 test>")


def bucket_keys(server, prefix: str) -> list[str]:
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="assets",
                                                                  Prefix=f"{prefix}/"):
        keys += [o["Key"][len(prefix) + 1:] for o in page.get("Contents", [])]
    return keys


def check_run(server, job, prefix: str, run_id: str) -> list[dict]:
    """Exact accounting; the bucket holds exactly what the committed lineage lists."""
    store = Store(job.output.uri, job.s3)
    lineage, summary = read_lineage(store, run_id)
    rejects = read_rejects(store, run_id)
    rows = lineage.to_pylist()
    assert len(rows) + rejects.num_rows == 40
    assert sorted(r["row"] for r in rows) + [] == sorted(
        set(range(1, 41)) - set(rejects["row"].to_pylist()))
    ok = [r for r in rows if r["status"] == "ok"]
    assert (len(ok), summary["failed"], rejects.num_rows) == (36, 1, 3)
    listed = {r["output_key"] for r in ok}
    for stage in job.keep_intermediates:
        listed |= {r[f"{stage}_key"] for r in rows if r[f"{stage}_key"]}
    keys = bucket_keys(server, prefix)
    tables = {k for k in keys if k.startswith("runs/")}
    assert set(keys) - tables == listed  # no key the lineage does not list
    assert len(keys) == len(set(keys))
    assert Counter(k.split("/")[1] for k in keys if k.startswith("assets/")) == Counter(
        r["sku"] for r in ok)  # one object per SKU: no duplicates
    run_files = {"lineage.parquet", "rejects.parquet", "report.html", "thumbs.json"}
    run_files |= {f"thumbs/{r['row']}.webp" for r in ok}  # the report's contact sheet
    assert {t.split("/", 2)[2] for t in tables} <= run_files, tables
    client = server.client()
    for r in [r for r in ok if r["written"]][:10]:  # the run that writes an asset hashes it
        body = client.get_object(Bucket="assets", Key=f"{prefix}/{r['output_key']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == r["sha256"]
    return rows


def test_end_to_end_reads_manifest_and_writes_assets_in_s3(server, proxy, catalog_uri,
                                                           local_ray, models_dir):
    from factory.run.pipeline import run_job

    job = make_job(catalog_uri, proxy.endpoint_url, "e2e", keep_intermediates=["recolor"])
    result = run_job(job)
    assert result.counts.assets == 36
    rows = check_run(server, job, "e2e", result.run_id)
    assert all(r["recolor_key"].startswith("intermediates/recolor/") for r in rows
               if r["status"] == "ok")
    assert [run_id for run_id, _ in list_runs(Store(job.output.uri, job.s3))] == [result.run_id]


def test_slowdown_and_lost_answers_leave_exact_accounting(server, proxy, catalog_uri,
                                                          local_ray, models_dir):
    from factory.run.pipeline import run_job

    proxy.reset_log()
    proxy.policy = FaultPolicy(put_503_every=3, drop_after_put_every=5, key_filter="/faults/")
    try:
        job = make_job(catalog_uri, proxy.endpoint_url, "faults")
        result = run_job(job)
    finally:
        proxy.policy = FaultPolicy()
    assert proxy.count(fault="503") > 0 and proxy.count(fault="drop") > 0, proxy.requests[:5]
    check_run(server, job, "faults", result.run_id)


def test_running_the_same_job_again_writes_nothing(server, proxy, catalog_uri, local_ray,
                                                   models_dir):
    from factory.run.pipeline import run_job

    job = make_job(catalog_uri, proxy.endpoint_url, "twice")
    first = run_job(job)
    keys = sorted(bucket_keys(server, "twice"))
    proxy.reset_log()
    again = run_job(job)  # same inputs, same derived run id: committed, nothing to do
    assert proxy.count(method="PUT") == 0
    assert again.run_id == first.run_id and again.already_committed
    assert again.counts.assets == first.counts.assets
    proxy.reset_log()
    rerun = run_job(job.with_overrides(run_id="second-run"))  # a new run over the same work
    asset_puts = [r for r in proxy.requests if r.method == "PUT" and "/twice/assets/" in r.path]
    assert asset_puts == [] and rerun.counts.written == 0 and rerun.counts.assets == 36
    lineage_a, _ = read_lineage(Store(job.output.uri, job.s3), first.run_id)
    lineage_b, _ = read_lineage(Store(job.output.uri, job.s3), "second-run")
    assert sorted(lineage_a["output_key"].to_pylist()) == sorted(lineage_b["output_key"].to_pylist())
    assert sorted(k for k in bucket_keys(server, "twice") if "second-run" not in k) == keys


def test_missing_bucket_fails_in_preflight_before_any_model(server, proxy, catalog_uri,
                                                            local_ray, models_dir):
    from factory.run.pipeline import run_job

    job = make_job(catalog_uri, proxy.endpoint_url, "x")
    job = job.with_overrides(output_uri="s3://no-such-bucket/out")
    proxy.reset_log()
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        run_job(job)
    from ray._private import state  # the GCS actor table; no dashboard needed

    alive = [a for a in state.actors().values()
             if a.get("State") in ("ALIVE", "PENDING_CREATION", 1, 0)
             and "MapWorker" in str(a.get("ActorClassName", ""))]
    assert alive == []  # no stage actor (no model) was started


def test_access_denied_fails_in_preflight(server, proxy, catalog_uri, local_ray, models_dir):
    from factory.run.pipeline import run_job

    proxy.policy = FaultPolicy(put_403_every=1, key_filter="/denied/")
    try:
        with pytest.raises(StorageError, match="access denied"):
            run_job(make_job(catalog_uri, proxy.endpoint_url, "denied"))
    finally:
        proxy.policy = FaultPolicy()
    assert bucket_keys(server, "denied") == []


def test_a_missing_manifest_object_is_a_clear_error(server, proxy, local_ray, models_dir):
    from factory.catalog.manifest import ManifestError
    from factory.run.pipeline import run_job

    job = make_job("s3://catalogs/nope.csv", proxy.endpoint_url, "nomanifest")
    with pytest.raises(ManifestError, match="s3://catalogs/nope.csv"):
        run_job(job)


def test_credentials_appear_in_no_log_or_output(server, proxy, catalog_uri, tmp_path,
                                                models_dir):
    """A CLI run in its own process and Ray session: its output, its Ray logs, the lineage
    and the rejects tables must not contain the access key or the secret."""
    import subprocess
    import sys

    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: creds
manifest: {{uri: "{catalog_uri}"}}
output: {{uri: "s3://assets/creds"}}
prompt: {{template: "a {{{{ color }}}} {{{{ title }}}}"}}
storage: {{endpoint_url: "{proxy.endpoint_url}", addressing_style: path}}
stages:
  - {{kind: generate, model: synthetic, params: {{width: 32, height: 32}}}}
  - {{kind: identity, model: passthrough, params: {{fail_skus: ["{FAIL}"]}}}}
""")
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # AF_UNIX paths are short
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "FACTORY_LOG_LEVEL": "DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "factory.cli.main", "run", str(spec),
                           "--run-id", "creds-run"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 1, proc.stderr[-3000:]  # partial: 3 rejected, 1 failed
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    client = server.client()
    for table in ("lineage.parquet", "rejects.parquet"):
        texts[table] = client.get_object(Bucket="assets", Key=f"creds/runs/creds-run/{table}")[
            "Body"].read().decode("latin-1")
    scanned = 0
    for path in ray_tmp.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            texts[str(path)] = path.read_bytes().decode("latin-1")
            scanned += 1
    assert scanned > 5  # the Ray session's logs were there to look at
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
    for name, text in texts.items():
        assert SECRET_KEY not in text, f"secret found in {name}"
        assert ACCESS_KEY not in text, f"access key found in {name}"


def test_store_create_only_modes(server, proxy):
    """Conditional PUT where honoured; the checked mode where a server ignores it."""
    store = Store("s3://assets/modes", S3Options(endpoint_url=proxy.endpoint_url,
                                                  addressing_style="path"))
    settled = store.preflight("r")
    assert settled.s3.create_only == "if-none-match"  # moto honours If-None-Match
    assert settled.put_if_absent("assets/a.png", b"one") is True
    assert settled.put_if_absent("assets/a.png", b"two") is False
    checked = Store(store.uri, S3Options(endpoint_url=proxy.endpoint_url,
                                         addressing_style="path", create_only="checked"))
    assert checked.put_if_absent("assets/a.png", b"three") is False
    assert checked.put_if_absent("assets/b.png", b"four") is True
    assert settled.read_bytes("assets/a.png") == b"one"
    assert not is_committed(settled, "r")


@pytest.mark.parametrize("status", [403, 500])
def test_a_store_that_fails_for_good_mid_run_commits_nothing_and_the_rerun_resumes(
        server, proxy, catalog_uri, local_ray, models_dir, tmp_path, status):
    """After 12 asset PUTs every further PUT gets 403 or 500 (retried by botocore, then
    given up): the CLI exits 4, no lineage exists, no SKU is recorded as a 'failure'; the
    same command again resumes and accounts for every row exactly once."""
    import yaml
    from click.testing import CliRunner

    from factory.cli.exits import EXIT_PARTIAL, EXIT_RUN
    from factory.cli.main import main

    prefix = f"broken{status}"
    job = make_job(catalog_uri, proxy.endpoint_url, prefix)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "s3-job", "manifest": {"uri": catalog_uri},
        "output": {"uri": f"s3://assets/{prefix}"}, "seed": 11,
        "prompt": {"template": "a {{ color }} {{ title }}"},
        "storage": {"endpoint_url": proxy.endpoint_url, "addressing_style": "path",
                    "region": "us-east-1", "max_attempts": 2},
        "stages": [{"kind": "generate", "model": "synthetic",
                    "params": {"width": 48, "height": 48}},
                   {"kind": "recolor", "model": "lab",
                    "params": {"palette": ["#C8553D", "#2D3047"]}},
                   {"kind": "identity", "model": "passthrough",
                    "params": {"fail_skus": [FAIL]}}]}))
    proxy.reset_log()
    proxy.policy = FaultPolicy(fail_for_good_after=12, fail_status=status,
                               key_filter=f"/{prefix}/assets/")
    try:
        broken = CliRunner().invoke(main, ["run", str(spec)], catch_exceptions=False)
        # the failed run's write tasks outlive its driver here (one Ray for the module): under
        # the same faults they retry, give up and stop, and land nothing after the listing
        proxy.wait_quiet(3.0)
    finally:
        proxy.policy = FaultPolicy()
    assert broken.exit_code == EXIT_RUN, broken.output
    assert "did not finish and was not committed" in broken.output
    assert ("access denied" if status == 403 else "InternalError") in broken.output
    assert proxy.count(fault=str(status)) > 0
    keys = bucket_keys(server, prefix)
    assert not any(k.endswith("lineage.parquet") for k in keys)  # not committed
    landed = {k for k in keys if k.startswith("assets/")}
    assert 0 < len(landed) <= 12

    proxy.reset_log()
    again = CliRunner().invoke(main, ["run", str(spec)], catch_exceptions=False)
    assert again.exit_code == EXIT_PARTIAL, again.output  # 3 rejected, 1 injected failure
    (run_id, summary), = list_runs(Store(job.output.uri, job.s3))
    assert summary["failures_by_stage"] == {"identity": 1}  # no storage 'failure' per SKU
    rows = check_run(server, job, prefix, run_id)
    resumed = {r["output_key"] for r in rows if r["status"] == "ok" and not r["written"]}
    assert resumed == landed  # what landed before is kept, not written again
    puts = [r for r in proxy.requests if r.method == "PUT" and "/assets/" in r.path
            and f"/{prefix}/assets/" in r.path]
    assert len(puts) == 36 - len(landed)


def test_preflight_retries_transient_errors_and_never_guesses_the_write_mode(server, proxy):
    """A 503 on the conditional probe is retried by botocore and still finds If-None-Match; a
    probe that keeps failing is an error, never a silent switch to the 'checked' mode."""
    store = Store("s3://assets/probe", S3Options(endpoint_url=proxy.endpoint_url,
                                                  addressing_style="path", max_attempts=3))
    proxy.reset_log()
    proxy.policy = FaultPolicy(put_503_every=2, key_filter="/.preflight-")
    try:
        settled = store.preflight("p1")
    finally:
        proxy.policy = FaultPolicy()
    assert proxy.count(fault="503") >= 1
    assert settled.s3.create_only == "if-none-match" and settled.write_mode == "if-none-match"

    proxy.policy = FaultPolicy(fail_for_good_after=1, fail_status=500, key_filter="/.preflight-")
    try:
        with pytest.raises(StorageError, match="probe conditional writes"):
            store.preflight("p2")
    finally:
        proxy.policy = FaultPolicy()


def test_two_commits_of_one_run_id_leave_one_lineage(server, proxy):
    """The lineage write is create-only: the second commit loses and publishes nothing."""
    from factory.store.run_tables import read_summary
    from factory.run.recorder import RunRecorder

    store = Store("s3://assets/race", S3Options(endpoint_url=proxy.endpoint_url,
                                                 addressing_style="path")).preflight("race")
    first, second = RunRecorder(store, "race", ()), RunRecorder(store, "race", ())
    assert first.commit({"who": "first"}) is True
    assert second.commit({"who": "second"}) is False
    assert read_summary(store, "race")["who"] == "first"
    checked = Store(store.uri, S3Options(endpoint_url=proxy.endpoint_url,
                                         addressing_style="path", create_only="checked"))
    assert RunRecorder(checked, "race", ()).commit({"who": "third"}) is False
    assert read_summary(store, "race")["who"] == "first"
