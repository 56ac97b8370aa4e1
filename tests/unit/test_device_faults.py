"""A device fault (CUDA error, out of memory, a lost GPU) is not a SKU's failure
(``stages.device_faults.is_device_fault``): it escapes the stage's ``__call__`` as a ``DeviceFault``
naming the stage, model and device, so the run stops uncommitted; a batch that runs out of
memory is not split into rows that each run out of memory again. Hermetic: no Ray, no GPU."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from factory.core import images
from stages.base import Resources, Stage, StageCard, StagePlan, StageParams
from stages.device_faults import DeviceFault, is_device_fault
from stages.chain import StageChain


class _Params(StageParams):
    #: what ``_predict`` raises: "batch" for every call, or for the one row of an SKU
    fault_on: str = "batch"


class _Faulty(Stage):
    """Inverts pixels; raises ``self.fault`` where ``params.fault_on`` says; counts calls."""

    fault: BaseException = RuntimeError("unset")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def _predict(self, rows):
        self.calls += 1
        if self.params.fault_on == "batch" or self.params.fault_on in rows["sku"]:
            raise self.fault
        return {"image": [255 - im for im in rows["image"]]}


class _Plain(Stage):
    calls = 0

    def _predict(self, rows):
        type(self).calls += 1
        return {"image": list(rows["image"])}


def card(runtime: type) -> StageCard:
    return StageCard(name="identity/faulty", kind="identity", runtime=runtime, params=_Params,
                     inputs=("image",), outputs=("image",))


def plan(runtime: type = _Faulty, name: str = "inv", **params) -> StagePlan:
    return StagePlan(name=name, card=card(runtime), params=_Params(**params), source="",
                     revision="x", resources=Resources())


def batch(n: int = 4) -> dict[str, np.ndarray]:
    out = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
           "status": np.array(["ok"] * n, dtype=object),
           "error": np.array([""] * n, dtype=object),
           "failed_stage": np.array([""] * n, dtype=object)}
    out.update(images.store("image", [np.full((2, 3, 3), 10 * i, dtype=np.uint8)
                                      for i in range(n)]))
    return out


def faulty(fault: BaseException, **params) -> _Faulty:
    stage = _Faulty(plan=plan(**params))
    stage.fault = fault
    return stage


DEVICE_FAULTS = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    torch.OutOfMemoryError("out of memory"),
    torch.AcceleratorError("an illegal memory access was encountered"),
    RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors "
                 "might be asynchronously reported"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error"),
]


@pytest.mark.parametrize("fault", DEVICE_FAULTS, ids=lambda e: type(e).__name__ + ":" + str(e)[:20])
def test_a_device_fault_in_a_batch_escapes_the_stage_and_fails_no_row(fault) -> None:
    stage = faulty(fault)
    rows = batch()
    with pytest.raises(DeviceFault) as caught:
        stage(rows)
    assert caught.value.__cause__ is fault
    assert stage.calls == 1  # the batch was not split into rows that each fault again
    assert list(rows["status"]) == ["ok"] * 4  # no row was made a failure
    message = str(caught.value)
    assert "stage 'inv'" in message and "model 'identity/faulty'" in message
    assert "device=cpu" in message and type(fault).__name__ in message
    assert "uncommitted" in message


def test_a_device_fault_on_one_row_of_the_row_by_row_retry_escapes_too() -> None:
    """A batch that fails for a row's reason is retried row by row; a device fault there is
    still the device's."""
    stage = faulty(torch.cuda.OutOfMemoryError("CUDA out of memory"), fault_on="S2")
    original = stage._predict

    def predict(rows):  # the batch call fails for an ordinary reason
        if len(rows["sku"]) > 1:
            stage.calls += 1
            raise ValueError("a row the model cannot take")
        return original(rows)

    stage._predict = predict
    with pytest.raises(DeviceFault, match="OutOfMemoryError"):
        stage(batch())


def test_a_device_fault_under_another_exception_is_still_a_device_fault() -> None:
    def raised_from(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except RuntimeError as exc:
                raise ValueError("the pipeline gave up") from exc
        except ValueError as exc:
            return exc

    assert is_device_fault(raised_from(torch.cuda.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(DeviceFault):
        faulty(raised_from(RuntimeError("CUDA error: device-side assert triggered")))(batch())


@pytest.mark.parametrize("error", [
    ValueError("cannot handle S1"),
    RuntimeError("shape mismatch: expected 4 channels"),
    RuntimeError("Expected all tensors to be on the same device (CUDA error is not this)"),
    MemoryError(),  # the host's memory: a row that is too large, not the device
])
def test_other_errors_stay_the_rows_failures(error) -> None:
    out = faulty(error)(batch(2))
    assert list(out["status"]) == ["failed", "failed"]
    assert not is_device_fault(error)


def test_a_device_fault_escapes_a_chain_and_later_stages_do_not_run() -> None:
    first, second = plan(name="first", fault_on="batch"), plan(_Plain, name="second")
    chain = StageChain(plans=[first, second])
    chain.stages[0].fault = RuntimeError("CUDA error: an illegal memory access was encountered")
    _Plain.calls = 0
    with pytest.raises(DeviceFault, match="stage 'first'"):
        chain(batch())
    assert _Plain.calls == 0


def test_a_device_fault_crosses_a_process_boundary_intact() -> None:
    """Ray pickles the actor's exception to the driver."""
    with pytest.raises(DeviceFault) as caught:
        faulty(torch.cuda.OutOfMemoryError("CUDA out of memory"))(batch())
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is DeviceFault and str(again) == str(caught.value)
    assert is_device_fault(again)


def test_the_driver_finds_the_fault_in_the_text_ray_hands_it() -> None:
    """Ray Data hands the driver a ``UserCodeException`` that keeps the stage's exception only
    as its traceback's text; the run's error is the stage's own line."""
    from factory.run.pipeline import device_fault

    line = ("stage 'gen': model 'generate/sd' hit a device fault on node=ab gpus=[0] "
            "device=cuda: OutOfMemoryError: CUDA out of memory")
    wrapped = RuntimeError("ray::MapWorker(MapBatches(Gen)).submit() (pid=1)\n  File \"x\", "
                           f"line 1\nstages.device_faults.DeviceFault: {line}\n\nThe above exception "
                           "was the direct cause of the following exception:\n"
                           "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    assert device_fault(wrapped) == line
    try:
        raise ValueError("outer") from DeviceFault(line)
    except ValueError as exc:
        assert device_fault(exc) == line
    assert device_fault(RuntimeError("a store failed: StorageError: 403")) is None
