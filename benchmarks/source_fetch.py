"""Source photos per second, fetched and decoded, from a loopback HTTP server.

Serves procedurally generated JPEG photos (quality 90) from the tests' photo server on
127.0.0.1 and times two ways of fetching and decoding all of them at the same thread count:

- factory: one ``PhotoFetcher`` (policy checks, pooled keep-alive connections, bounded streamed
  body) used from a ``ThreadPoolExecutor(max_workers=policy.concurrency)``, as the factory's
  fetch task uses it, then ``decode_photo`` (size check, EXIF, ICC, 8-bit RGB(A));
- plain: the same executor running ``requests.get`` and ``PIL.Image.open(...).convert("RGB")``;
  ``requests.get`` opens a connection per photo, so a third side, plain with a
  ``requests.Session`` per thread, shows how much of the difference is connection reuse.

The sides take turns over the repeats (who goes first rotates); medians and the ratio
factory / plain are printed per size, then the factory's rate at 1, 4 and 16 threads.
The server runs in this process, so it shares the cores (and the GIL) with both sides.

    python benchmarks/source_fetch.py [--sizes 512,2048] [--photos 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory.core.photo_decode import decode_photo  # noqa: E402
from factory.store.photo_fetch import FetchPolicy, PhotoFetcher  # noqa: E402
from tests.support.photo_server import PhotoServer, Route  # noqa: E402

SWEEP = (1, 4, 16)


def make_photo(size: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth gradients, a pattern that differs per seed, and grain (so it
    compresses like a photo, not like a flat test card)."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3).astype(np.float32)
    tile = rng.normal(0.0, 6.0, (256, 256)).astype(np.float32)
    grain = np.tile(tile, (-(-size // 256), -(-size // 256)))[:size, :size]
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    for i in range(3):  # separable waves: two 1-D vectors and one outer product per channel
        rows = 70 * np.sin(axis * (3 + i) * np.float32(np.pi) + phase[i])
        columns = np.cos(axis * (2 + i) * np.float32(np.pi))
        channel = np.outer(rows, columns) + 40 * axis[None, :] + (110 + grain)
        pixels[..., i] = np.clip(channel, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def factory_rate(urls: list[str], threads: int) -> float:
    """Photos/s with a ``PhotoFetcher`` (new per pass, as per task) and ``decode_photo``."""
    policy = FetchPolicy(allow_private=("127.0.0.1",), concurrency=threads)
    fetcher = PhotoFetcher(policy)

    def one(url: str) -> tuple[int, ...]:
        return decode_photo(fetcher.fetch(url).data).shape

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=policy.concurrency) as pool:
        shapes = list(pool.map(one, urls))
    elapsed = time.perf_counter() - start
    fetcher.close()
    assert len(shapes) == len(urls) and all(s[2] == 3 for s in shapes)
    return len(urls) / elapsed


def plain_rate(urls: list[str], threads: int, *, session_per_thread: bool = False) -> float:
    """Photos/s with ``requests.get`` and PIL, at the same thread count; with
    ``session_per_thread`` each thread keeps a ``requests.Session`` (keep-alive), to show how
    much of the difference is connection reuse."""
    local = threading.local()

    def one(url: str) -> tuple[int, ...]:
        if session_per_thread:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            response = local.session.get(url, timeout=60)
        else:
            response = requests.get(url, timeout=60)
        response.raise_for_status()
        return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).shape

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        shapes = list(pool.map(one, urls))
    elapsed = time.perf_counter() - start
    assert len(shapes) == len(urls)
    return len(urls) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="512,2048", help="photo sides, comma-separated")
    parser.add_argument("--photos", type=int, default=64, help="photos per size")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per side")
    parser.add_argument("--threads", type=int, default=16, help="threads for the comparison")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"Source photos: fetch + decode, loopback HTTP, {args.photos} JPEG (Q90) photos per "
          f"size, {args.threads} threads, median of {args.repeats} interleaved repeats, "
          f"{os.cpu_count()} CPUs")
    rows, sweeps = [], []
    with PhotoServer() as server:
        for size in sizes:
            made = time.perf_counter()
            photos = [make_photo(size, seed) for seed in range(args.photos)]
            urls = [server.route(f"/{size}/{i}.jpg", Route(body=photo))
                    for i, photo in enumerate(photos)]
            made = time.perf_counter() - made
            factory_rate(urls[:4], 2), plain_rate(urls[:4], 2)  # warm-up: imports, codecs
            sides = {"factory": factory_rate, "plain": plain_rate,
                     "session": lambda u, t: plain_rate(u, t, session_per_thread=True)}
            rates: dict[str, list[float]] = {side: [] for side in sides}
            for repeat in range(args.repeats):
                order = list(sides)[repeat % 3:] + list(sides)[:repeat % 3]  # rotate who is first
                for side in order:
                    rates[side].append(sides[side](urls, args.threads))
            medians = {side: statistics.median(values) for side, values in rates.items()}
            kib = sum(map(len, photos)) / len(photos) / 1024
            rows.append((size, kib, medians, made))
            sweeps.append((size, [factory_rate(urls, threads) for threads in SWEEP]))
            print(f"  {size}² (made in {made:.1f} s), photos/s per repeat: " + "; ".join(
                f"{side} {', '.join(f'{r:.1f}' for r in values)}"
                for side, values in rates.items()), flush=True)
    print()
    print(f"{'size':>7} {'photo KiB':>10} {'factory /s':>11} {'plain /s':>9} "
          f"{'factory ÷ plain':>16} {'plain+Session /s':>17}")
    for size, kib, medians, _ in rows:
        print(f"{f'{size}²':>7} {kib:10.0f} {medians['factory']:11.1f} {medians['plain']:9.1f} "
              f"{medians['factory'] / medians['plain']:16.2f} {medians['session']:17.1f}")
    print()
    print("factory rate by concurrency (policy.concurrency = threads), photos/s, one pass each:")
    print(f"{'size':>7} " + " ".join(f"{f'c={c}':>8}" for c in SWEEP))
    for size, values in sweeps:
        print(f"{f'{size}²':>7} " + " ".join(f"{v:8.1f}" for v in values))


if __name__ == "__main__":
    main()
