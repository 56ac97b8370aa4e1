"""The work list a run decides every row's fate on: one fused task per read split."""

from __future__ import annotations

from collections import Counter

import pytest

from factory.catalog.demo import write_catalog
from factory.catalog.manifest import ManifestDatasource, scan
from factory.spec.job import parse_job
from factory.store.storage import Store

pytestmark = pytest.mark.integration


def test_read_validate_and_existence_check_run_as_one_task_per_split(tmp_path, local_ray):
    from factory.run.pipeline import _work_list

    catalog = write_catalog(tmp_path / "catalog.csv", 600)  # rows 11, 21, 31 are bad
    job = parse_job({
        "name": "fused", "manifest": {"uri": str(catalog)},
        "output": {"uri": str(tmp_path / "out")},
        "prompt": {"template": "a {{ color }} {{ title }}"},
        "stages": [{"kind": "generate", "model": "synthetic",
                    "params": {"width": 16, "height": 16}}]})
    info = scan(job.manifest_uri, job.manifest_format, default_variant=job.variant)
    work = _work_list(job, info, Store(job.output.uri), limit=None)
    splits = ManifestDatasource(job.manifest_uri, job.manifest_format).num_read_tasks()
    assert splits == 1 and work.num_blocks() == splits  # blocks are never cut again
    assert ("ReadReadManifest->MapBatches(validate_batch)->MapBatches(mark_existing)"
            in work.stats())
    fates = Counter(work.to_pandas()["status"])
    assert sum(fates.values()) == 600 and fates["rejected"] == 3, fates
