"""The render plan's read is held to ``ReadAhead``'s bound ahead of its first actor pool, and no
other dataset's is."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_the_render_plan_holds_its_read_and_the_operators_before_its_first_pool(
        tmp_path, local_ray, monkeypatch):
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES, ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    )

    from factory.catalog.demo import write_catalog
    from factory.catalog.manifest import scan
    from factory.run.pipeline import build_datasets
    from factory.run.read_ahead import ReadAhead
    from factory.run.work import render_list
    from factory.spec.job import parse_job
    from factory.store.storage import Store

    catalog = write_catalog(tmp_path / "catalog.csv", 40)
    job = parse_job({"name": "held", "manifest": {"uri": str(catalog)},
                     "output": {"uri": str(tmp_path / "out")},
                     "stages": [{"kind": "generate", "model": "synthetic",
                                 "params": {"width": 16, "height": 16}}]})
    store = Store(job.output.uri)
    info = scan(job.manifest_uri, job.manifest_format, default_variant=job.variant)
    ds = build_datasets(job, render_list(job, info, store, None, limit=None), store)
    policies = ds.context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY)
    assert policies == [*ENABLED_BACKPRESSURE_POLICIES, ReadAhead]  # Ray's own stay on
    # the driver's context, and so every other dataset, keeps Ray Data's defaults
    current = local_ray.data.DataContext.get_current()
    assert ReadAhead not in current.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
                                               ENABLED_BACKPRESSURE_POLICIES)

    held: list[list[str]] = []  # the operators each executor's policy holds, by name
    start = ReadAhead.__init__

    def recorded(self, *args):
        start(self, *args)
        held.append([op.name for op in self._chains])

    monkeypatch.setattr(ReadAhead, "__init__", recorded)
    rows = ds.take_all()
    assert len(rows) == 37 and {row["status"] for row in rows} == {"ok"}  # 3 bad rows
    assert len(held) == 1 and held[0][0].startswith("ReadReadManifest->")
    assert not any("SyntheticStage" in name or "write_assets" in name for name in held[0])
    assert any(name.startswith("StreamingRepartition") for name in held[0])
