"""The driver's freed heap given back to the system while a run streams (``factory.core.heap``)."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import pytest

from factory.core import heap

CHUNK = 4096  # under glibc's mmap threshold: every chunk comes from the heap


def _anonymous_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Anonymous line")


needs_glibc = pytest.mark.skipif(heap._malloc_trim() is None,
                                 reason="malloc_trim is glibc's; this C library has none")


@needs_glibc
def test_freed_chunks_below_a_live_one_go_back_to_the_system_only_when_trimmed():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(CHUNK) for _ in range(30_000)]  # ~117 MiB, every page touched
    for chunk in chunks:
        ctypes.memset(chunk, 1, CHUNK)
    top = libc.malloc(CHUNK)  # a live chunk above them: free() alone cannot shrink the heap
    for chunk in chunks:
        libc.free(chunk)
    try:
        kept = _anonymous_mib()
        assert heap.release_freed_heap() is True
        released = kept - _anonymous_mib()
        assert released > 80, f"only {released:.0f} MiB returned"
    finally:
        libc.free(top)


@needs_glibc
def test_the_trimmer_trims_on_its_interval_and_stops_with_its_block(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "release_freed_heap", lambda: calls.append(time.monotonic()))
    with heap.HeapTrimmer(interval=0.05) as trimmer:
        time.sleep(0.4)
    assert trimmer.trims == len(calls) >= 3
    assert not trimmer._thread.is_alive()
    after = len(calls)
    time.sleep(0.15)
    assert len(calls) == after  # nothing trims once the block has ended


def test_without_malloc_trim_nothing_runs(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.release_freed_heap() is False
    with heap.HeapTrimmer(interval=0.01) as trimmer:
        time.sleep(0.05)
    assert trimmer._thread is None and trimmer.trims == 0
