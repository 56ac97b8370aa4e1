"""The packages' imports form no cycle and the layers depend one way.

Imports are read from the source with ``ast``: module-level, inside functions, under
``TYPE_CHECKING``, and ``importlib.import_module("...")`` with a literal name all count. Every
module of every package is walked (``rglob``), so a new module is held to its package's rules.
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
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
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
    return {n for n in names if n in known and n != name and n not in PACKAGES
            and not name.startswith(n + ".")}


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
    edges = {"factory.spec.job": {"factory.deploy.schedule"}, "factory.deploy.schedule": {"factory.deploy.ray_jobs"},
             "factory.deploy.ray_jobs": {"factory.spec.job"}}
    assert find_cycle(edges) == ["factory.deploy.ray_jobs", "factory.spec.job", "factory.deploy.schedule",
                                 "factory.deploy.ray_jobs"]


def test_dependencies_run_one_way() -> None:
    edges = graph()
    assert "factory.cli.main" not in set().union(*edges.values())  # nobody imports the CLI
    assert _reaches(edges, "factory.spec.job").isdisjoint(
        {"factory.deploy.schedule", "factory.deploy.ray_jobs", "factory.deploy.kubernetes", "factory.cli.main"})
    assert _reaches(edges, "factory.deploy.ray_jobs").isdisjoint(
        {"factory.deploy.schedule", "factory.deploy.kubernetes", "factory.cli.main"})
    assert _reaches(edges, "factory.deploy.kubernetes").isdisjoint(
        {"factory.deploy.schedule", "factory.deploy.ray_jobs", "factory.cli.main"})
    assert "factory.deploy.ray_jobs" in edges["factory.deploy.schedule"]
    assert "factory.spec.job" in edges["factory.deploy.ray_jobs"]
    assert edges["factory.spec.cron"] == set()


@pytest.mark.parametrize("module", ["factory.deploy.kubernetes", "factory.deploy.schedule", "factory.deploy.ray_jobs",
                                    "factory.spec.job", "factory.spec.cron"])
def test_each_module_imports_on_its_own(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


#: The layers, bottom to top, and what each package must never import (a prefix matches a
#: package and everything in it).
NEVER = {
    "factory.core": ("factory.", "stages"),
    "stages": ("factory.catalog", "factory.spec", "factory.cost", "factory.sink", "factory.run",
               "factory.lora", "factory.deploy", "factory.cli"),
    "factory.store": ("factory.catalog", "factory.spec", "factory.cost", "factory.sink",
                      "factory.run", "factory.lora", "factory.deploy", "factory.cli"),
    "factory.spec": ("factory.run", "factory.sink", "factory.cost", "factory.lora",
                     "factory.deploy", "factory.cli"),
    "factory.cost": ("factory.run", "factory.lora", "factory.deploy", "factory.cli"),
    "factory.sink": ("factory.run", "factory.lora", "factory.deploy", "factory.cli"),
    "factory.run": ("factory.cli", "factory.deploy", "factory.lora"),
    "factory.deploy": ("factory.run", "factory.cli"),
    "factory.catalog": ("factory.run", "factory.cli"),
    "factory.lora": ("factory.cli",),
    # publishing a committed run: factory.core, store, spec, catalog and sink only
    "factory.publish": ("factory.run", "factory.cli", "factory.deploy", "factory.lora",
                        "factory.cost", "factory.notify", "stages"),
    # webhook notifications: factory.core, factory.store and factory.spec only
    "factory.notify": ("factory.catalog", "factory.cost", "factory.sink", "factory.run",
                       "factory.lora", "factory.deploy", "factory.cli", "factory.publish",
                       "stages"),
}


def breaches(edges: dict[str, set[str]]) -> list[str]:
    """``module -> import`` pairs that break ``NEVER``."""
    out = []
    for module, imports in sorted(edges.items()):
        for package, forbidden in NEVER.items():
            if module != package and not module.startswith(package + "."):
                continue
            for target in sorted(imports):
                if package == "factory.core" and target.startswith("factory.core"):
                    continue
                if any(target == f or target.startswith(f if f.endswith(".") else f + ".")
                       for f in forbidden):
                    out.append(f"{module} -> {target}")
    return out


def test_the_layers_depend_one_way() -> None:
    assert breaches(graph()) == []


def test_nothing_outside_the_cli_imports_it() -> None:
    edges = graph()
    users = {m for m, imports in edges.items() if any(t.startswith("factory.cli") for t in imports)}
    assert {m for m in users if not m.startswith("factory.cli")} == set()


def test_an_upward_import_is_caught() -> None:
    edges = {"stages.base": {"factory.run.pipeline"}, "factory.spec.job": {"factory.core.settings"},
             "factory.core.images": {"factory.store.s3"}}
    assert breaches(edges) == ["factory.core.images -> factory.store.s3",
                               "stages.base -> factory.run.pipeline"]


def test_factory_keeps_a_handful_of_top_level_modules() -> None:
    assert sorted(p.name for p in (REPO / "factory").glob("*.py")) == ["__init__.py"]
