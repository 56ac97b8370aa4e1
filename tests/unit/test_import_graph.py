"""The package's imports form no cycle, and the job-level modules depend one way:

    cli -> schedule -> jobs -> spec -> cron
    cli -> kubernetes -> spec, cron

Imports are read from the source with ``ast``: module-level, inside functions, under
``TYPE_CHECKING``, and ``importlib.import_module("...")`` with a literal name all count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("factory", "stages")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return {n for n in names if n in known and n != name and n not in PACKAGES}


def graph() -> dict[str, set[str]]:
    """``{module: modules of this repository it imports}``."""
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt) and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if not state.get(node) and (cycle := visit(node)):
            return cycle
    return None


def _reaches(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    edges = {"factory.spec": {"factory.schedule"}, "factory.schedule": {"factory.jobs"},
             "factory.jobs": {"factory.spec"}}
    assert find_cycle(edges) == ["factory.jobs", "factory.spec", "factory.schedule",
                                 "factory.jobs"]


def test_dependencies_run_one_way() -> None:
    edges = graph()
    assert "factory.cli" not in set().union(*edges.values())  # nobody imports the CLI
    assert _reaches(edges, "factory.spec").isdisjoint(
        {"factory.schedule", "factory.jobs", "factory.kubernetes", "factory.cli"})
    assert _reaches(edges, "factory.jobs").isdisjoint(
        {"factory.schedule", "factory.kubernetes", "factory.cli"})
    assert _reaches(edges, "factory.kubernetes").isdisjoint(
        {"factory.schedule", "factory.jobs", "factory.cli"})
    assert "factory.jobs" in edges["factory.schedule"]
    assert "factory.spec" in edges["factory.jobs"]
    assert edges["factory.cron"] == set()


@pytest.mark.parametrize("module", ["factory.kubernetes", "factory.schedule", "factory.jobs",
                                    "factory.spec", "factory.cron"])
def test_each_module_imports_on_its_own(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
