"""Simulated GPU stages: each holds the logical GPU share Ray gives it, sleeps the device time
its model would take per batch, and emits images of the real shapes.

They let a machine without a GPU run the factory's plan on a cluster of logical GPUs
(``ray.cluster_utils.Cluster``): the actor pools, block sizes, backpressure and object-store
traffic are the factory's own, the pixels are real-size arrays and the sink really encodes
them; only the model is a sleep. ``benchmarks/cluster_sim.py`` measures with them how busy
the pools keep their GPUs (the P6 and P7 performance goals).

A card's cost model is data: ``fixed_s`` device seconds per batch (kernel launches, text
encoders, the VAE's set-up) plus ``per_image_s`` per image, at the card's reference size,
whatever size the arrays have (a run may shrink them so that few CPU cores can move them).
``time_scale`` stretches or shrinks every sleep alike; ratios of rates do not change.
With ``trace_dir`` set, each actor appends one JSON line per batch to a file of its own there
(start, end, rows, modelled device seconds, where it ran), for busy fractions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
from pydantic import Field

from factory.core.metrics import RunLabels
from stages.base import Stage, StageParams, StagePlan


class SimParams(StageParams):
    """The cost model of a simulated stage, and where its batches are recorded.

    Attributes:
        fixed_s: device seconds per batch, whatever its size.
        per_image_s: device seconds per image.
        time_scale: multiplies every modelled second (1.0: the card's device time).
        trace_dir: a directory each actor appends its batches to (JSON lines); empty: none.
    """

    # how long, never what: none of these changes a pixel, so none is part of an asset's key
    key_neutral: ClassVar[frozenset[str]] = frozenset(
        {"fixed_s", "per_image_s", "time_scale", "trace_dir"})

    fixed_s: float = Field(0.0, ge=0, le=600)
    per_image_s: float = Field(0.0, ge=0, le=600)
    time_scale: float = Field(1.0, gt=0, le=1000)
    trace_dir: str = ""

    def device_seconds(self, images: int) -> float:
        """Modelled seconds of one batch of ``images`` (none: no call, no time)."""
        if images <= 0:
            return 0.0
        return self.time_scale * (self.fixed_s + self.per_image_s * images)


class SimGenerateParams(SimParams):
    """A simulated text-to-image stage: the size of the images it emits."""

    width: int = Field(1024, ge=8, le=16384)
    height: int = Field(1024, ge=8, le=16384)


class SimUpscaleParams(SimParams):
    """A simulated upscaler: its factor (nearest-neighbour pixels, the model's shape)."""

    scale: int = Field(2, ge=1, le=8)


class SimLoraParams(SimParams):
    """A simulated LoRA img2img pass: ``lora`` names the adapter it stands for (nothing is
    loaded, but it is part of the asset's key as a real adapter is)."""

    lora: str = "brand"


def _gradient(height: int, width: int) -> np.ndarray:
    """A smooth RGB gradient (a studio sweep, as encoders see one)."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    rgb = np.stack(np.broadcast_arrays(40 + 180 * y, 60 + 150 * x, 200 - 120 * y * x), axis=2)
    return rgb.astype(np.uint8)


def _ellipse(height: int, width: int) -> np.ndarray:
    """An opaque centred ellipse on transparency: the cut-out a segmenter would give."""
    yy, xx = np.ogrid[:height, :width]
    inside = (((yy + 0.5) / height - 0.5) / 0.4) ** 2 + (((xx + 0.5) / width - 0.5) / 0.3) ** 2
    return np.where(inside <= 1.0, 255, 0).astype(np.uint8)


class SimulatedStage(Stage):
    """Sleeps the card's modelled device time per batch and emits arrays of the real shape.

    What each kind emits, per ``ok`` row: ``generate`` a ``height x width x 3`` image (a
    gradient shifted by the row's seed); ``segment`` the image with an alpha channel (an
    ellipse); ``upscale`` the image ``scale`` times larger; ``lora`` and ``recolor`` a new
    image of the input's shape. Every output is a new array, as a model's is.

    Args:
        plan: the stage's plan (its params are a ``SimParams``).
        labels: the run's metric labels.
        threads: set by a ``StageChain``; unused (a sleep needs no threads).
        sleep: how a batch waits out its device time; ``time.sleep`` in an actor, a fake in
            tests.
        clock: wall-clock seconds for the trace; ``time.time`` (comparable across processes
            of one machine).
    """

    def __init__(self, *, plan: StagePlan, labels: RunLabels = RunLabels(),
                 threads: int | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self._sleep, self._clock = sleep, clock
        self._shapes: dict[tuple[str, int, int], np.ndarray] = {}
        self._trace = None
        super().__init__(plan=plan, labels=labels, threads=threads)
        #: Modelled device seconds slept so far, and batches (for tests and the trace).
        self.slept_s = 0.0
        self.batches = 0

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        n = len(rows["sku"])
        seconds = self.params.device_seconds(n)
        started = self._clock()
        if seconds:
            self._sleep(seconds)
        out = [self._emit(rows, i) for i in range(n)]
        self.slept_s += seconds
        self.batches += 1
        self._record_batch(started, n, seconds)
        return {"image": out}

    def _emit(self, rows: dict[str, Any], i: int) -> np.ndarray:
        kind = self.plan.card.kind
        if kind == "generate":
            h, w = self.params.height, self.params.width
            shift = np.uint8(int(rows["seed"][i]) % 251)
            return self._cached("gradient", h, w, _gradient) + shift  # wraps: a new array
        image = rows["image"][i]
        h, w = image.shape[:2]
        if kind == "segment":
            out = np.empty((h, w, 4), dtype=np.uint8)
            out[..., :3] = image[..., :3]
            out[..., 3] = self._cached("ellipse", h, w, _ellipse)
            return out
        if kind == "upscale":
            s = self.params.scale
            c = image.shape[2]
            return np.broadcast_to(image[:, None, :, None, :], (h, s, w, s, c)).reshape(
                h * s, w * s, c)
        return image ^ np.uint8(1)  # lora, recolor: a new image of the same shape

    def _cached(self, name: str, h: int, w: int,
                make: Callable[[int, int], np.ndarray]) -> np.ndarray:
        key = (name, h, w)
        if key not in self._shapes:
            self._shapes[key] = make(h, w)
        return self._shapes[key]

    def _record_batch(self, started: float, rows: int, seconds: float) -> None:
        """One JSON line per batch in this actor's own file under ``trace_dir``."""
        if not self.params.trace_dir:
            return
        if self._trace is None:
            folder = Path(self.params.trace_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self._trace = (folder / f"{self.plan.name}-{os.getpid()}.jsonl").open(
                "a", encoding="utf-8")
        self._trace.write(json.dumps({
            "stage": self.plan.name, "pid": os.getpid(), "placement": self.placement,
            "start": started, "end": self._clock(), "rows": rows, "device_s": seconds}) + "\n")
        self._trace.flush()  # an actor is killed, not closed, when its pool ends


def is_simulated(card: Any) -> bool:
    """Whether a registry card is a simulated stage (no model, a modelled device time)."""
    return isinstance(card.runtime, type) and issubclass(card.runtime, SimulatedStage)
