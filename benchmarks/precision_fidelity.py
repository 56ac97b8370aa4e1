"""Precision per stage: float32 against bfloat16, channels_last on and off, and what bf16 costs
in fidelity, for each torch stage on its tiny model at the demo's sizes.

Each stage is loaded twice, pinned to ``dtype: float32`` and to ``dtype: bfloat16``; each
load runs its batch in its default memory format and in the other one (``channels_last`` on
the UNet and VAE, or on Swin2SR's convolutions), in turn: every repeat times all four
variants back to back (interleaved), and the table prints each variant's median and its
speed against float32 in the default layout, in this process's CPU seconds (steady on a
shared machine: time spent waiting for a core is not counted) and in wall seconds. The fidelity columns compare the bf16 output
with the float32 output of the same rows: PSNR (dB, over all pixels) and mean CIEDE2000.

``--compile`` also times ``torch.compile`` of the generate stage's denoiser: the first
(compiling) call's extra seconds, the per-batch gain after it, and the batches a job needs
before the compile has paid for itself.

    python benchmarks/precision_fidelity.py [--repeats 3] [--threads 1] [--compile]

Needs a CPU with native bf16 (AMX-BF16 or AVX512-BF16) for the bf16 timings to mean what the
factory chooses; elsewhere bf16 is emulated (and ``dtype: auto`` is float32).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

#: (label, card, params, input kind, input side): the demo's sizes (``jobs/demo.yaml``), and
#: the mission order's LoRA pass at 256 px (``benchmarks/p0_vs_loop.py``).
CASES = (
    ("generate 64px", "generate/sd-tiny", {"width": 64, "height": 64, "steps": 2,
                                            "guidance": 1.0}, "text", 0),
    ("scene 64px", "scene/sd-inpaint-tiny", {"width": 64, "height": 64, "steps": 2}, "cutout",
     96),
    ("lora 64px", "lora/sd-tiny-brand", {"lora": "tiny:sd-tiny-lora", "adapter_scale": 0.8,
                                          "strength": 0.4, "steps": 2}, "image", 64),
    ("lora 256px", "lora/sd-tiny-brand", {"lora": "tiny:sd-tiny-lora", "adapter_scale": 0.8,
                                           "strength": 0.5, "steps": 2}, "image", 256),
    ("upscale x2 64px", "upscale/swin2sr-tiny-x2", {"tile": 64, "overlap": 16,
                                                    "min_tile": 32}, "image", 64),
)


def rows(kind: str, side: int, n: int) -> dict[str, np.ndarray]:
    from factory.core import images

    rng = np.random.default_rng(0)
    batch = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
             "status": np.array(["ok"] * n, dtype=object),
             "seed": np.arange(n, dtype=np.int64) + 11,
             "prompt": np.array(["photo of a red ceramic mug"] * n, dtype=object),
             "negative_prompt": np.array(["blurry"] * n, dtype=object)}
    if kind == "image":
        batch.update(images.store("image", [rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                                            for _ in range(n)]))
    elif kind == "cutout":
        cut = []
        for _ in range(n):
            image = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
            image[..., 3] = 0
            image[side // 4: 3 * side // 4, side // 3: 2 * side // 3, 3] = 255
            cut.append(image)
        batch.update(images.store("image", cut))
    return batch


def build(card_name: str, params: dict[str, Any], dtype: str, models_dir: Path):
    from stages.base import StagePlan
    from stages.registry import get_card
    from stages.weights import resolve_source

    card = get_card(card_name)
    plan = StagePlan(name=card.kind, card=card, params=card.make_params({**params,
                                                                         "dtype": dtype}),
                     source=resolve_source(card.source, models_dir), revision="local",
                     resources=card.resources, models_dir=str(models_dir))
    return card.runtime(plan=plan)


def layout(stage, channels_last: bool) -> None:
    """Put the stage's convolutional modules in ``channels_last`` or back in contiguous."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    modules = [getattr(stage.pipe, n) for n in ("unet", "vae") if hasattr(stage, "pipe")] \
        if hasattr(stage, "pipe") else [stage.model]
    for module in modules:
        module.to(memory_format=fmt)


def run(stage, batch) -> list[np.ndarray]:
    from factory.core import images

    out = stage(dict(batch))
    assert list(out["status"]) == ["ok"] * len(batch["sku"]), out["error"]
    return images.load("image", out)


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, CPU seconds (this process and the children it waited for: the C++
    compiler ``torch.compile`` runs), and ``fn``'s result. On a shared machine the CPU seconds
    of a one-thread run are the steadier figure: waiting for a core is not in them."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    return time.perf_counter() - wall, _cpu_seconds() - cpu, result


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def fidelity(reference: list[np.ndarray], other: list[np.ndarray]) -> tuple[float, float]:
    """PSNR (dB) over all RGB pixels, and mean CIEDE2000, of ``other`` against ``reference``."""
    from stages.colour import delta_e_2000, srgb_to_lab

    a = np.stack([r[..., :3] for r in reference]).astype(np.float64)
    b = np.stack([o[..., :3] for o in other]).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    de = delta_e_2000(srgb_to_lab(a.astype(np.uint8).reshape(-1, 3)),
                      srgb_to_lab(b.astype(np.uint8).reshape(-1, 3)))
    return psnr, float(np.mean(de))


def bench_case(label, card, params, kind, side, *, models_dir, repeats, batch_size) -> list[str]:
    batch = rows(kind, side, batch_size)
    stages = {dtype: build(card, params, dtype, models_dir) for dtype in ("float32", "bfloat16")}
    variants = [(dtype, cl) for dtype in ("float32", "bfloat16") for cl in (False, True)]
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {v: [] for v in variants}
    outputs: dict[tuple[str, bool], list[np.ndarray]] = {}
    for dtype, cl in variants:  # warm-up: first calls allocate and pick kernels
        layout(stages[dtype], cl)
        outputs[(dtype, cl)] = run(stages[dtype], batch)
    for _ in range(repeats):
        for dtype, cl in variants:
            layout(stages[dtype], cl)
            wall, cpu, _ = timed(lambda: run(stages[dtype], batch))
            times[(dtype, cl)].append((wall, cpu))

    def median(variant: tuple[str, bool], which: int) -> float:
        return statistics.median(t[which] for t in times[variant])

    base_wall, base_cpu = median(("float32", False), 0), median(("float32", False), 1)
    psnr, de = fidelity(outputs[("float32", False)], outputs[("bfloat16", False)])
    lines = []
    for variant in variants:
        dtype, cl = variant
        wall, cpu = median(variant, 0), median(variant, 1)
        fid = f"{psnr:6.1f} | {de:5.2f}" if dtype == "bfloat16" and not cl else "    -- |    --"
        lines.append(f"| {label:16} | {dtype:8} | {'on ' if cl else 'off'} | "
                     f"{cpu * 1000:8.0f} | {base_cpu / cpu:5.2f} | {wall * 1000:8.0f} | "
                     f"{base_wall / wall:5.2f} | {fid} |")
    return lines


def bench_compile(models_dir: Path, repeats: int, batch_size: int) -> str:
    """The generate stage at the demo's size, eager against compiled, in its ``auto`` dtype."""
    from stages.precision import resolve

    import torch._inductor.config

    torch._inductor.config.compile_threads = 1  # in this process, so its CPU time is counted
    label, card, params, kind, side = CASES[0]
    dtype = resolve("auto", device="cpu", cuda_dtype="float16")
    batch = rows(kind, side, batch_size)
    eager = build(card, params, dtype, models_dir)
    compiled = build(card, {**params, "compile": True}, dtype, models_dir)
    run(eager, batch)
    _, first, _ = timed(lambda: run(compiled, batch))
    pairs = {"eager": [], "compiled": []}
    for _ in range(repeats):
        pairs["eager"].append(timed(lambda: run(eager, batch))[1])
        pairs["compiled"].append(timed(lambda: run(compiled, batch))[1])
    e, c = statistics.median(pairs["eager"]), statistics.median(pairs["compiled"])
    overhead, gain = first - c, e - c
    even = f"{overhead / gain:.0f} batches" if gain > 0 else "never (compiled is not faster)"
    return (f"compile ({label}, {dtype}, batch {batch_size}, CPU seconds, the C++ compiler's "
            f"included): first call {first:.1f} s, "
            f"eager {e * 1000:.0f} ms/batch, compiled {c * 1000:.0f} ms/batch, "
            f"compile overhead {overhead:.1f} s, gain {gain * 1000:.0f} ms/batch: "
            f"break-even after {even}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (a demo actor runs on 1)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=None, help="case labels to run")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from stages.precision import cpu_bf16
    from stages.tiny.models import make_all

    torch.set_num_threads(args.threads)
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="bench-precision-"))
    make_all(models_dir)
    print(f"torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_bf16()}, "
          f"{args.threads} thread(s), batch {args.batch}, medians of {args.repeats} "
          "interleaved repeats")
    print("| stage            | dtype    | channels_last | CPU ms/batch | x fp32 (CPU) | "
          "wall ms/batch | x fp32 (wall) | PSNR dB | mean dE00 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        if args.only and case[0] not in args.only:
            continue
        for line in bench_case(*case, models_dir=models_dir, repeats=args.repeats,
                               batch_size=args.batch):
            print(line, flush=True)
    if args.compile:
        print(bench_compile(models_dir, args.repeats, args.batch), flush=True)


if __name__ == "__main__":
    main()
