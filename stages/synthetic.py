"""Model-free stages: a procedural image source and a pass-through.

They measure the factory itself (orchestration overhead, encode and write) with no model cost,
and the pass-through's ``fail_skus`` is the fault-injection point for reliability drills.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import Field

from stages.base import Stage, StageParams


class SyntheticParams(StageParams):
    """Size of the procedural image."""

    width: int = Field(1024, ge=8, le=16384)
    height: int = Field(1024, ge=8, le=16384)


class SyntheticGenerator(Stage):
    """A seeded colour gradient: cheap, deterministic, and different per SKU."""

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        h, w = self.params.height, self.params.width
        ramp_y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        ramp_x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        out = []
        for seed in rows["seed"]:
            rng = np.random.default_rng(int(seed))
            a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
            image = a * (1 - ramp_y) + b * ramp_x * ramp_y
            out.append(np.clip(image, 0, 255).astype(np.uint8))
        return {"image": out}


class PassthroughParams(StageParams):
    """``fail_skus``: SKUs that raise inside this stage (fault injection for drills and tests)."""

    fail_skus: tuple[str, ...] = ()


class Passthrough(Stage):
    """Returns the image unchanged, except for the SKUs told to fail."""

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        for sku in rows["sku"]:
            if sku in self.params.fail_skus:
                raise RuntimeError(f"injected failure for sku '{sku}'")
        return {"image": list(rows["image"])}
