"""Write the lock (requirements/lock.txt) and the stock-image runtime_env from this environment.

Python 3.11 (tomllib; the image's Python, for which the lock is made).

    python requirements/lock.py            # what `make lock` runs: rewrite both files
    python requirements/lock.py --check    # exit 1 if either differs from what it would write
    python requirements/lock.py --verify-installed gpu   # the image build: installed == lock?

The lock holds the exact version of every distribution in asset-factory's runtime closure
(``[project].dependencies`` plus the ``cpu`` extra, with the extras each requirement names),
as installed in the running environment: the one the tests ran in. Test-only packages are not
in it. Local version labels are dropped (``torch 2.13.0+cpu`` is locked as ``torch==2.13.0``):
the CPU or CUDA build of one version is chosen by the index it comes from.

GPU substitutions, the only differences between the tests' set and the image's:
``GPU_SUBSTITUTIONS`` (a distribution replaced by another of the same version) and the CUDA
build of torch from ``TORCH_CUDA_INDEX``; the CUDA wheels bring their own ``nvidia-*`` runtime
libraries, pinned by torch itself.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
RUNTIME_ENV = ROOT / "cluster" / "runtime-env.yaml"
#: The extras of asset-factory whose requirements are locked (the CPU build: what tests run).
EXTRAS = ("cpu",)
#: Distribution -> the one the GPU image installs instead, at the same version.
GPU_SUBSTITUTIONS = {"onnxruntime": "onnxruntime-gpu"}
#: Where the image and the runtime_env get the CUDA build of the locked torch version.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
#: Provided by the Ray image itself (the same version: a test checks the Dockerfile's base).
IN_RAY_IMAGE = ("ray",)


def canonical(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """The version without its local label (``2.13.0+cpu`` -> ``2.13.0``)."""
    return Version(version).public


def roots(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """asset-factory's runtime requirements: its dependencies and the ``EXTRAS``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in EXTRAS:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements pull in, by canonical name.

    Raises:
        LookupError: A required distribution is not installed here.
    """
    env = default_environment()
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [req for req in requirements if _wanted(req, set(), env)]
    while todo:
        req = todo.pop()
        key = (canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise LookupError(f"{req.name} is required but not installed; run `make setup`"
                              ) from None
        found[key[0]] = dist
        todo += [child for child in map(Requirement, dist.requires or [])
                 if _wanted(child, req.extras, env)]
    return found


def _wanted(req: Requirement, extras: set[str], env: dict[str, str]) -> bool:
    """Whether ``req``'s marker holds here, for the parent's ``extras`` (or none)."""
    return req.marker is None or any(req.marker.evaluate({**env, "extra": extra})
                                     for extra in (extras or {""}))


def locked() -> dict[str, str]:
    """``{name: version}`` of the runtime closure installed here, sorted by name."""
    dists = closure(roots())
    dists.pop("asset-factory", None)
    return {dist.metadata["Name"]: public(dist.version)
            for _, dist in sorted(dists.items())}


def lock_text(pins: dict[str, str]) -> str:
    """The lock file's text."""
    subs = ", ".join(f"{a} -> {b}" for a, b in GPU_SUBSTITUTIONS.items())
    head = f"""\
# The one lock: exact versions of asset-factory's runtime dependencies (pyproject's
# dependencies and its {', '.join(EXTRAS)} extra), as installed where the tests ran (Python 3.11).
# Written by `make lock` (requirements/lock.py); tests/unit/test_image.py checks it against the
# test environment. Used by `make setup` (pip constraints), the Dockerfile (the image) and
# cluster/runtime-env.yaml (a runtime_env for stock Ray images).
# GPU substitutions (image and runtime_env), at the locked versions: {subs};
# torch's CUDA build from {TORCH_CUDA_INDEX}.
"""
    return head + "".join(f"{name}=={version}\n" for name, version in pins.items())


def gpu_pins(pins: dict[str, str]) -> list[str]:
    """The lock as the GPU image installs it: substitutions made."""
    return [f"{GPU_SUBSTITUTIONS.get(canonical(name), name)}=={version}"
            for name, version in pins.items()]


def runtime_env_text(pins: dict[str, str]) -> str:
    """cluster/runtime-env.yaml: the lock as a Ray runtime_env for stock Ray GPU images."""
    lines = "".join(f"    - {pin}\n" for pin in gpu_pins(pins)
                    if canonical(pin.split("==")[0]) not in IN_RAY_IMAGE)
    return f"""\
# A Ray runtime_env with the locked dependencies, for a cluster on the stock Ray image
# (rayproject/ray:{pins.get('ray', '?')}-py311-gpu) instead of the one `make image` builds.
# Written by `make lock` from requirements/lock.txt (GPU substitutions made; ray itself is the
# image's).
# Each node installs it once into a virtualenv of its own (minutes: torch is large). Use it as
#   ray job submit --runtime-env cluster/runtime-env.yaml --working-dir . -- \\
#     python -m factory.cli.main run jobs/catalog-gpu.yaml
# or as a RayJob's runtimeEnvYAML.
pip:
  packages:
{lines}  pip_install_options: ["--extra-index-url", "{TORCH_CUDA_INDEX}"]
env_vars:
  FACTORY_RAY_ADDRESS: auto
  PYTHONUNBUFFERED: "1"
"""


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{name: version}`` from a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            pins[name] = version
    return pins


def mismatches(pins: dict[str, str], *, gpu: bool) -> list[str]:
    """How the installed distributions differ from ``pins``; empty if they all match.

    Args:
        pins: The lock (``read_lock``).
        gpu: Expect the GPU substitutions (the image) instead of the locked names.
    """
    problems = []
    for name, version in pins.items():
        wanted = GPU_SUBSTITUTIONS.get(canonical(name), name) if gpu else name
        try:
            installed = public(metadata.version(wanted))
        except metadata.PackageNotFoundError:
            problems.append(f"{wanted}: locked at {version}, not installed")
            continue
        if installed != version:
            problems.append(f"{wanted}: locked at {version}, installed {installed}")
    if gpu:
        for cpu_name in GPU_SUBSTITUTIONS:
            try:
                problems.append(f"{cpu_name} {metadata.version(cpu_name)} is installed beside "
                                f"{GPU_SUBSTITUTIONS[cpu_name]}: remove it")
            except metadata.PackageNotFoundError:
                pass
    return problems


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) the lock and the runtime_env, or verify an installed set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--verify-installed", choices=("cpu", "gpu"),
                        help="check that this environment has exactly the locked versions "
                             "(gpu: with the GPU substitutions; what the image build runs)")
    args = parser.parse_args(argv)
    if args.verify_installed:
        problems = mismatches(read_lock(), gpu=args.verify_installed == "gpu")
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(read_lock()) - len(problems)} locked versions installed, "
              f"{len(problems)} problems")
        return 1 if problems else 0
    pins = locked()
    stale = []
    for path, text in ((LOCK, lock_text(pins)), (RUNTIME_ENV, runtime_env_text(pins))):
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)} ({len(pins)} pins)")
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make lock`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
