"""A quiet terminal: `factory demo` and `factory lora demo`, run as a user runs them, print the
factory's own lines and nothing else (no library warnings, progress bars or Ray chatter).

Each command runs in a subprocess, in a fresh directory, with a fresh models directory, so the
tiny models' build is part of what is checked. "The factory's own" is the closed list of line
shapes below; anything else on stdout or stderr is a foreign line, and there must be none.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory.core import settings
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


def test_factory_demo_prints_only_its_own_lines(tmp_path, models):
    result = factory("demo", cwd=tmp_path, models=models, timeout=600)
    assert result.returncode == 0, result.stdout
    assert all(is_complete(models / name) for name in TINY_MODELS)  # it built them, quietly
    assert re.search(r"^run \S+: 17 rows → 13 assets", result.stdout, re.M), result.stdout
    foreign = foreign_lines(result.stdout)
    assert not foreign, f"{len(foreign)} foreign lines:\n" + "\n".join(foreign)


def test_factory_lora_demo_prints_only_its_own_lines(tmp_path, models):
    """Ray Train and the Ray Data inside it run in worker processes whose output Ray copies
    to this terminal: their INFO lines, a deprecation warning and Ray's restart advisory."""
    result = factory("lora", "demo", cwd=tmp_path, models=models, timeout=600)
    assert result.returncode == 0, result.stdout
    assert re.search(r"^LoRA \S+ trained", result.stdout, re.M), result.stdout
    assert re.search(r"^run \S+: 8 rows → 8 assets", result.stdout, re.M), result.stdout
    foreign = foreign_lines(result.stdout)
    assert not foreign, f"{len(foreign)} foreign lines:\n" + "\n".join(foreign)
