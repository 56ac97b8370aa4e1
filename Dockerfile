# The asset factory on the Ray 2.60 CUDA image: Ray's own Python 3.11 and CUDA runtime, the
# locked dependencies (requirements/lock.txt, the versions the tests ran with) with the GPU
# substitutions, this repository at /app, and the tiny models. Build: `make image`.
#
# BASE_IMAGE may name the -cuXXX tag that -gpu aliases, or a digest, to pin it further; its Ray
# and Python must stay those of the lock (a unit test checks the default).
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${BASE_IMAGE}

# The PyTorch index with the CUDA build of the locked torch version (requirements/lock.py).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV FACTORY_MODELS_DIR=/app/build/models \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0

# The Ray image runs as the user ray (uid 1000, group users): give it the app directory.
USER 0
RUN install -d -o 1000 -g 100 /app
USER 1000:100
WORKDIR /app

# 1. The lock, as the image installs it (the GPU substitutions of requirements/lock.py):
#    torch's CUDA build first, at the locked version, with the nvidia-* libraries its wheel
#    pins; then every locked version, onnxruntime-gpu for onnxruntime (the CPU build shares its
#    files, so none may be left); then a check that what is installed is exactly the lock.
COPY --chown=1000:100 requirements/lock.txt requirements/lock.py requirements/
RUN sed -e 's/^onnxruntime==/onnxruntime-gpu==/' requirements/lock.txt > /tmp/lock-gpu.txt \
    && python -m pip uninstall --yes onnxruntime \
    && python -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        "$(grep '^torch==' requirements/lock.txt)" \
    && python -m pip install --no-cache-dir -r /tmp/lock-gpu.txt \
    && rm /tmp/lock-gpu.txt \
    && python requirements/lock.py --verify-installed gpu

# 2. The project itself (its dependencies are all in place: no resolution here), the job specs
#    and the example manifests; the jobs run from /app.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 factory/ factory/
COPY --chown=1000:100 stages/ stages/
COPY --chown=1000:100 jobs/ jobs/
COPY --chown=1000:100 manifests/ manifests/
RUN python -m pip install --no-cache-dir --no-deps --no-build-isolation --editable . \
    && factory models list > /dev/null \
    && python -c "import rembg"  # numba's compiled pymatting kernels (~50 CPU s) in the image

# 3. The tiny models of the demo and of jobs/seasonal-catalog.yaml, built offline, so that a
#    tiny: source resolves on every node of the cluster (FACTORY_MODELS_DIR).
RUN HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 factory models make-tiny
