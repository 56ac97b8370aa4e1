"""The README stays a five-minute read whose links work, and no page reads like a diary.

The documentation site itself (``mkdocs.yml``, ``docs/``) is checked by ``mkdocs build
--strict``: broken links and anchors, pages missing from the nav. Its CLI reference is
generated from the click group by ``docs/hooks.py``; the last tests run that hook and, where
MkDocs is installed, the strict build.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 300

#: ``[text](target)`` and ``![alt](target)``; the target up to whitespace or ``)``.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
#: ``issue 12``, ``issues 9 and 14``, ``PR #3``; and a bare ``#16`` (not a colour, an anchor,
#: a heading or part of a word or path).
_ISSUE_WORD = re.compile(r"\b(?:issues?|PRs?|pull requests?)\s*#?\d+", re.IGNORECASE)
_ISSUE_HASH = re.compile(r"(?<![\w&/\"'`#])#\d{1,4}\b")
_OUTSIDE = re.compile(r"\.\./shared\b")
_DIARY = re.compile(r"\b(?:previous|last|earlier) (?:session|round)s?\b|\bearlier rounds?\b",
                    re.IGNORECASE)


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _links(text: str) -> list[str]:
    # code spans and fenced blocks hold examples, not links
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move reference material "
        "into docs/")


def test_readme_links_resolve_inside_the_repository() -> None:
    problems = []
    for target in _links(README.read_text(encoding="utf-8")):
        if target.startswith("#"):
            continue
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            problems.append(f"{target}: a link outside the repository")
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        if ROOT not in path.parents and path != ROOT:
            problems.append(f"{target}: leaves the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
    assert not problems, "README.md links:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_names_no_issue_history_or_outside_path(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    problems = []
    for pattern, what in ((_ISSUE_WORD, "an issue number"), (_ISSUE_HASH, "an issue number"),
                          (_OUTSIDE, "a path outside the repository"),
                          (_DIARY, "project history")):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"line {line}: {what}: {match.group(0)!r}")
    assert not problems, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_every_command() -> None:
    import click

    hooks = _hooks()
    markdown = hooks.cli_markdown()
    group = hooks.load_group()

    def names(command: click.Command, path: list[str]) -> list[str]:
        if isinstance(command, click.Group):
            return [*([" ".join(path)] if len(path) > 1 else []),
                    *(n for name, sub in command.commands.items()
                      for n in names(sub, [*path, name]))]
        return [" ".join(path)]

    for name in names(group, ["factory"]):
        assert re.search(rf"^#+ {re.escape(name)}$", markdown, re.MULTILINE), name
    assert "Sentinel" not in markdown
    page = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert hooks.MARKER in page


def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "reference" / "cli" / "index.html").exists()
