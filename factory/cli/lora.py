"""``factory lora``: train a brand LoRA on Ray Train, and the offline example.

Exit codes (``factory.cli.exits``): 0 trained (or found already trained); 2 a bad training spec
(nothing started); 4 the training could not finish (its checkpoints stay; running the same spec
again resumes from the latest).
"""

from __future__ import annotations

import sys

import click

from factory.cli.exits import EXIT_OK, EXIT_RUN, EXIT_SPEC
from factory.core import settings


@click.group()
def lora() -> None:
    """Brand LoRAs: train one where it renders, versioned like any other model."""


@lora.command("train")
@click.argument("train_path", type=click.Path(dir_okay=False))
@click.option("--address", envvar=settings.RAY_ADDRESS, help="Ray address; default: local.")
@click.option("--no-dashboard", is_flag=True, help="A local Ray without its dashboard.")
def train_command(train_path: str, address: str | None, no_dashboard: bool) -> None:
    """Train the LoRA TRAIN_PATH describes; print the adapter's URI for a job spec.

    The spec is validated and the images fingerprinted before Ray starts. The same spec over
    the same images is the same training: finished, it is found and not trained again;
    interrupted, it resumes from its latest checkpoint.
    """
    adapter = _train(train_path, address=address, dashboard=not no_dashboard)
    sys.exit(EXIT_OK if adapter is not None else EXIT_RUN)


@lora.command("demo")
@click.option("--no-dashboard", is_flag=True, help="A local Ray without its dashboard.")
@click.pass_context
def demo_command(ctx: click.Context, no_dashboard: bool) -> None:
    """Offline: tiny brand images, a few steps of jobs/train-brand-lora.yaml, then a render.

    Renders brand images with the tiny SD model into build/brand/, trains the spec's LoRA on
    them, writes build/brand/render-brand-lora.yaml naming the adapter, and runs it.
    """
    from factory.lora.demo import TRAIN_JOB, prepare_brand_images, write_render_job

    click.echo(f"brand images: {prepare_brand_images()}", err=True)
    adapter = _train(str(TRAIN_JOB), address=None, dashboard=not no_dashboard)
    if adapter is None:
        sys.exit(EXIT_RUN)
    job_path = write_render_job(adapter.adapter_uri)
    click.echo(f"render job: {job_path}", err=True)
    run = ctx.find_root().command.get_command(ctx, "run")  # the root's `factory run`
    ctx.invoke(run, job_path=str(job_path), season="none", no_dashboard=no_dashboard)


def _train(train_path: str, *, address: str | None, dashboard: bool):
    from factory.lora.train import train
    from factory.lora.train_spec import TrainSpecError, load_training

    try:
        training = load_training(train_path)
    except TrainSpecError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)
    t = training.train
    click.echo(f"training {training.name}: LoRA r={training.lora.rank} on {training.base_ref} "
               f"({training.base_revision}), {t.steps} steps on {t.num_workers} "
               f"{'GPU' if t.use_gpu else 'CPU'} worker(s) → {training.output_uri}", err=True)
    try:
        adapter = train(training, address=address, dashboard=dashboard)
    except TrainSpecError as exc:  # the data: no images, captions naming missing files
        click.echo(str(exc), err=True)
        sys.exit(EXIT_SPEC)
    except Exception as exc:  # noqa: BLE001 - reported; checkpoints stay for a resume
        lines = str(exc).strip().splitlines()
        click.echo(f"error: training {training.name} did not finish: "
                   f"{lines[-1] if lines else type(exc).__name__}\n"
                   "  its checkpoints stay in the output store; run the same spec again to "
                   "resume", err=True)
        return None
    r = adapter.record
    verb = "trained" if adapter.trained_now else "already trained (found its record)"
    resumed = (f", resumed from step {', '.join(map(str, r['resumed_from']))}"
               if r.get("resumed_from") else "")
    click.echo(f"\nLoRA {training.name} {verb}: training {adapter.training_id}, {r['steps']} "
               f"steps, loss {r['first_loss']:.4f} → {r['final_loss']:.4f}{resumed}\n"
               f"  adapter: {adapter.adapter_uri}\n"
               f"  record:  {adapter.record_uri}\n"
               f"  in a job spec: params: {{lora: \"{adapter.adapter_uri}\"}}")
    return adapter
