"""What a run shows in the terminal: the dashboard's address, one progress display, nothing else.

One progress display per run (rows done of total, assets/s, ETA, failures, the slowest stage):
a ``rich`` live bar on a terminal, a line every few seconds otherwise (a log file, CI, a Ray
job's driver log). Ray Data's own progress bars stay off, so there is never a second set.
What a user cannot act on stays off the terminal, in the Ray session's log directory:
``quiet_ray``, Ray's notice that token auth is on (the dashboard line says how to use it);
``quiet_ray_data``, Ray Data's per-dataset INFO lines and its notice that its bars are off, on
the driver and (``quiet_ray_worker``, every worker's setup hook) in the workers, where Ray
Train runs Ray Data too; ``quiet_train_worker``, Ray Train's per-report lines;
``spend_restart_advisory``, Ray's actor-restart advisory. Warnings and errors still show.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

#: Console messages that say nothing a user can act on (the factory says it better).
_NOISE = ("Progress bars disabled",
          # Ray's default for a new local cluster; the dashboard line says how to use it
          "Token authentication is enabled for this Ray cluster")


def quiet_ray() -> None:
    """Before ``ray.init``: no notice that token auth is on (the dashboard line says it)."""
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if _drop_noise not in logger.filters:
        logger.addFilter(_drop_noise)


def quiet_ray_data() -> None:
    """After ``ray.init``: Ray Data's console handler shows warnings and errors only, less the
    notice that its progress bars are off (the factory draws its own). Its full log stays in
    the session's ``ray-data.log``."""
    logger = logging.getLogger("ray.data")
    for handler in logger.handlers:
        if type(handler).__name__ == "PlainRayHandler":
            handler.setLevel(logging.WARNING)
            handler.addFilter(_drop_noise)


def quiet_ray_worker() -> None:
    """Every Ray worker's setup hook (``init_ray`` names it in the job's runtime env): Ray
    Data's console there as on the driver (``quiet_ray_data``). Ray Data configures its
    loggers when imported, so it is imported first."""
    import ray.data  # noqa: F401 - imported for its logging set-up, used below

    quiet_ray_data()
    logging.getLogger(TRAIN_PG_CLEANER).addFilter(drop_state_api_polls)
    pin_state_api_address()


def pin_state_api_address() -> None:
    """In a Ray worker: ``RAY_ADDRESS`` names the cluster the worker runs in, unless set.

    Ray's State API client (Ray Train's placement-group cleaner calls it in a worker) finds its
    cluster by ``RAY_ADDRESS`` or else by looking for Ray instances on the machine, and gives
    up when it finds two: two local runs side by side on one machine. The worker's own GCS
    address is the one it means."""
    import ray

    if "RAY_ADDRESS" not in os.environ and ray.is_initialized():
        address = ray.get_runtime_context().gcs_address
        if address:
            os.environ["RAY_ADDRESS"] = address


#: Ray Train's detached placement-group cleaner: it polls the controller actor's state through
#: the State API, which the dashboard serves.
TRAIN_PG_CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def drop_state_api_polls(record: logging.LogRecord) -> bool:
    """False for the cleaner's "Failed to query Ray Train Controller actor state" warning.

    A local Ray started without its dashboard (``--no-dashboard``) has no State API, so the
    cleaner warns on every poll (about twenty times in one ``factory lora demo``) and can never
    succeed. Its other records (a dead controller, a placement group it removes) still show."""
    return not record.getMessage().startswith("Failed to query Ray Train Controller actor state")


def quiet_train_worker() -> None:
    """First thing in a Ray Train worker's loop: its console shows warnings and errors only.

    Ray Train gives a worker's root logger a console handler at INFO, and logs every report
    there under a logger named by its file's path, which ``RunConfig``'s ``LoggingConfig``
    (``ray.train`` loggers only) does not reach. The records stay in Ray Train's
    ``ray-train-app-worker-*.log`` under the session's ``logs/train/``."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PlainRayHandler":
            handler.setLevel(logging.WARNING)


#: Where ``spend_restart_advisory`` writes, under the Ray session's ``logs/``.
ADVISORY_LOG = "factory-driver.err"


def spend_restart_advisory(session_dir: str | None) -> None:
    """After ``ray.init``: put the driver's one actor-restart advisory in the session's logs.

    The driver's core worker logs, once per process, at ERROR to its log file *and* to
    stderr, that an actor with ``max_restarts > 0`` "has constructor arguments in the object
    store". Every Ray Data actor pool has: Ray Data ``ray.put``s each pool's map transformer
    and data context, passes the refs to its actors and holds them for the pool's life, so a
    restart finds them. The advisory says nothing
    a user can act on, and the restarts it is about are the fault tolerance the factory keeps.
    Ray has no switch for the driver's stderr sink alone (``RAY_BACKEND_LOG_LEVEL`` mutes every
    C++ error of the process, and announces itself on stderr), so the advisory is spent here:
    a restartable actor whose argument is in the object store is declared while the driver's
    stderr (fd 2) points at ``logs/factory-driver.err``, and killed at once. Drop this when
    Ray gives the advisory a switch of its own.
    """
    import ray

    @ray.remote(num_cpus=0, max_restarts=1)
    class _RestartAdvisory:
        def __init__(self, _arg: object) -> None:
            pass

    logs = Path(session_dir or "", "logs")
    target = logs / ADVISORY_LOG if session_dir and logs.is_dir() else Path(os.devnull)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with target.open("a") as sink:
            os.dup2(sink.fileno(), 2)
            actor = _RestartAdvisory.remote(ray.put(None))  # logged here, synchronously
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    ray.kill(actor)


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _NOISE)


def dashboard_line(url: str | None, *, token_auth: bool) -> str | None:
    """The line that tells where the dashboard is and how to open it."""
    if not url:
        return None
    url = url if url.startswith("http") else f"http://{url}"
    if token_auth:
        return (f"dashboard: {url}  (token auth is on: `ray get-auth-token` prints the token "
                "the page asks for)")
    return f"dashboard: {url}"


class RunProgress:
    """``on_progress`` for ``run_job``: a live bar on a terminal, a line every ``every_s``
    seconds elsewhere. Use as a context manager around the run."""

    def __init__(self, *, stream: TextIO | None = None, every_s: float = 3.0,
                 live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.live = self.stream.isatty() if live is None else live
        self.started = self.last = time.perf_counter()
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> RunProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("rows"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.stream), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("rows", total=None, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, counts: Any, total: int) -> None:
        now = time.perf_counter()
        line = self.describe(counts, now - self.started)
        if self._progress is not None:
            self._progress.update(self._task, total=total, completed=counts.total, detail=line)
            return
        if now - self.last < self.every_s and counts.total < total:
            return
        self.last = now
        self.stream.write(f"  {counts.total}/{total} rows: {line}\n")
        self.stream.flush()

    @staticmethod
    def describe(counts: Any, elapsed_s: float) -> str:
        """assets/s, failures, rejections and the slowest stage so far."""
        rate = counts.assets / max(elapsed_s, 1e-9)
        text = (f"{counts.assets} assets ({rate:.2f}/s), {counts.failed} failed, "
                f"{counts.rejected} rejected")
        if getattr(counts, "deferred", 0):  # rows past a budget (factory.cost.budget)
            text += f", {counts.deferred} deferred"
        slowest = slowest_stage(counts)
        return f"{text}; slowest stage {slowest}" if slowest else text


def slowest_stage(counts: Any) -> str:
    """The stage with the most milliseconds per asset so far, as ``name (N ms/asset)``."""
    means = {stage: ms / counts.stage_rows[stage] for stage, ms in counts.stage_ms.items()
             if counts.stage_rows.get(stage)}
    if not means:
        return ""
    stage = max(means, key=means.get)
    return f"{stage} ({means[stage]:.0f} ms/asset)"


#: Image processors that diffusers' modules import by name (pipelines: CLIP; the IP-adapter
#: loader: Siglip; AutoPipeline's newer pipelines: Siglip2). No stage uses one.
PIL_IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor", "Siglip2ImageProcessor")


def pil_image_processors() -> None:
    """Without torchvision, make each of ``PIL_IMAGE_PROCESSORS`` its PIL twin before
    diffusers imports it.

    In transformers 5 ``CLIPImageProcessor`` names the torchvision backend; where torchvision
    is not installed (it is not a dependency here) transformers falls back to
    ``CLIPImageProcessorPil`` on first access and warns, once per name and process, on the
    terminal. The factory's choice is the PIL backend: binding it here is the same fallback,
    made on purpose, so nothing warns. Where torchvision is installed nothing changes.
    """
    import sys

    import transformers
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    pil = {name: getattr(transformers, f"{name}Pil") for name in PIL_IMAGE_PROCESSORS}
    # Importing a processor imports transformers.processing_utils, which runs transformers'
    # __init__ again and leaves a new module object in sys.modules: bind on that one.
    module = sys.modules["transformers"]
    for name, cls in pil.items():
        if name not in vars(module):  # not resolved yet (resolving it is what warns)
            setattr(module, name, cls)
