"""Killing a process and everything it started, as a machine losing power would.

``os.killpg`` reaches only the process group; a local Ray's workers may live outside it and
finish what they were doing after their driver is gone. ``kill_tree`` stops the whole tree first
(nothing in it can start anything new), then kills it, then waits until every process is gone, so
what a test reads afterwards cannot change under it.
"""

from __future__ import annotations

import os
import signal
import time

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:  # already gone
        return []


def kill_tree(pid: int, *, timeout_s: float = 30.0) -> int:
    """SIGSTOP then SIGKILL ``pid``, its process group and every descendant; return how many
    processes were killed once all are gone."""
    seen: dict[int, psutil.Process] = {}
    for _ in range(3):  # stop what is there, then look again for what started meanwhile
        for proc in _tree(pid):
            if proc.pid not in seen:
                seen[proc.pid] = proc
                try:
                    proc.send_signal(signal.SIGSTOP)
                except psutil.Error:
                    pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for proc in seen.values():
        try:
            proc.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout_s
    alive = list(seen.values())
    while alive and time.monotonic() < deadline:
        alive = [proc for proc in alive if _running(proc)]
        time.sleep(0.05)
    if alive:
        raise RuntimeError(f"still alive after SIGKILL: {[p.pid for p in alive]}")
    return len(seen)


def _running(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs: a zombie (dead, not yet reaped) does not."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
