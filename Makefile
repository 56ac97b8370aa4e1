# `make demo` and `make test` set everything up on a fresh machine with only Python.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# A CPU build of torch where there is no CUDA, so pip pulls no CUDA wheels. Override TORCH
# (e.g. TORCH=torch) on a GPU machine; TORCH_INDEX adds an index for the torch wheel only.
TORCH       ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
TORCH_INDEX ?=
# Nothing may download weights: tiny models are built locally and loaded from disk.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test bench s3-server clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/factory demo

test: $(STAMP)
	$(PY) -m pytest -q tests

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
