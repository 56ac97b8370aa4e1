"""`factory demo` and `factory lora demo`, run as a user runs them.

A quiet terminal: each prints the factory's own lines and nothing else (no library warnings,
progress bars or Ray chatter). Each command runs in a subprocess, in a fresh directory, with a
fresh models directory, so the tiny models' build is part of what is checked. "The factory's
own" is the closed list of line shapes below; anything else on stdout or stderr is a foreign
line, and there must be none.

What the demo renders: `jobs/product-photos.yaml` as shipped, every SKU from its own photo,
every lineage row with its product's fidelity, bad photos rejected with their reasons, the
report showing the figure, exact accounting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory.core import settings
from factory.store.run_tables import list_runs, read_lineage, read_rejects
from factory.store.storage import Store
from stages.tiny.common import is_complete
from stages.tiny.models import TINY_MODELS

pytestmark = pytest.mark.integration

#: The factory's own lines: what `factory demo` / `factory run` print (the spec's warnings, the
#: job, the dashboard, the plan, progress, the summary) and what `factory lora demo` adds.
#: The factory's own INFO log records show too (FACTORY_LOG_LEVEL, default INFO); its WARNING
#: and ERROR records are not listed: a demo that warns is not a quiet demo.
OWN_LINES = [re.compile(pattern) for pattern in (
    r"",                                              # the blank line before the summary
    r"warning: \S+: .+",                              # a spec warning (file: where: what)
    r"job \S+: .+ → \S+",                             # the job's stages and output
    r"dashboard: http://\S+( .*)?",
    r"INFO (factory|stages)(\.\w+)*: .+",            # the factory's own INFO log records
    r"plan for run \S+: \d+ rows: .+",
    r"  \d+/\d+ rows: \d+ assets \(.+",               # progress (a line every few seconds)
    r"run \S+: \d+ rows → \d+ assets .+",             # the summary, then where things are
    r"  (assets|lineage|rejects|report|qa gate): .+",
    # factory lora demo
    r"brand images: \S+",
    r"training \S+: LoRA r=\d+ on .+ → \S+",
    r"LoRA \S+ (trained|already trained).*",
    r"  (adapter|record): +\S+",
    r"  in a job spec: params: .+",
    r"render job: \S+",
)]


def foreign_lines(output: str) -> list[str]:
    return [line for line in output.splitlines()
            if not any(pattern.fullmatch(line) for pattern in OWN_LINES)]


def factory(*args: str, cwd: Path, models: Path, timeout: int) -> subprocess.CompletedProcess:
    """`factory ARGS` as a user runs it, stdout and stderr in one stream, default log level."""
    exe = Path(sys.executable).with_name("factory")
    command = [str(exe)] if exe.exists() else [
        sys.executable, "-c", "from factory.cli.main import main; main()"]
    env = {**os.environ, settings.MODELS_DIR: str(models), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in (settings.LOG_LEVEL, settings.RAY_ADDRESS, "RAY_ADDRESS"):
        env.pop(name, None)
    return subprocess.run([*command, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quiet") / "models"  # empty: the demo builds it


@pytest.fixture(scope="module")
def demo(tmp_path_factory, models) -> tuple[subprocess.CompletedProcess, Path]:
    """`factory demo` once, in a fresh directory: its output and where it wrote."""
    cwd = tmp_path_factory.mktemp("demo")
    return factory("demo", cwd=cwd, models=models, timeout=600), cwd / "demo-out"


def test_factory_demo_prints_only_its_own_lines(demo, models):
    result, _ = demo
    assert result.returncode == 0, result.stdout
    assert all(is_complete(models / name) for name in TINY_MODELS)  # it built them, quietly
    assert re.search(r"^run \S+: 17 rows → 13 assets", result.stdout, re.M), result.stdout
    foreign = foreign_lines(result.stdout)
    assert not foreign, f"{len(foreign)} foreign lines:\n" + "\n".join(foreign)


def test_the_demo_renders_each_sku_from_its_own_photo(demo):
    result, out = demo
    assert result.returncode == 0, result.stdout
    assert "17 rows: 4 rejected" in result.stdout
    store = Store(str(out))
    (run_id, _), = list_runs(store)
    lineage, summary = read_lineage(store, run_id)
    rejects = {r["row"]: r for r in read_rejects(store, run_id).to_pylist()}
    assert (summary["manifest_rows"], summary["assets"], summary["failed"],
            summary["rejected"]) == (17, 13, 0, 4)
    assert sorted(rejects) == [14, 15, 16, 17]
    assert all(r["field"] == "image_url" for r in rejects.values())
    assert "no such file" in rejects[14]["reason"] and "0 bytes" in rejects[15]["reason"]
    assert "not an image" in rejects[16]["reason"] and "no photo" in rejects[17]["reason"]
    rows = lineage.to_pylist()
    assert len({r["source_sha256"] for r in rows}) == 11  # 13 variants, 11 distinct photos
    for row in rows:
        assert row["status"] == "ok" and row["qa"] == "pass"
        assert 0.0 <= row["fidelity_delta_e"] <= 1.0, row
        assert row["photo"].startswith("photos/")
        assert (out / row["output_key"]).is_file()
        assert (out / "sources" / row["source_sha256"][:2] / row["source_sha256"]).is_file()
    report = (out / "runs" / run_id / "report.html").read_text()
    assert "product ΔE" in report


def test_factory_lora_demo_prints_only_its_own_lines(tmp_path, models):
    """Ray Train and the Ray Data inside it run in worker processes whose output Ray copies
    to this terminal: their INFO lines, a deprecation warning and Ray's restart advisory."""
    result = factory("lora", "demo", cwd=tmp_path, models=models, timeout=600)
    assert result.returncode == 0, result.stdout
    assert re.search(r"^LoRA \S+ trained", result.stdout, re.M), result.stdout
    assert re.search(r"^run \S+: 8 rows → 8 assets", result.stdout, re.M), result.stdout
    foreign = foreign_lines(result.stdout)
    assert not foreign, f"{len(foreign)} foreign lines:\n" + "\n".join(foreign)
