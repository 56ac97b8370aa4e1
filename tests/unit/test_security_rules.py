"""Rules of the code itself that keep a hostile model repository from running code here:
weights load without ``trust_remote_code`` and without pickle unless a spec allows it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for package in ("factory", "stages") for p in (ROOT / package).rglob("*.py"))


def test_no_loader_call_trusts_remote_code():
    """No call in the product passes ``trust_remote_code`` (a repository's own Python would
    run on load); the libraries' default, False, is the only value used."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for kw in node.keywords
                          if kw.arg == "trust_remote_code"]
                found += [f"{path.relative_to(ROOT)}:{node.lineno}" for kw in node.keywords
                          if kw.arg is None and "trust_remote_code" in ast.unparse(kw.value)]
    assert SOURCES and found == []
