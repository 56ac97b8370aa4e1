"""Which precision a stage's model runs in, for the device its actor landed on.

A torch stage's ``dtype`` param (or the job's ``dtype``) is a policy: ``auto`` (the default),
or a pinned ``float32``, ``bfloat16`` or ``float16``. ``auto`` resolves per device:

* on CUDA, the card's half precision (``StageCard.cuda_dtype``);
* on a CPU with native bf16 maths (AMX-BF16 or AVX512-BF16, ``cpu_bf16``), ``bfloat16``:
  the tiny Swin2SR ran 1.95x as fast as in float32 on one (``benchmarks/precision_fidelity.py``;
  the tiny SD pipelines, 32-64 channels wide, ran at 0.93-1.00x);
* on any other CPU (AVX2 only, ARM), ``float32``: bf16 there is emulated and slower.

What the CPU can do is read once per process. The resolution is deterministic for a device
class, so a job's keys carry the policy and the rule it resolves by (``policy_key``), never
the dtype an actor happened to get; the lineage's ``<stage>_placement`` records that one.

Memory layout: ``channels_last`` for a diffusion pipeline's UNet and VAE on CUDA only
(``channels_last_pays``). Attention: diffusers and transformers already run
``torch.nn.functional.scaled_dot_product_attention`` with torch 2, so nothing is added here.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

#: What a job or stage may ask for.
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
#: /proc/cpuinfo flags of native bf16 dot products (Intel AMX tiles; AVX512 VDPBF16PS).
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
#: The rule ``auto`` resolves by, named in keys: a change to it (or to a card's ``cuda_dtype``)
#: is a change to what ``auto`` renders.
AUTO_RULE = "cpu-bf16=bfloat16,cpu=float32"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first processor's feature flags in ``cpuinfo``; empty where there is none (not
    Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_bf16() -> bool:
    """Whether this machine's CPU runs bf16 maths natively, so that ``auto`` is bf16 there.

    It needs a bf16 flag (``BF16_FLAGS``) and torch's CPU kernels at AVX512 or above
    (``torch.backends.cpu.get_cpu_capability``; ``ATEN_CPU_CAPABILITY=avx2`` caps them, and
    so turns this off) with oneDNN, which runs the bf16 matmuls and convolutions. Read once
    per process.
    """
    import torch

    flags = cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    native = bool(flags & BF16_FLAGS) and capability.startswith(("AVX512", "AMX")) \
        and torch.backends.mkldnn.is_available()
    log.info("CPU bf16: %s (torch capability %s, flags %s)", native, capability,
             sorted(flags & BF16_FLAGS) or "none")
    return native


def resolve(policy: str, *, device: str, cuda_dtype: str) -> str:
    """The dtype name a stage runs in: ``policy`` resolved for ``device``.

    Args:
        policy: ``auto`` or a dtype name (a pin, taken as is on any device).
        device: ``cuda`` or ``cpu``.
        cuda_dtype: the card's half precision for CUDA.

    Returns:
        ``float32``, ``bfloat16`` or ``float16``.
    """
    if policy not in DTYPES:
        raise ValueError(f"dtype '{policy}': expected one of {', '.join(DTYPES)}")
    if policy != "auto":
        return policy
    if device == "cuda":
        return cuda_dtype
    return "bfloat16" if cpu_bf16() else "float32"


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name`` (``float32``, ``bfloat16``, ``float16``)."""
    import torch

    return getattr(torch, name)


def policy_key(policy: str, cuda_dtype: str) -> str:
    """What a stage's precision adds to its assets' keys: a pin as it is; ``auto`` with the
    card's CUDA dtype and the CPU rule (``AUTO_RULE``). The dtype an actor resolves depends
    on the node it lands on, which the driver that computes keys does not know; the rule it
    resolves by is fixed, and the lineage records the dtype itself."""
    if policy != "auto":
        return policy
    return f"auto(cuda={cuda_dtype},{AUTO_RULE})"


def channels_last_pays(device: str, dtype: str) -> bool:
    """Whether a diffusion pipeline's UNet and VAE go ``channels_last``.

    On a CPU it was measured not to pay (``benchmarks/precision_fidelity.py``, tiny SD
    pipelines, 64 and 256 px: 0.99-1.08x in float32 and in bf16, within noise), so layouts stay
    as loaded. On CUDA it is the layout cuDNN's half-precision convolutions run on directly
    (diffusers' own guidance); not measured here, for want of a GPU.
    """
    del dtype  # the same answer in every dtype measured
    return device == "cuda"


def to_channels_last(pipe: Any) -> None:
    """The pipeline's convolutional modules (``unet``, ``vae``) in ``channels_last``, in
    place; a transformer denoiser (Flux) has no convolutions to gain and is left alone."""
    import torch

    for name in ("unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)


def describe(module: Any) -> str:
    """The dtype of a module's parameters, as lineage records it (``float32``, ...)."""
    dtypes = {str(p.dtype).removeprefix("torch.") for p in module.parameters()}
    return ",".join(sorted(dtypes))
