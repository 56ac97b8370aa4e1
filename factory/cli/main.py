"""The ``factory`` command line: the group, and the one place its commands are registered.

Each command group lives in a module of its own; exit codes are ``factory.cli.exits``. Run it as
``factory`` (the console script) or ``python -m factory.cli.main`` (what a Ray job runs).
"""

from __future__ import annotations

import logging

import click

from factory.cli.cluster import list_, logs, status_, stop, submit
from factory.cli.forecast import plan
from factory.cli.job import demo, refresh, run, validate
from factory.cli.lora import lora
from factory.cli.models import models
from factory.cli.publish import publish
from factory.cli.runs import runs
from factory.cli.schedule import schedule
from factory.core import settings

#: Every command of ``factory`` (its help lists them by name).
COMMANDS: tuple[click.Command, ...] = (
    validate, run, refresh, demo, plan,  # a job spec, run by this process
    submit, status_, logs, stop, list_,  # runs on a Ray cluster
    runs, publish, schedule, models, lora,
)


@click.group(commands=COMMANDS)
def main() -> None:
    """Distributed batch asset factory: SKU catalogs through chains of image models on Ray."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Only the factory's own loggers follow FACTORY_LOG_LEVEL: botocore at DEBUG would print
    # request headers, and those carry the access key id.
    for name in ("factory", "stages"):
        logging.getLogger(name).setLevel(settings.log_level())


if __name__ == "__main__":
    main()
