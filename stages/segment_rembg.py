"""segment: background removal with rembg; every SKU leaves as an RGBA cutout.

One rembg session per actor. A card's source is ``rembg:<name>`` (a session rembg knows, whose
weights rembg fetches into ``REMBG_HOME``; offline that directory must be pre-seeded) or a path to
an ``.onnx`` file loaded as ``params.custom_family``. For the u2net/ISNet families the model runs
once per batch: rembg's ``predict`` handles one image per call, so the batch is built here with
the session's own ``normalize`` and post-processed exactly as that ``predict`` does. Other
families (BiRefNet, BRIA, BEN, SAM) go through ``rembg.remove`` one image at a time.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from stages.base import Stage, StageParams
from stages.weights import check_local_weights

if TYPE_CHECKING:
    from PIL import Image

REMBG_PREFIX = "rembg:"
CUDA_PROVIDER = "CUDAExecutionProvider"
log = logging.getLogger(__name__)

_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
#: Sessions whose ``predict`` is normalize(mean, std, size) -> run -> first output, channel 0
#: -> min-max -> uint8 -> LANCZOS resize: (mean, std, side). Only these are batched by hand.
#: tests/unit/test_segment_rembg.py checks each entry against rembg's own ``predict``.
BATCHABLE_SESSIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int]] = {
    "u2net": (*_IMAGENET, 320),
    "u2netp": (*_IMAGENET, 320),
    "u2net_human_seg": (*_IMAGENET, 320),
    "silueta": (*_IMAGENET, 320),
    "u2net_custom": (*_IMAGENET, 320),
    "isnet-general-use": (*_HALF, 1024),
    "isnet-anime": ((0.485, 0.456, 0.406), (1.0, 1.0, 1.0), 1024),
    "dis_custom": (*_HALF, 1024),
}


class SegmentParams(StageParams):
    """How masks are made and refined.

    Attributes:
        alpha_matting: refine the mask's edges with closed-form matting (slow; CPU-bound). The
            RGB of matted pixels becomes rembg's estimated foreground colour.
        alpha_matting_foreground_threshold: mask values above this seed the foreground.
        alpha_matting_background_threshold: mask values below this seed the background.
        alpha_matting_erode_size: erosion of both seeds, in pixels.
        post_process_mask: smooth the mask with rembg's morphological post-processing.
        batched: run the model once per batch where the session family allows it.
        custom_family: rembg session class for a source that is a path to an ``.onnx`` file.
    """

    alpha_matting: bool = False
    alpha_matting_foreground_threshold: int = Field(240, ge=1, le=255)
    alpha_matting_background_threshold: int = Field(10, ge=0, le=254)
    alpha_matting_erode_size: int = Field(10, ge=0, le=100)
    post_process_mask: bool = False
    batched: bool = True
    custom_family: Literal["u2net_custom", "dis_custom", "ben_custom"] = "u2net_custom"

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> SegmentParams:
        if self.alpha_matting_background_threshold >= self.alpha_matting_foreground_threshold:
            raise ValueError("alpha_matting_background_threshold must be below "
                             "alpha_matting_foreground_threshold")
        return self


class RembgSegmenter(Stage):
    """A rembg session per actor; adds the predicted mask as alpha and records its coverage."""

    def _load(self) -> None:
        import onnxruntime as ort
        from rembg import new_session
        from rembg.sessions import sessions

        providers = ["CPUExecutionProvider"]
        if self.plan.resources.num_gpus > 0:  # the actor holds a GPU: ONNX Runtime runs on it
            available = ort.get_available_providers()
            if CUDA_PROVIDER not in available:
                raise RuntimeError(
                    f"the stage reserves {self.plan.resources.num_gpus:g} GPU, but onnxruntime "
                    f"{ort.__version__} here has no {CUDA_PROVIDER} (providers: "
                    f"{', '.join(available)}): install onnxruntime-gpu (the 'gpu' extra; the "
                    "image has it) or set the stage's resources.num_gpus to 0")
            providers.insert(0, CUDA_PROVIDER)
        source = self.plan.source
        if source.startswith(REMBG_PREFIX):
            name = source.removeprefix(REMBG_PREFIX)
            session_class = sessions.get(name)
            if session_class is None:
                raise ValueError(f"rembg has no session '{name}'; "
                                 f"valid: {', '.join(sorted(sessions))}")
            if not session_class.is_local():
                raise ValueError(f"rembg session '{name}' sends images to a remote service")
            try:
                self.session = new_session(name, providers=providers)
            except Exception as exc:
                raise RuntimeError(f"rembg could not load or download '{name}' ({exc}); offline, "
                                   f"pre-seed {session_class.model_dir()} with `rembg d {name}`"
                                   ) from exc
        else:
            path = Path(source)
            if source.startswith("tiny:") or path.suffix.lower() != ".onnx":
                raise ValueError(f"source '{source}' is neither 'rembg:<name>' nor an .onnx path")
            if not path.is_file():
                raise FileNotFoundError(f"custom rembg model '{source}' does not exist")
            check_local_weights(source, allow_pickle=self.plan.allow_pickle)
            model_path = path.resolve()
            with _rembg_home(model_path.parent):
                self.session = new_session(self.params.custom_family, model_path=str(model_path),
                                           providers=providers)
        # What the session got, not what was asked: onnxruntime falls back to CPU quietly
        # (no CUDA libraries, no device), and the placement column then says cpu.
        active = self.session.inner_session.get_providers()
        self.device = "cuda" if CUDA_PROVIDER in active else "cpu"
        if providers[0] == CUDA_PROVIDER and self.device == "cpu":
            log.warning("stage %s: onnxruntime fell back to the CPU (providers %s) although the "
                        "actor holds a GPU", self.plan.name, active)
        self._batch_spec = _batch_spec(self.session)

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        arrays = list(rows["image"])
        # an empty transparent canvas (a row without a photo, rendered from its prompt:
        # ``stages.source_photo``) has nothing to cut out; it passes as it came
        todo = [i for i, a in enumerate(arrays) if not (a.shape[2] == 4 and not a[..., 3].any())]
        out, coverage = list(arrays), [0.0] * len(arrays)
        if todo:
            cut = self._cutouts([arrays[i] for i in todo])
            for i, image, share in zip(todo, cut["image"], cut["alpha_coverage"]):
                out[i], coverage[i] = image, share
        return {"image": out, "alpha_coverage": coverage}

    def _cutouts(self, arrays: Sequence[np.ndarray]) -> dict[str, Sequence[Any]]:
        from PIL import Image

        pils = [Image.fromarray(np.ascontiguousarray(a[..., :3])) for a in arrays]
        if self.params.batched and self._batch_spec is not None and len(pils) > 1:
            masks = self._batched_masks(pils)
        else:
            masks = [self._single_mask(pil) for pil in pils]
        out, coverage = [], []
        for array, pil, mask in zip(arrays, pils, masks):
            rgba = self._cutout(array, pil, mask)
            out.append(rgba)
            coverage.append(float(rgba[..., 3].mean()) / 255.0)
        return {"image": out, "alpha_coverage": coverage}

    def _single_mask(self, pil: Image.Image) -> np.ndarray:
        from rembg import remove

        return np.asarray(remove(pil, session=self.session, only_mask=True))

    def _batched_masks(self, pils: list[Image.Image]) -> list[np.ndarray]:
        """One model call for the batch; per-image post-processing as the session's predict."""
        from PIL import Image

        mean, std, side = self._batch_spec
        name = self.session.inner_session.get_inputs()[0].name
        feed = np.concatenate(
            [self.session.normalize(p, mean, std, (side, side))[name] for p in pils])
        preds = self.session.inner_session.run(None, {name: feed})[0][:, 0]
        masks = []
        for pil, pred in zip(pils, preds):
            lo, hi = pred.min(), pred.max()
            # rembg divides by zero here (NaN -> 0 on cast); say so instead.
            scaled = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
            mask = Image.fromarray((scaled.clip(0, 1) * 255).astype(np.uint8))
            masks.append(np.asarray(mask.resize(pil.size, Image.Resampling.LANCZOS)))
        return masks

    def _cutout(self, array: np.ndarray, pil: Image.Image, mask: np.ndarray) -> np.ndarray:
        """Refine the mask as ``rembg.remove`` would, then fold in any alpha the input had."""
        from PIL import Image
        from rembg.bg import alpha_matting_cutout, decontaminate_cutout, post_process

        p = self.params
        if p.post_process_mask:
            mask = post_process(mask)
        rgb, alpha = array[..., :3], mask
        if p.alpha_matting:
            try:
                cut = alpha_matting_cutout(pil, Image.fromarray(mask),
                                           p.alpha_matting_foreground_threshold,
                                           p.alpha_matting_background_threshold,
                                           p.alpha_matting_erode_size)
            except ValueError:  # no unknown band in the trimap: rembg's own fallback
                cut = decontaminate_cutout(pil, Image.fromarray(mask))
            cut = np.asarray(cut)
            rgb, alpha = cut[..., :3], cut[..., 3]
        if array.shape[2] == 4:
            alpha = ((alpha.astype(np.uint16) * array[..., 3] + 127) // 255).astype(np.uint8)
        return np.dstack([rgb, alpha]).astype(np.uint8)


def _batch_spec(session: Any) -> tuple[tuple[float, ...], tuple[float, ...], int] | None:
    """The session's preprocessing if its model can take a whole batch in one call, else None."""
    spec = BATCHABLE_SESSIONS.get(type(session).name())
    inputs = session.inner_session.get_inputs()
    if spec is None or len(inputs) != 1:
        return None
    batch_dim = inputs[0].shape[0]
    return None if isinstance(batch_dim, int) and batch_dim == 1 else spec


@contextmanager
def _rembg_home(directory: Path) -> Iterator[None]:
    """Let rembg accept a model file in ``directory``.

    rembg refuses a ``model_path`` outside its home (``BaseSession.validate_model_path`` reads
    ``REMBG_HOME``, or ``U2NET_HOME`` which wins, at call time), and the models directory is ours,
    not rembg's. Each actor is its own process, so pointing the variables at the model's folder
    for the duration of ``new_session`` affects nothing else; restoring them afterwards keeps
    in-process callers (tests, local mode) unaffected too.
    """
    saved = {key: os.environ.get(key) for key in ("REMBG_HOME", "U2NET_HOME")}
    os.environ["REMBG_HOME"] = str(directory)
    os.environ.pop("U2NET_HOME", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
