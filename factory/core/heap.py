"""Giving the memory a long-running driver has freed back to the system while a run streams.

glibc's ``malloc`` keeps what a process frees for its own later use, and can hand back to the
system only the free space at the top of each heap. A run's driver frees something for every
block it takes in (Ray's core worker holds a small block in the driver's own memory until its
consumer takes it, the recorder turns rows into tables), so its freed space is scattered
between blocks still alive and stays counted in its RSS: in a 100,000-row run of 16 px
images it grew to about 86 MiB that ``malloc_trim`` returned at once (``benchmarks/p4_memory.py``).
``HeapTrimmer`` calls glibc's ``malloc_trim(0)``, which also returns free pages from the middle
of every heap, every ``interval`` seconds from a thread of its own. Where the C library is not
glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any, Callable

#: Seconds between two trims while a run streams: a trim took 2-15 ms at 100,000 rows.
TRIM_INTERVAL_S = 2.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from this process's C library, or None without glibc."""
    try:
        trim: Any = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_freed_heap() -> bool:
    """Give the free pages of every malloc heap back to the system; whether there is a
    ``malloc_trim`` to do it (glibc) and it returned memory."""
    trim = _malloc_trim()
    return trim is not None and trim(0) == 1


class HeapTrimmer:
    """``with HeapTrimmer(): ...``: ``release_freed_heap`` every ``interval`` seconds until
    the block ends, from a daemon thread (none where there is no ``malloc_trim``).

    Attributes:
        trims: how many trims ran.
    """

    def __init__(self, interval: float = TRIM_INTERVAL_S) -> None:
        self.interval = interval
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "HeapTrimmer":
        if _malloc_trim() is not None:
            self._thread = threading.Thread(target=self._run, name="heap-trimmer", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            release_freed_heap()
            self.trims += 1
