"""Device faults: a stage's device failed, which is no row's failure.

A CUDA error, an out-of-memory batch or a lost GPU says nothing about the SKUs in the batch:
the stage (``stages.base.Stage``) raises ``DeviceFault`` for the whole batch, naming the stage,
the model and where it ran, and the run stops uncommitted and resumes later, as for a store
that fails for good (``factory.run.pipeline``).
"""

from __future__ import annotations

import sys


class DeviceFault(RuntimeError):
    """A stage's device failed (``is_device_fault``): no row's failure. Its message names the
    stage, the model and where it ran (node, GPUs, device); the run stops uncommitted."""


#: Words of a ``RuntimeError`` that the CUDA runtime, cuDNN or NCCL raised (torch's own
#: wording): ``CUDA error: an illegal memory access was encountered`` leaves the device's
#: context unusable, and an out-of-memory batch is not a row's fault.
_DEVICE_ERROR_STARTS = ("CUDA error",)
_DEVICE_ERROR_WORDS = ("CUDA out of memory", "cuDNN error", "NCCL")
#: ONNX Runtime's words for its CUDA provider's failures (its own exception types, which are
#: no ``RuntimeError``): a rembg session on a GPU.
_ORT_DEVICE_WORDS = ("CUDA failure", "CUDA error", "CUDNN failure", "CUBLAS failure",
                     "Failed to allocate memory")


def _device_error_types() -> tuple[type[BaseException], ...]:
    """torch's out-of-memory and accelerator error types, where torch is loaded (an
    exception of its types cannot exist before it is)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ()
    found = (getattr(torch, "OutOfMemoryError", None),
             getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
             getattr(torch, "AcceleratorError", None))  # torch >= 2.8
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def is_device_fault(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a device fault: torch's
    ``OutOfMemoryError`` or ``AcceleratorError``, a ``RuntimeError`` whose message starts
    with ``CUDA error`` or holds ``CUDA out of memory``, ``cuDNN error`` or ``NCCL``, or an
    ONNX Runtime error from its CUDA provider."""
    types = _device_error_types()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DeviceFault) or (types and isinstance(exc, types)):
            return True
        if isinstance(exc, RuntimeError):
            text = str(exc).lstrip()
            if text.startswith(_DEVICE_ERROR_STARTS) or any(w in text for w in _DEVICE_ERROR_WORDS):
                return True
        if type(exc).__module__.startswith("onnxruntime") and any(
                w in str(exc) for w in _ORT_DEVICE_WORDS):
            return True
        exc = exc.__cause__ if exc.__cause__ is not None else (
            None if exc.__suppress_context__ else exc.__context__)
    return False
