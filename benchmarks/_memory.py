"""Peak memory while something runs: the driver's RSS and the Ray object store in use.

A background thread samples both every ``interval`` seconds; the driver's figure is also
checked against the kernel's own high-water mark (``ru_maxrss``), which no sampling can miss.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil


@dataclass
class Peaks:
    """High-water marks in bytes."""

    driver_rss: int = 0
    object_store: int = 0
    spilled: int = 0
    samples: int = 0
    store_samples: int = 0


class MemorySampler:
    """``with MemorySampler() as peaks: ...``; object store sampling starts once Ray is up."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peaks = interval, Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._raylet: tuple[str, int] | None = None

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self.peaks

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        kernel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        self.peaks.driver_rss = max(self.peaks.driver_rss, kernel)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self.peaks.samples += 1
        self.peaks.driver_rss = max(self.peaks.driver_rss, psutil.Process().memory_info().rss)
        try:
            used, spilled = self._object_store()
        except Exception:  # noqa: BLE001 - Ray not up yet, or already down
            return
        self.peaks.store_samples += 1
        self.peaks.object_store = max(self.peaks.object_store, used)
        self.peaks.spilled = max(self.peaks.spilled, spilled)

    def _object_store(self) -> tuple[int, int]:
        import ray
        from ray._private.internal_api import node_stats

        if not ray.is_initialized():
            raise RuntimeError("ray is not initialised")
        if self._raylet is None:
            node = next(n for n in ray.nodes() if n["Alive"])
            self._raylet = (node["NodeManagerAddress"], node["NodeManagerPort"])
        stats = node_stats(*self._raylet, include_memory_info=False).store_stats
        return int(stats.object_store_bytes_used), int(stats.spilled_bytes_total)


def run_child(script: Path, args: list[str]) -> dict:
    """Run ``script --child ARGS`` in a fresh process (its own peaks, its own Ray); return the
    JSON object it prints last."""
    proc = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True,
                          text=True, cwd=script.parent)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{script.name} {' '.join(args)} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(peaks: Peaks, **extra: object) -> None:
    """Print the child's figures as its last line."""
    print(json.dumps({**asdict(peaks), **extra}))


def mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"

