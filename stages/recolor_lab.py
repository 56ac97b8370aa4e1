"""recolor: tone-match each image to the brand palette by colour transfer in Lab space.

Alpha is kept: only opaque pixels are measured and changed. The mean CIEDE2000 distance of the
opaque pixels to their nearest palette colour is recorded before and after, per asset (on a
fixed-size sample of them: a QA figure, see ``stages.colour``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, field_validator

from stages.base import Stage, StageParams
from stages.colour import parse_palette, recolor
from stages.product import PRODUCT, resize_layer


class RecolorParams(StageParams):
    """Brand palette and how hard to pull toward it.

    Rows may carry their own ``palette`` column (hex colours), which wins over this one.

    Attributes:
        target: in a row with a product layer (``stages.product``): ``scene`` tones the
            scene around the product and leaves the product's pixels as they came;
            ``product`` tones the product alone (it then changes the customer's product:
            ``fidelity_delta_e`` says by how much); ``all`` tones the whole image. Rows
            without a product layer tone their opaque pixels, whatever the target.
    """

    key_added: ClassVar[frozenset[str]] = frozenset({"target"})

    palette: tuple[str, ...] = Field(min_length=1)
    strength: float = Field(0.8, ge=0.0, le=1.0)
    target: Literal["scene", "product", "all"] = "scene"

    @field_validator("palette", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        for colour in value:
            parse_palette([colour])
        return value


class LabRecolor(Stage):
    """Colour transfer toward the palette; alpha untouched."""

    def _load(self) -> None:
        self.palette = parse_palette(self.params.palette)

    @property
    def protects_product(self) -> bool:
        return self.params.target == "scene"

    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        out, before, after = [], [], []
        row_palettes = rows.get("palette")
        layers = rows.get(PRODUCT)
        for i, image in enumerate(rows["image"]):
            palette = self.palette
            if row_palettes is not None and row_palettes[i]:
                palette = parse_palette(row_palettes[i])
            rgb = image[..., :3]
            mask = image[..., 3] > 0 if image.shape[2] == 4 else None
            layer = layers[i] if layers is not None else None
            if layer is not None and self.params.target != "all":
                product = resize_layer(layer, rgb.shape[:2])[..., 3] >= 128
                wanted = product if self.params.target == "product" else ~product
                mask = wanted if mask is None else mask & wanted
            toned, delta_before, delta_after = recolor(rgb, palette, mask=mask,
                                                       strength=self.params.strength)
            before.append(delta_before)
            after.append(delta_after)
            if image.shape[2] == 4:
                toned = np.concatenate([toned, image[..., 3:]], axis=2)
            out.append(toned)
        return {"image": out, "delta_e_before": before, "delta_e_after": after}
