# `make demo` and `make test` set everything up on a fresh machine with only Python.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The one lock (requirements/lock.py writes it): every runtime dependency's exact version, for
# Python 3.11 (the image's). `setup` installs with it as constraints where the venv's Python is
# 3.11 (elsewhere pip resolves freely); the image installs it; cluster/runtime-env.yaml lists it.
LOCK   := requirements/lock.txt
LOCKED  = $(shell $(PYTHON) -c 'import sys; print("-c $(LOCK)" if sys.version_info[:2] == (3, 11) else "")')
# torch first, at the locked version: a CPU build where there is no CUDA (TORCH_INDEX may add
# an index for the torch wheel only), so pip pulls no CUDA wheels; the lock then holds it.
TORCH       ?= $(shell sed -n 's/^\(torch==[^ ]*\).*/\1/p' $(LOCK))
TORCH_INDEX ?=
# ONNX Runtime's CPU build, or its GPU build where there is CUDA (never both).
EXTRAS      ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu,test || echo cpu,test)
# `make image`: the Ray 2.60 CUDA image + the lock + this repository (Dockerfile).
VERSION     := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE       ?= asset-factory:$(VERSION)
# Nothing may download weights: tiny models are built locally and loaded from disk.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test docs bench s3-server clean lock image

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet $(LOCKED) -e ".[$(EXTRAS)]"
	@# numba compiles pymatting's kernels (rembg imports them) on the first import: ~50 CPU s
	@# here, once, into its cache, not in the first run's segment actors or the first test
	$(PY) -c "import rembg"
	touch $(STAMP)

# Rewrite the lock and cluster/runtime-env.yaml from the installed environment (after a
# dependency change in pyproject.toml: `pip install` it into .venv, run the tests, then this).
lock: $(STAMP)
	$(PY) requirements/lock.py

# Needs a Docker daemon; nothing else here does. Push with `docker push $(IMAGE)`.
image:
	docker build --tag $(IMAGE) .

demo: $(STAMP)
	$(VENV)/bin/factory demo

# Test modules run in TEST_WORKERS processes (pytest-xdist), a module's tests together in one
# (their module fixtures, a local Ray, an S3 server, are made once). Two keep two cores busy
# while the other waits on a Ray start, a subprocess or a kill.
TEST_WORKERS ?= 2

# The report's browser test needs Chromium: installed where missing and the machine allows
# (root with apt-get); elsewhere that test is skipped and says why.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
	  && [ "$$(id -u)" = 0 ] && { apt-get install -y --no-install-recommends chromium \
	  || { apt-get update && apt-get install -y --no-install-recommends chromium; }; }; } \
	  >/dev/null 2>&1 || echo "chromium not installed: the report's browser test will be skipped"
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The documentation site (docs/, mkdocs.yml) into site/; `make test` builds it too (strict).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/p2_overhead.py
	$(PY) benchmarks/p1_efficiency.py
	$(PY) benchmarks/s3_vs_local.py

# A local S3-compatible server (moto) on loopback, to try the s3:// paths by hand.
S3_PORT ?= 9000
s3-server: $(STAMP)
	$(PY) -m tests.support.s3_server --port $(S3_PORT)

clean:
	rm -rf build demo-out
