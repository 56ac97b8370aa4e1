"""Object storage at scale, counted at the S3 proxy: existing work found with one LIST per
1,000 keys rather than a HEAD per row, and run summaries read as ranged GETs of the footer.

Reuses test_s3's server, proxy and catalog (40 rows: 36 assets, 1 failure, 3 rejections).
"""

from __future__ import annotations

import pytest

from factory.store.run_tables import list_runs, read_lineage
from factory.store.storage import Store
from tests.integration.test_s3 import (bucket_keys, catalog_uri, make_job, proxy,  # noqa: F401
                                       s3_env, server)

pytestmark = pytest.mark.integration


def test_a_rerun_finds_existing_work_with_one_list_and_no_head(server, proxy, catalog_uri,
                                                               local_ray, models_dir):
    from factory.run.pipeline import run_job

    job = make_job(catalog_uri, proxy.endpoint_url, "listing")
    first = run_job(job)
    proxy.reset_log()
    rerun = run_job(job.with_overrides(run_id="listing-again"))
    assert (rerun.counts.assets, rerun.counts.written) == (36, 0)
    asset_heads = [r for r in proxy.requests if r.method == "HEAD" and "/assets/" in
                   r.path.split("?")[0].removeprefix("/assets")]
    lists = [r for r in proxy.requests if r.method == "GET" and "list-type=2" in r.path
             and "listing%2Fassets" in r.path]
    assert asset_heads == [] and len(lists) == 1, [(r.method, r.path) for r in proxy.requests]
    store = Store(job.output.uri, job.s3)
    lineage, _ = read_lineage(store, "listing-again")
    sizes = {o["Key"].removeprefix("listing/"): o["Size"] for o in server.client().list_objects_v2(
        Bucket="assets", Prefix="listing/assets/")["Contents"]}
    ok = [r for r in lineage.to_pylist() if r["status"] == "ok"]
    assert {r["output_key"]: r["bytes"] for r in ok} == sizes  # sizes from the listing
    assert all(r["sha256"] == "" and not r["written"] for r in ok)  # nothing re-read

    proxy.reset_log()
    runs = dict(list_runs(store))
    assert set(runs) == {first.run_id, "listing-again"} and runs["listing-again"]["assets"] == 36
    lineage_gets = [r for r in proxy.requests if r.method == "GET" and "lineage.parquet" in r.path]
    assert lineage_gets and all("Range" in r.request_headers or "range" in r.request_headers
                                for r in lineage_gets)  # the footer, not the whole table
