"""P5 and P6: the five-stage chain on one GPU at real architecture shapes, random weights.

    python benchmarks/gpu_chain.py            # a CUDA machine: real shapes, the cards' dtypes
    python benchmarks/gpu_chain.py --toy      # anywhere: toy shapes and sizes, float32 on CPU

The chain is ``jobs/catalog-gpu.yaml``'s, with ``generate/flux-schnell``: generate (FLUX.1-schnell:
19 double + 38 single stream blocks, CLIP-L, T5-XXL, 16-channel VAE; 1024², 4 steps, bf16) →
segment (rembg's u2net contract at 320²: a stand-in ONNX conv net of U²-Net's ~37 GFLOPs, on
the CUDA provider where onnxruntime has it) → lora (SDXL-Turbo img2img: the SDXL UNet and both
text encoders, fp16; 2 steps; the LoRA fused at load costs what the base weights cost, so none
is loaded) → recolor (Lab, CPU) → upscale (Swin2SR classical x2, bf16, 1024² → 2048²). Nothing
is downloaded: every model is built from its published config with random weights, directly on
the device, in the dtype its card gives on CUDA; the stages run through the factory's own
runtime classes (only ``_from_pretrained`` is replaced), at the batch sizes of the cards.

Each stage runs alone over the same assets, after one warm-up batch, in one process: all the GPU
stages share the one GPU, so the chain's rate per GPU is ``3600 / Σ GPU-stage s/asset`` (the
CPU stage overlaps them in the factory's pipeline). While each stage runs, a thread samples
NVML's GPU utilisation (the fraction of time a kernel ran) every 20 ms; P6 is that fraction
for the bottleneck stage. ``--toy`` runs the same builders at toy shapes on the CPU (the unit
tests run it, so this script cannot rot); its figures are not P5/P6.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

P5_GOAL, P6_GOAL = 3000.0, 0.92
#: The byte-level CLIP tokenizer's own special tokens (nothing is downloaded, not even a vocab).
_CLIP_TOKENS = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)

#: Published configs (diffusers / transformers ``config.json`` of each checkpoint).
REAL: dict[str, Any] = {
    "size": 1024,
    "flux": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                 pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56)),
    "flux_vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                     latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                     scaling_factor=0.3611, shift_factor=0.1159, sample_size=1024),
    "t5": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
               num_heads=64, feed_forward_proj="gated-gelu"),
    "clip_l": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                   num_hidden_layers=12, num_attention_heads=12, projection_dim=768,
                   hidden_act="quick_gelu", **_CLIP_TOKENS),
    "clip_g": dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                   num_hidden_layers=32, num_attention_heads=20, projection_dim=1280,
                   hidden_act="gelu", **_CLIP_TOKENS),
    "sdxl_unet": dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                      transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                      cross_attention_dim=2048, projection_class_embeddings_input_dim=2816,
                      addition_time_embed_dim=256,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                        "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")),
    "sdxl_vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                     latent_channels=4, scaling_factor=0.13025, sample_size=1024,
                     force_upcast=True),
    "swin2sr": dict(embed_dim=180, depths=[6] * 6, num_heads=[6] * 6, image_size=64),
    "segment": dict(side=320, hidden=64, layers=5),
}
#: The same builders at the tiny models' shapes (factory/tiny_models.py).
TOY: dict[str, Any] = {
    "size": 32,
    "flux": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                 pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 4, 8)),
    "flux_vae": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                     use_quant_conv=False, use_post_quant_conv=False, norm_num_groups=4,
                     scaling_factor=1.5035, shift_factor=0.0609, sample_size=32),
    "t5": dict(vocab_size=200, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, feed_forward_proj="gated-gelu"),
    "clip_l": dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, projection_dim=32, **_CLIP_TOKENS),
    "clip_g": dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                   num_attention_heads=4, projection_dim=32, **_CLIP_TOKENS),
    "sdxl_unet": dict(sample_size=32, block_out_channels=(8, 16), layers_per_block=1,
                      transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4),
                      cross_attention_dim=64, projection_class_embeddings_input_dim=80,
                      addition_time_embed_dim=8, norm_num_groups=4,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
    "sdxl_vae": dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                     norm_num_groups=4, sample_size=64),
    "swin2sr": dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], image_size=64),
    "segment": dict(side=320, hidden=8, layers=1),
}


@contextmanager
def building(device: str, dtype: Any) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: a 12B model never exists in
    float32 or on the host."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _tokenizers() -> tuple[Any, Any]:
    from transformers import CLIPTokenizer, T5Tokenizer

    from stages.tiny.common import CLIP_MAX_LENGTH, _clip_vocab
    from stages.tiny.families import _t5_vocab

    clip = CLIPTokenizer(vocab=_clip_vocab(), merges=[], model_max_length=CLIP_MAX_LENGTH)
    return clip, T5Tokenizer(vocab=_t5_vocab(), extra_ids=0, model_max_length=512)


def _vae(config: dict) -> Any:
    from diffusers import AutoencoderKL

    levels = len(config["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, **config)


def build_flux(shapes: dict, dtype: Any, device: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = _tokenizers()
    # schedulers keep float32 numpy state: made outside the device and dtype of the weights
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    with building(device, dtype):
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=_vae(shapes["flux_vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**shapes["clip_l"])),
            tokenizer=clip_tokenizer,
            text_encoder_2=T5EncoderModel(T5Config(**shapes["t5"])),
            tokenizer_2=t5_tokenizer,
            transformer=FluxTransformer2DModel(**shapes["flux"]))
    return pipe


def build_sdxl_img2img(shapes: dict, dtype: Any, device: str) -> Any:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip_tokenizer, _ = _tokenizers()
    scheduler = EulerAncestralDiscreteScheduler(timestep_spacing="trailing")
    with building(device, dtype):
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=_vae(shapes["sdxl_vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**shapes["clip_l"])),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**shapes["clip_g"])),
            tokenizer=clip_tokenizer, tokenizer_2=clip_tokenizer,
            unet=UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True,
                                      addition_embed_type="text_time", **shapes["sdxl_unet"]),
            scheduler=scheduler,
            requires_aesthetics_score=False, force_zeros_for_empty_prompt=True)
    return pipe


def build_swin2sr(shapes: dict, dtype: Any, device: str) -> Any:
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    config = Swin2SRConfig(patch_size=1, num_channels=3, window_size=8, mlp_ratio=2.0,
                           upscale=2, img_range=1.0, upsampler="pixelshuffle",
                           resi_connection="1conv", **shapes["swin2sr"])
    with building(device, dtype):
        return Swin2SRForImageSuperResolution(config).eval()


def write_segment_onnx(path: Path, *, side: int, hidden: int, layers: int) -> Path:
    """rembg's u2net contract (``input.1`` N x 3 x side² → ``d0`` N x 1 x side²) over a stack
    of 3x3 convolutions; 5 layers of 64 channels at 320² are ~37 GFLOPs, U²-Net's cost."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, previous, channels = [], [], "input.1", 3
    for i in range(layers):
        w = rng.normal(0, (2 / (9 * channels)) ** 0.5, (hidden, channels, 3, 3))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(hidden, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"h{i}"],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"h{i}"], [f"a{i}"])]
        previous, channels = f"a{i}", hidden
    w = rng.normal(0, 0.1, (1, channels, 3, 3)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "wo"), numpy_helper.from_array(np.zeros(1, np.float32),
                                                                        "bo")]
    nodes += [helper.make_node("Conv", [previous, "wo", "bo"], ["logits"], kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1]),
              helper.make_node("Sigmoid", ["logits"], ["d0"])]
    graph = helper.make_graph(
        nodes, "segment_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["batch", 1, side, side])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def random_weights(runtime: type, build: Any, shapes: dict) -> type:
    """The stage's own runtime class, with random weights built in place of the checkpoint."""

    class RandomWeights(runtime):  # type: ignore[misc, valid-type]
        def _from_pretrained(self, dtype: Any, *_: Any) -> Any:
            return build(shapes, dtype, torch_device(self.plan.resources.num_gpus))

    from stages.weights import torch_device

    RandomWeights.__name__ = runtime.__name__
    return RandomWeights


@dataclass
class StageRun:
    name: str
    card: str
    device: str
    dtype: str
    batch_size: int
    seconds_per_asset: float
    gpu_busy: float | None
    gpu: bool


class BusySampler:
    """NVML utilisation of GPU 0 every ``interval`` s while running; None without NVML."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.samples, self._stop = interval, [], threading.Event()
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no NVML (no driver, no package): no figure
            self._nvml = None

    def __enter__(self) -> BusySampler:
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return statistics.fmean(self.samples) / 100.0 if self.samples else None


def rows(n: int, size: int) -> dict[str, np.ndarray]:
    return {"sku": np.array([f"B{i:04d}" for i in range(n)], dtype=object),
            "variant": np.array(["bench"] * n, dtype=object),
            "seed": np.arange(n, dtype=np.int64) + 1,
            "prompt": np.array(["studio photo of a red ceramic mug"] * n, dtype=object),
            "negative_prompt": np.array([""] * n, dtype=object),
            "width": np.full(n, size, dtype=np.int64), "height": np.full(n, size, dtype=np.int64),
            "palette": np.array([""] * n, dtype=object), "row": np.arange(n, dtype=np.int64),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object),
            "failed_stage": np.array([""] * n, dtype=object)}


def chunks(batch: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(batch["sku"])
    for start in range(0, n, size):
        yield {k: v[start: start + size] for k, v in batch.items()}


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    from factory.core import images

    out = {}
    for key in parts[0]:
        if key == "image":
            out.update(images.store("image", [a for p in parts for a in images.load("image", p)]))
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def make_stages(shapes: dict, *, toy: bool, workdir: Path) -> list[Any]:
    import onnxruntime

    from stages.base import StagePlan
    from stages.registry import REGISTRY

    size = shapes["size"]
    onnx_path = write_segment_onnx(workdir / "segment.onnx", **shapes["segment"])
    cuda_onnx = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    chain = [  # (stage, card, params, builder)
        ("generate", "generate/flux-schnell", {"width": size, "height": size}, build_flux),
        ("segment", "segment/u2net", {"custom_family": "u2net_custom"}, None),
        ("lora", "lora/sdxl-turbo-brand", {"strength": 0.5}, build_sdxl_img2img),
        ("recolor", "recolor/lab", {}, None),
        ("upscale", "upscale/swin2sr-x2", {}, build_swin2sr),
    ]
    stages = []
    for name, card_name, params, build in chain:
        card = REGISTRY[card_name]
        resources = card.resources
        if toy or (name == "segment" and not cuda_onnx):
            if name == "segment" and not toy:
                print("segment: onnxruntime has no CUDA provider here: it runs on the CPU")
            resources = replace(resources, num_gpus=0)
        runtime = random_weights(card.runtime, build, shapes) if build else card.runtime
        source = str(onnx_path) if name == "segment" else (f"random-weights/{card.name}"
                                                            if build else "")
        plan = StagePlan(name=name, card=card,
                         params=card.make_params({**card.example_params, **params}),
                         source=source, revision="local", resources=resources)
        stages.append(runtime(plan=plan))
    return stages


def run_stage(stage: Any, batch: dict[str, np.ndarray], sync: Any) -> tuple[dict, StageRun]:
    size = stage.plan.resources.batch_size
    stage(next(chunks(batch, size)))  # warm-up: kernels, autotuning, allocator
    sync()
    with BusySampler() as sampler:
        started = time.perf_counter()
        out = concat([stage(part) for part in chunks(batch, size)])
        sync()
        seconds = time.perf_counter() - started
    failed = [e for s, e in zip(out["status"], out["error"]) if s != "ok"]
    if failed:
        raise RuntimeError(f"stage {stage.plan.name}: {len(failed)} rows failed: {failed[0]}")
    return out, StageRun(stage.plan.name, stage.plan.card.name, stage.device,
                         str(getattr(stage, "dtype", "-")).removeprefix("torch."), size,
                         seconds / len(batch["sku"]), sampler.busy,
                         stage.plan.resources.num_gpus > 0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="toy shapes and sizes, on the CPU")
    parser.add_argument("--assets", type=int, default=None,
                        help="assets through the chain (default: 16 real, 2 toy)")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.toy
    if not cuda and not args.toy:
        parser.error("no CUDA here: run with --toy (toy shapes on the CPU), or on a GPU machine")
    shapes = TOY if args.toy else REAL
    assets = args.assets or (2 if args.toy else 16)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    workdir = Path(tempfile.mkdtemp(prefix="gpu-chain-"))
    stages = make_stages(shapes, toy=args.toy, workdir=workdir)
    batch, runs = rows(assets, shapes["size"]), []
    for stage in stages:
        batch, result = run_stage(stage, batch, sync)
        runs.append(result)
    gpu_runs = [r for r in runs if r.gpu] or runs
    per_gpu = 3600.0 / sum(r.seconds_per_asset for r in gpu_runs)
    bottleneck = max(gpu_runs, key=lambda r: r.seconds_per_asset)
    device = torch.cuda.get_device_name(0) if cuda else "CPU (toy shapes; not P5/P6)"
    print(f"gpu_chain: {assets} assets, {shapes['size']}² → {shapes['size'] * 2}², {device}")
    print(f"{'stage':9} {'card':24} {'device':6} {'dtype':9} {'batch':>5} {'s/asset':>9} "
          f"{'gpu busy':>8}")
    for r in runs:
        busy = "-" if r.gpu_busy is None else f"{r.gpu_busy:.2f}"
        print(f"{r.name:9} {r.card:24} {r.device:6} {r.dtype:9} {r.batch_size:>5} "
              f"{r.seconds_per_asset:>9.4f} {busy:>8}")
    busy = bottleneck.gpu_busy
    print(f"P5 chain: {per_gpu:,.0f} assets/hour/GPU (goal ≥ {P5_GOAL:,.0f}"
          + (")" if cuda else "; toy run, not a P5 figure)"))
    print(f"P6 bottleneck {bottleneck.name}: GPU busy "
          + ("n/a (no NVML: pip install nvidia-ml-py on a CUDA machine)" if busy is None
             else f"{busy:.2f} (goal ≥ {P6_GOAL})"))
    return {"assets_per_hour_per_gpu": per_gpu, "bottleneck": bottleneck.name,
            "bottleneck_busy": busy, "stages": runs, "device": device}


if __name__ == "__main__":
    main()
