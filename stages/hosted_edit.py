"""hosted_edit: hosted models that take the row's image: a scene around the product,
background removal, upscaling. Each builds on ``stages.hosted.HostedGenerator`` (requests paid
once per run, the provider's client and its retries, per-row failures, outages) and keeps the
contract of the local stage of its kind:

- ``HostedScene`` as ``stages.scene_inpaint``: the product placed on its canvas, sent over the
  fill colour to an image-edit model with the row's prompt, the answer scaled to the canvas,
  the product's own pixels put back on top exactly;
- ``HostedSegment`` as ``stages.segment_rembg``: an RGBA cut-out of the row's size and its
  ``alpha_coverage``; an empty transparent canvas passes as it came, with no request;
- ``HostedUpscale`` as ``stages.upscale_swin2sr``: the image at ``scale`` times its size
  exactly (an answer of another size is Lanczos-resized to it), its alpha Lanczos-resized;
  the product's pixels are protected by the stage base, as for the local upscalers.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Literal

import numpy as np

from stages.hosted import HostedGenerateParams, HostedGenerator, HostedParams
from stages.hosted_base import Outcome
from stages.product import FIDELITY, PRODUCT, fidelity_delta_e
from stages.scene_inpaint import PlacementParams


class HostedSceneParams(HostedGenerateParams, PlacementParams):
    """A hosted scene around the product: where the product goes on the canvas and how it is
    put back, as ``stages.scene_inpaint.SceneParams`` says (``width``/``height`` are the
    canvas)."""


class HostedScene(HostedGenerator):
    """The product placed on its canvas (``stages.scene_inpaint.product_layer``), sent over the
    fill colour to a hosted image-edit model with the row's prompt, the answer scaled to the
    canvas, and the product's own pixels put back on top exactly (``finish``)."""

    image_columns: ClassVar[tuple[str, ...]] = ("image", PRODUCT)

    def _load(self) -> None:
        from stages.colour import parse_hex_colour

        super()._load()
        self.fill = parse_hex_colour(self.params.fill)
        self._layers: dict[int, np.ndarray] = {}

    def _request_of(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        from stages.scene_inpaint import flatten, product_layer

        p = self.params
        width, height = self._size(rows, i)
        layer = product_layer(rows["image"][i], (height, width), scale=p.scale, x=p.x, y=p.y,
                              margin=p.margin)
        self._layers[i] = layer
        return {"prompt": str(rows["prompt"][i]), "seed": int(rows["seed"][i]),
                "image": data_uri(flatten(layer, self.fill)), "output_format": p.output_format}

    def _finish(self, image: np.ndarray, i: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        from stages.scene_inpaint import finish

        p = self.params
        layer = self._layers[i]
        generated = np.ascontiguousarray(image[..., :3])
        if generated.shape[:2] != layer.shape[:2]:  # the model answers at its own size
            from PIL import Image

            size = (layer.shape[1], layer.shape[0])
            generated = np.asarray(Image.fromarray(generated).resize(size, Image.LANCZOS))
        scene = finish(generated, layer, shadow=p.shadow, opacity=p.shadow_opacity,
                       blur=p.shadow_blur)
        return scene, {PRODUCT: layer, FIDELITY: fidelity_delta_e(scene, layer)}


def data_uri(rgb: np.ndarray) -> str:
    """A PNG data URI of ``rgb`` (or RGBA): fal and Replicate take one wherever they take an
    image URL, so nothing is uploaded to a host of the provider's first."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class HostedSegment(HostedGenerator):
    """Background removal on a hosted model (``HostedParams``): the row's RGB is sent, the
    provider's alpha comes back."""

    def _load(self) -> None:
        super()._load()
        self._inputs: dict[int, np.ndarray] = {}

    def _ready(self, rows: dict[str, Any], i: int) -> Outcome | None:
        image = rows["image"][i]
        if image.shape[2] == 4 and not image[..., 3].any():  # nothing to cut out
            return Outcome(image=image, extra={"alpha_coverage": 0.0})
        return None

    def _request_of(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        image = rows["image"][i]
        self._inputs[i] = image
        return {"image": data_uri(np.ascontiguousarray(image[..., :3]))}

    def _finish(self, image: np.ndarray, i: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        from stages.upscale_swin2sr import lanczos_resize

        source = self._inputs[i]
        height, width = source.shape[:2]
        if image.shape[2] == 3:  # a PNG whose alpha is all opaque decodes as RGB
            image = np.concatenate([image, np.full((*image.shape[:2], 1), 255, np.uint8)], 2)
        if image.shape[:2] != (height, width):
            image = lanczos_resize(np.ascontiguousarray(image), (width, height))
        return image, {"alpha_coverage": float(image[..., 3].mean()) / 255.0}


class HostedUpscaleParams(HostedParams):
    """A hosted upscale.

    Attributes:
        scale: output size over input size; the output is exactly this many times the input.
        protect_product: as ``stages.upscale_swin2sr.UpscaleParams.protect_product``.
    """

    scale: Literal[2, 4] = 2
    protect_product: bool = True


class HostedUpscale(HostedGenerator):
    """Upscaling on a hosted model: the row's RGB goes with ``scale``; alpha is resized here."""

    def _load(self) -> None:
        super()._load()
        self._inputs: dict[int, np.ndarray] = {}

    def _request_of(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        image = rows["image"][i]
        self._inputs[i] = image
        return {"image": data_uri(np.ascontiguousarray(image[..., :3])),
                "scale": self.params.scale}

    def _finish(self, image: np.ndarray, i: int) -> tuple[np.ndarray, dict[str, Any] | None]:
        from stages.upscale_swin2sr import lanczos_resize

        source = self._inputs[i]
        size = (source.shape[1] * self.params.scale, source.shape[0] * self.params.scale)
        rgb = np.ascontiguousarray(image[..., :3])
        if rgb.shape[:2] != (size[1], size[0]):
            rgb = lanczos_resize(rgb, size)
        if source.shape[2] == 4:
            alpha = lanczos_resize(np.ascontiguousarray(source[..., 3]), size)
            rgb = np.concatenate([rgb, alpha[..., None]], axis=2)
        return rgb, None
