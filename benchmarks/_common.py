"""Shared set-up for the benchmarks: a catalog, a job, a local Ray."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from factory.catalog.demo import write_catalog  # noqa: E402
from factory.spec.job import Job, parse_job  # noqa: E402


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))


def catalog(directory: Path, rows: int) -> Path:
    return write_catalog(directory / "catalog.csv", rows, bad_rows=False)


def job(directory: Path, manifest: Path, stages: list[dict[str, Any]], **extra: Any) -> Job:
    spec = {"name": directory.name, "manifest": {"uri": str(manifest)},
            "output": {"uri": str(directory / "out")}, "seed": 5,
            "prompt": {"template": "photo of a {{ color }} {{ title }}"}, "stages": stages}
    spec.update(extra)
    return parse_job(spec, source=f"<{directory.name}>")


def work_rows(job_: Job, limit: int | None = None) -> dict[str, Any]:
    """The job's manifest rows as the stages see them (numpy columns, every row ``ok``), made
    the way a user's own script would: read the CSV, render each row's prompt and seed."""
    import csv

    import numpy as np

    from factory.run.rows import RowRules, validate_row

    rules = RowRules(seed=job_.seed, variant=job_.variant, prompt_template=job_.prompt_template,
                     negative_template=job_.negative_template)
    with open(job_.manifest_uri, newline="", encoding="utf-8") as handle:
        items = [validate_row(fields, rules) for fields in csv.DictReader(handle)][:limit]
    columns = {key: np.array([item[key] for item in items],
                             dtype=np.int64 if key in ("seed", "width", "height") else object)
               for key in items[0]}
    columns["status"] = np.array(["ok"] * len(items), dtype=object)
    return columns


def start_ray(job_: Job) -> None:
    from factory.run.pipeline import init_ray
    from factory.run.placement import logical_cpus_needed

    init_ray(None, logical_cpus=logical_cpus_needed(job_))
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
