"""The model registry: one literal list of cards. ``factory models list`` prints it.

Adding a model of an existing family is adding a card here, no new class.
"""

from __future__ import annotations

from stages.base import Resources, StageCard
from stages.generate_diffusers import DiffusersGenerator, GenerateParams
from stages.recolor_lab import LabRecolor, RecolorParams
from stages.synthetic import Passthrough, PassthroughParams, SyntheticGenerator, SyntheticParams

_IMAGE = ("image",)
_TEXT = ("prompt", "negative_prompt", "seed")

CARDS: tuple[StageCard, ...] = (
    StageCard(
        name="generate/sd-tiny",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="tiny:sd-tiny",
        revision="local",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0, num_cpus=1, batch_size=8, concurrency=1),
        cost_weight=0.1,
        description="Tiny random-weight Stable Diffusion (real architecture) for tests and demo",
    ),
    StageCard(
        name="generate/sd-turbo",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="stabilityai/sd-turbo",
        revision="main",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=8, concurrency=1),
        cost_weight=1.0,
        description="SD-Turbo 512px, 1-4 steps, guidance 0: cheap thumbnails",
    ),
    StageCard(
        name="generate/sdxl-turbo",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="stabilityai/sdxl-turbo",
        revision="main",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4, concurrency=1),
        cost_weight=3.0,
        description="SDXL-Turbo 512px, 1-4 steps",
    ),
    StageCard(
        name="generate/flux-schnell",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="black-forest-labs/FLUX.1-schnell",
        revision="main",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4, concurrency=1),
        cost_weight=10.0,
        description="FLUX.1-schnell 1024px, 4 steps, bf16: hero shots",
    ),
    StageCard(
        name="generate/synthetic",
        kind="generate",
        runtime=SyntheticGenerator,
        params=SyntheticParams,
        inputs=("seed",),
        outputs=_IMAGE,
        resources=Resources(num_cpus=0.5, batch_size=8),
        cost_weight=0.0,
        description="Seeded gradient, no model: measures the factory's own overhead",
    ),
    StageCard(
        name="recolor/lab",
        kind="recolor",
        runtime=LabRecolor,
        params=RecolorParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=(("delta_e_before", "float64"), ("delta_e_after", "float64")),
        resources=Resources(num_cpus=1, batch_size=8),
        cost_weight=0.01,
        example_params={"palette": ["#C8553D", "#F28F3B", "#2D3047"], "strength": 0.8},
        description="Lab colour transfer to the brand palette; records mean CIEDE2000 before/after",
    ),
    StageCard(
        name="identity/passthrough",
        kind="identity",
        runtime=Passthrough,
        params=PassthroughParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_cpus=0.5, batch_size=8),
        cost_weight=0.0,
        description="No-op; 'fail_skus' injects per-row failures for drills",
    ),
)


def _index(cards: tuple[StageCard, ...]) -> dict[str, StageCard]:
    index: dict[str, StageCard] = {}
    for card in cards:
        if card.name in index:
            raise ValueError(f"duplicate model card '{card.name}' in the registry")
        if card.name.split("/", 1)[0] != card.kind:
            raise ValueError(f"card '{card.name}' must be named '{card.kind}/<model>'")
        index[card.name] = card
    return index


REGISTRY: dict[str, StageCard] = _index(CARDS)


class UnknownModelError(KeyError):
    """A model name that no card has."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_card(name: str, kind: str | None = None) -> StageCard:
    """Find a card by ``kind/model`` (or ``model`` when the kind is given)."""
    full = name if "/" in name or kind is None else f"{kind}/{name}"
    if full in REGISTRY:
        return REGISTRY[full]
    valid = sorted(n for n in REGISTRY if kind is None or n.startswith(f"{kind}/"))
    raise UnknownModelError(f"unknown model '{name}'; valid: {', '.join(valid)}")
