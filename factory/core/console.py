"""What a run shows in the terminal: the dashboard's address, one progress display, nothing else.

One progress display per run (rows done of total, assets/s, ETA, failures, the slowest stage):
a ``rich`` live bar on a terminal, a line every few seconds otherwise (a log file, CI, a Ray
job's driver log). Ray Data's own progress bars stay off, so there is never a second set.
``quiet_ray`` hides what a user cannot act on: Ray's notice that token auth is on (the
dashboard line says how to use it), Ray Data's per-dataset INFO lines and its notice that its
bars are off. Their full logs stay in the Ray session's log directory.
"""

from __future__ import annotations

import logging
import sys
import time
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
