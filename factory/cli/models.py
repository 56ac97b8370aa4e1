"""``factory models``: the model registry's cards, and the tiny models the tests and demo use."""

from __future__ import annotations

from pathlib import Path

import click

from factory.core import settings


@click.group()
def models() -> None:
    """The model registry."""


@models.command("list")
def models_list() -> None:
    """Every registered model card, with the defaults a job spec overrides key by key."""
    from stages.registry import CARDS

    for card in CARDS:
        r = card.resources
        click.echo(f"{card.name:28} {card.source or '-':36} gpus={r.num_gpus:<4g} "
                   f"batch={r.batch_size:<3} cost={card.cost_weight:<5g} {card.description}")
        params = card.make_params(card.example_params).model_dump(mode="json")
        if "dtype" in params and params["dtype"] == "auto":
            params["dtype"] = f"auto ({card.cuda_dtype} on CUDA, float32 on CPU)"
        shown = ", ".join(f"{k}={v}" for k, v in params.items()
                          if k in card.defaults or k in ("dtype", "width", "height", "steps",
                                                         "guidance", "lora", "tile"))
        click.echo(f"{'':28} defaults: num_cpus={r.num_cpus:g} concurrency={r.concurrency}"
                   + (f"; {shown}" if shown else ""))


@models.command("make-tiny")
@click.argument("out_dir", type=click.Path(file_okay=False), default=None, required=False)
def models_make_tiny(out_dir: str | None) -> None:
    """Build tiny random-weight models of the real architectures into OUT_DIR.

    Default OUT_DIR: the models directory (FACTORY_MODELS_DIR, else build/models), where
    ``tiny:NAME`` sources resolve.
    """
    from stages.tiny.models import make_all

    target = Path(out_dir) if out_dir else settings.models_dir()
    for name, path in make_all(target).items():
        click.echo(f"{name}: {path}")
