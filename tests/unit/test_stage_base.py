"""The stage base class: column checks, row skipping, per-row failure capture, timing."""

from __future__ import annotations

import numpy as np
import pytest

from factory.core import images
from stages.base import Resources, Stage, StageCard, StageInputError, StagePlan, StageParams


class _Params(StageParams):
    bad: tuple[str, ...] = ()


class _Invert(Stage):
    """Inverts pixels; raises for SKUs in params.bad; counts _predict calls."""

    calls = 0

    def _predict(self, rows):
        type(self).calls += 1
        for sku in rows["sku"]:
            if sku in self.params.bad:
                raise ValueError(f"cannot handle {sku}")
        return {"image": [255 - im for im in rows["image"]], "score": [1.5] * len(rows["sku"])}


CARD = StageCard(name="identity/invert", kind="identity", runtime=_Invert, params=_Params,
                 inputs=("image",), outputs=("image",), metrics=(("score", "float64"),))


def plan(**params) -> StagePlan:
    return StagePlan(name="inv", card=CARD, params=_Params(**params), source="", revision="x",
                     resources=Resources())


def batch(n: int = 4, statuses: list[str] | None = None) -> dict[str, np.ndarray]:
    arrays = [np.full((2, 3, 3), 10 * i, dtype=np.uint8) for i in range(n)]
    out = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
           "status": np.array(statuses or ["ok"] * n, dtype=object),
           "error": np.array([""] * n, dtype=object),
           "failed_stage": np.array([""] * n, dtype=object)}
    out.update(images.store("image", arrays))
    return out


def test_outputs_replace_inputs_and_metrics_are_floats():
    out = _Invert(plan=plan())(batch())
    pixels = images.load("image", out)
    assert pixels[2][0, 0, 0] == 255 - 20
    assert out["score"].dtype == np.float64 and list(out["score"]) == [1.5] * 4
    assert "ms_inv" in out and (out["ms_inv"] >= 0).all()


def test_one_bad_row_fails_alone_and_batch_mates_succeed():
    out = _Invert(plan=plan(bad=("S1",)))(batch())
    assert list(out["status"]) == ["ok", "failed", "ok", "ok"]
    assert out["failed_stage"][1] == "inv" and "cannot handle S1" in out["error"][1]
    assert images.load("image", out)[1] is None  # a failed row carries no image onward
    assert images.load("image", out)[2][0, 0, 0] == 255 - 20
    assert np.isnan(out["score"][1]) and out["score"][0] == 1.5
    assert list(out["sku"]) == ["S0", "S1", "S2", "S3"]  # never dropped


def test_rows_not_ok_are_skipped_and_kept():
    _Invert.calls = 0
    out = _Invert(plan=plan(bad=("S0",)))(batch(3, ["rejected", "failed", "ok"]))
    assert list(out["status"]) == ["rejected", "failed", "ok"]
    assert _Invert.calls == 1  # only the ok row reached the model, in one call
    assert out["ms_inv"][0] == 0.0


def test_missing_input_column_is_a_loud_error():
    b = batch()
    del b["image"]
    with pytest.raises(StageInputError, match="needs columns \\['image'\\]"):
        _Invert(plan=plan())(b)


def test_a_model_that_fails_to_load_names_stage_and_model():
    class _Broken(_Invert):
        def _load(self):
            raise OSError("no such file: weights.safetensors")

    with pytest.raises(RuntimeError, match="stage 'inv': model 'identity/invert'.*failed to load"):
        _Broken(plan=plan())
