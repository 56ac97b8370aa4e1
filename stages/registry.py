"""The model registry: one literal list of cards. ``factory models list`` prints it.

Adding a model of an existing family is adding a card here, no new class.
"""

from __future__ import annotations

from stages.base import HostedApi, Resources, StageCard
from stages.generate_diffusers import DiffusersGenerator, FluxGenerateParams, GenerateParams
from stages.hosted import HostedGenerateParams, HostedGenerator, HostedParams
from stages.hosted_edit import (HostedScene, HostedSceneParams, HostedSegment, HostedUpscale,
                                HostedUpscaleParams)
from stages.lora_diffusers import LoraImg2Img, LoraParams
from stages.recolor_lab import LabRecolor, RecolorParams
from stages.scene_inpaint import (SCENE_METRICS, SCENE_OUTPUTS, DiffusersScene,
                                  FluxSceneParams, SceneParams)
from stages.segment_rembg import RembgSegmenter, SegmentParams
from stages.segment_studio import StudioKeyParams, StudioKeySegmenter
from stages.simulated import (SimGenerateParams, SimLoraParams, SimParams, SimUpscaleParams,
                              SimulatedStage)
from stages.source_photo import SOURCE_URI, PhotoSource, PhotoSourceParams
from stages.synthetic import Passthrough, PassthroughParams, SyntheticGenerator, SyntheticParams
from stages.upscale_swin2sr import LanczosParams, LanczosUpscaler, Swin2SRUpscaler, UpscaleParams

_IMAGE = ("image",)
_TEXT = ("prompt", "negative_prompt", "seed")
_IMG2IMG = ("image", "prompt", "negative_prompt", "seed")
_ALPHA = (("alpha_coverage", "float64"),)
_LOCAL = Resources(num_gpus=0, num_cpus=1, batch_size=8, concurrency=1)
#: What the turbo model cards advise: 512 px, 1 step (img2img: 2), no guidance, float16.
_TURBO = {"width": 512, "height": 512, "steps": 1, "guidance": 0.0}

CARDS: tuple[StageCard, ...] = (
    StageCard(
        name="source/photo",
        kind="source",
        cpu_only=True,
        runtime=PhotoSource,
        params=PhotoSourceParams,
        inputs=(SOURCE_URI,),
        outputs=_IMAGE,
        # decoding is CPU work; the fetch itself runs in the work list (``factory.run.sources``)
        resources=Resources(num_cpus=0.5, batch_size=16),
        cost_weight=0.0,
        description="The row's own product photo (path, s3:// or http(s)://), fetched with "
                    "SSRF checks and decoded defensively",
    ),
    StageCard(
        name="generate/sd-tiny",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="tiny:sd-tiny",
        revision="local",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0, num_cpus=1, batch_size=8, concurrency=1),
        cost_weight=0.1,
        description="Tiny random-weight Stable Diffusion (real architecture) for tests and demo",
        family="sd",
        cuda_dtype="float16",
    ),
    StageCard(
        name="generate/sd-turbo",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="stabilityai/sd-turbo",
        revision="main",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=8, concurrency=1),
        cost_weight=1.0,
        description="SD-Turbo 512px, 1-4 steps, guidance 0: cheap thumbnails",
        family="sd",
        cuda_dtype="float16",
        defaults=_TURBO,
    ),
    StageCard(
        name="generate/sdxl-turbo",
        kind="generate",
        runtime=DiffusersGenerator,
        params=GenerateParams,
        source="stabilityai/sdxl-turbo",
        revision="main",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4, concurrency=1),
        cost_weight=3.0,
        description="SDXL-Turbo 512px, 1-4 steps",
        family="sdxl",
        cuda_dtype="float16",
        defaults=_TURBO,
    ),
    StageCard(
        name="generate/flux-schnell",
        kind="generate",
        runtime=DiffusersGenerator,
        params=FluxGenerateParams,
        source="black-forest-labs/FLUX.1-schnell",
        revision="main",
        weight_format="safetensors",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4, concurrency=1),
        cost_weight=10.0,
        description="FLUX.1-schnell 1024px, 4 steps, bf16: hero shots",
        family="flux",
        cuda_dtype="bfloat16",
        defaults={"width": 1024, "height": 1024, "steps": 4, "guidance": 0.0},
    ),
    StageCard(
        name="generate/fal-flux-pro",
        kind="generate",
        cpu_only=True,  # the provider's GPUs: the actor only waits on the network
        runtime=HostedGenerator,
        params=HostedGenerateParams,
        revision="v1.1",
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0, num_cpus=0.25, batch_size=8, concurrency=1),
        cost_weight=40.0,
        description="FLUX1.1 [pro] on fal's queue API (fal-client; FAL_KEY): hero shots from "
                    "a premium model, billed per megapixel",
        defaults={"width": 1024, "height": 1024},
        hosted=HostedApi(
            provider="fal", endpoint="fal-ai/flux-pro/v1.1", unit="megapixels",
            usd_per_unit=0.04,
            # listings read in 2026 disagree ($0.04 per image to $0.055 per megapixel): put
            # the price fal's model page shows you in pricing.usd_per_unit
            price_source="third-party listings of fal's price, 2026; not fal's own page",
            concurrency=8),
    ),
    StageCard(
        name="generate/synthetic",
        kind="generate",
        runtime=SyntheticGenerator,
        params=SyntheticParams,
        inputs=("seed",),
        outputs=_IMAGE,
        resources=Resources(num_cpus=0.5, batch_size=8),
        cost_weight=0.0,
        description="Seeded gradient, no model: measures the factory's own overhead",
    ),
    StageCard(
        name="segment/u2net-tiny",
        kind="segment",
        runtime=RembgSegmenter,
        params=SegmentParams,
        source="tiny:u2net-tiny.onnx",
        revision="local",
        weight_format="onnx",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_gpus=0, num_cpus=1, batch_size=16),
        cost_weight=0.01,
        description="Tiny random-weight ONNX with u2net's contract, for tests and demo",
        family="u2net",
    ),
    StageCard(
        name="segment/u2net",
        kind="segment",
        runtime=RembgSegmenter,
        params=SegmentParams,
        source="rembg:u2net",
        revision="md5:60024c5c889badc19c04ad937298a77b",
        weight_format="onnx",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_gpus=0.25, num_cpus=0.25, batch_size=16),
        cost_weight=0.05,
        description="U^2-Net 320px (Apache-2.0): fast general cutouts, batched",
        family="u2net",
    ),
    StageCard(
        name="segment/isnet-general-use",
        kind="segment",
        runtime=RembgSegmenter,
        params=SegmentParams,
        source="rembg:isnet-general-use",
        revision="md5:fc16ebd8b0c10d971d3513d564d01e29",
        weight_format="onnx",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_gpus=0.5, num_cpus=0.25, batch_size=8),
        cost_weight=0.15,
        description="ISNet/DIS 1024px (Apache-2.0): sharper edges than u2net, batched",
        family="isnet",
    ),
    StageCard(
        name="segment/birefnet-general",
        kind="segment",
        runtime=RembgSegmenter,
        params=SegmentParams,
        source="rembg:birefnet-general",
        revision="md5:7a35a0141cbbc80de11d9c9a28f52697",
        weight_format="onnx",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_gpus=1, num_cpus=0.25, batch_size=8),
        cost_weight=0.5,
        description="BiRefNet general 1024px (MIT): best edges, one image per call",
        family="birefnet",
    ),
    StageCard(
        name="segment/bria-rmbg",
        kind="segment",
        runtime=RembgSegmenter,
        params=SegmentParams,
        source="rembg:bria-rmbg",
        revision="sha256:5b486f08200f513f460da46dd701db5fbb47d79b4be4b708a19444bcd4e79958",
        weight_format="onnx",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_gpus=1, num_cpus=0.25, batch_size=8),
        cost_weight=0.5,
        description="BRIA RMBG-2.0 1024px, one image per call; CC BY-NC 4.0: non-commercial unless licensed",
        family="bria",
    ),
    StageCard(
        name="upscale/swin2sr-tiny-x2",
        kind="upscale",
        runtime=Swin2SRUpscaler,
        params=UpscaleParams,
        source="tiny:swin2sr-tiny-x2",
        revision="local",
        weight_format="safetensors",
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=_LOCAL,
        cost_weight=0.05,
        description="Tiny random-weight Swin2SR x2 (real architecture) for tests and demo",
        family="swin2sr",
        cuda_dtype="bfloat16",
    ),
    StageCard(
        name="upscale/swin2sr-tiny-x4",
        kind="upscale",
        runtime=Swin2SRUpscaler,
        params=UpscaleParams,
        source="tiny:swin2sr-tiny-x4",
        revision="local",
        weight_format="safetensors",
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=_LOCAL,
        cost_weight=0.05,
        description="Tiny random-weight Swin2SR x4 (real architecture) for tests and demo",
        family="swin2sr",
        cuda_dtype="bfloat16",
    ),
    StageCard(
        name="upscale/swin2sr-x2",
        kind="upscale",
        runtime=Swin2SRUpscaler,
        params=UpscaleParams,
        source="caidas/swin2SR-classical-sr-x2-64",
        revision="main",
        weight_format="safetensors",
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0.5, num_cpus=0.25, batch_size=4),
        cost_weight=0.5,
        description="Swin2SR classical x2: clean 2x of generated or studio images",
        family="swin2sr",
        cuda_dtype="bfloat16",
    ),
    StageCard(
        name="upscale/swin2sr-x4",
        kind="upscale",
        runtime=Swin2SRUpscaler,
        params=UpscaleParams,
        source="caidas/swin2SR-realworld-sr-x4-64-bsrgan-psnr",
        revision="main",
        weight_format="safetensors",
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0.5, num_cpus=0.25, batch_size=4),
        cost_weight=1.0,
        description="Swin2SR real-world x4 (BSRGAN degradations): 4x of noisy or compressed images",
        family="swin2sr",
        cuda_dtype="bfloat16",
    ),
    StageCard(
        name="upscale/lanczos",
        cpu_only=True,
        kind="upscale",
        runtime=LanczosUpscaler,
        params=LanczosParams,
        weight_format="none",
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_cpus=0.5, batch_size=8),
        cost_weight=0.01,
        description="PIL Lanczos resize of all channels, no model",
    ),
    StageCard(
        name="upscale/replicate-real-esrgan",
        kind="upscale",
        cpu_only=True,  # the provider's GPUs: the actor only waits on the network
        runtime=HostedUpscale,
        params=HostedUpscaleParams,
        revision="42fed1c4974146d4d4414e2be2c5277c7fcf05fde3b22e94cee859b8a4a39d44",
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0, num_cpus=0.25, batch_size=8, concurrency=1),
        cost_weight=2.0,
        description="Real-ESRGAN on Replicate (replicate client; REPLICATE_API_TOKEN): x2 or "
                    "x4, billed per second of the provider's GPU",
        hosted=HostedApi(
            provider="replicate",
            endpoint="nightmareai/real-esrgan:"
                     "42fed1c4974146d4d4414e2be2c5277c7fcf05fde3b22e94cee859b8a4a39d44",
            unit="seconds", usd_per_unit=0.000225,
            # public models bill the seconds they run at their hardware's rate
            price_source="Replicate's billing page, hardware table, Nvidia T4 $0.000225/s, read "
                         "2026; the model page says which hardware it runs on",
            # Replicate's documented limit on creating predictions: 600 per minute
            concurrency=8, requests_per_s=10.0),
    ),
    StageCard(
        name="recolor/lab",
        cpu_only=True,
        kind="recolor",
        runtime=LabRecolor,
        params=RecolorParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=(("delta_e_before", "float64"), ("delta_e_after", "float64")),
        resources=Resources(num_cpus=1, batch_size=8),
        cost_weight=0.01,
        example_params={"palette": ["#C8553D", "#F28F3B", "#2D3047"], "strength": 0.8},
        description="Lab colour transfer to the brand palette; records mean CIEDE2000 before/after",
    ),
    StageCard(
        name="lora/sd-tiny-brand",
        kind="lora",
        runtime=LoraImg2Img,
        params=LoraParams,
        source="tiny:sd-tiny",
        revision="local",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=_IMAGE,
        resources=_LOCAL,
        cost_weight=0.1,
        description="Tiny random SD img2img with the tiny brand LoRA (lora: tiny:sd-tiny-lora)",
        example_params={"lora": "tiny:sd-tiny-lora"},
        family="sd",
        cuda_dtype="float16",
    ),
    StageCard(
        name="lora/sd-turbo-brand",
        kind="lora",
        runtime=LoraImg2Img,
        params=LoraParams,
        source="stabilityai/sd-turbo",
        revision="main",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=0.25, batch_size=4),
        cost_weight=1.0,
        description="SD-Turbo img2img with a brand LoRA trained for SD 2.1 (params.lora)",
        family="sd",
        cuda_dtype="float16",
        defaults={"steps": 2, "guidance": 0.0},
    ),
    StageCard(
        name="lora/sdxl-turbo-brand",
        kind="lora",
        runtime=LoraImg2Img,
        params=LoraParams,
        source="stabilityai/sdxl-turbo",
        revision="main",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=0.25, batch_size=4),
        cost_weight=3.0,
        description="SDXL-Turbo img2img with a brand LoRA trained for SDXL (params.lora)",
        family="sdxl",
        cuda_dtype="float16",
        defaults={"steps": 2, "guidance": 0.0},
    ),
    StageCard(
        name="scene/sd-inpaint-tiny",
        kind="scene",
        runtime=DiffusersScene,
        params=SceneParams,
        source="tiny:sd-inpaint-tiny",
        revision="local",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=SCENE_OUTPUTS,
        metrics=SCENE_METRICS,
        resources=Resources(num_gpus=0, num_cpus=1, batch_size=8, concurrency=1),
        cost_weight=0.1,
        description="Tiny random SD inpainting (real architecture): scenes around the product, "
                    "for tests and demo",
        family="sd-inpaint",
        cuda_dtype="float16",
        defaults={"width": 64, "height": 64, "steps": 2, "guidance": 1.0},
    ),
    StageCard(
        name="scene/sd2-inpaint",
        kind="scene",
        runtime=DiffusersScene,
        params=SceneParams,
        source="stabilityai/stable-diffusion-2-inpainting",
        revision="main",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=SCENE_OUTPUTS,
        metrics=SCENE_METRICS,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=8, concurrency=1),
        cost_weight=8.0,
        description="SD 2 inpainting 512px, 25 steps, guidance 7.5: cheap scenes around the "
                    "product (CreativeML Open RAIL++-M)",
        family="sd-inpaint",
        cuda_dtype="float16",
        defaults={"width": 512, "height": 512, "steps": 25, "guidance": 7.5},
    ),
    StageCard(
        name="scene/sdxl-inpaint",
        kind="scene",
        runtime=DiffusersScene,
        params=SceneParams,
        source="diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        revision="main",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=SCENE_OUTPUTS,
        metrics=SCENE_METRICS,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4, concurrency=1),
        cost_weight=30.0,
        # its model card: 15-30 steps, guidance 8, strength below 1.0
        description="SDXL 1.0 inpainting 1024px, 20 steps, guidance 8, strength 0.99 "
                    "(CreativeML Open RAIL++-M)",
        family="sdxl-inpaint",
        cuda_dtype="float16",
        defaults={"width": 1024, "height": 1024, "steps": 20, "guidance": 8.0,
                  "strength": 0.99},
    ),
    StageCard(
        name="scene/flux-fill",
        kind="scene",
        runtime=DiffusersScene,
        params=FluxSceneParams,
        source="black-forest-labs/FLUX.1-Fill-dev",
        revision="main",
        weight_format="safetensors",
        inputs=_IMG2IMG,
        outputs=SCENE_OUTPUTS,
        metrics=SCENE_METRICS,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4, concurrency=1),
        cost_weight=100.0,
        # its model card and diffusers' FluxFillPipeline example: 50 steps, guidance 30
        description="FLUX.1 Fill [dev] 1024px, 50 steps, guidance 30, bf16: hero scenes; "
                    "FLUX.1 [dev] Non-Commercial License: non-commercial unless licensed",
        family="flux-fill",
        cuda_dtype="bfloat16",
        defaults={"width": 1024, "height": 1024, "steps": 50, "guidance": 30.0},
    ),
    StageCard(
        name="scene/fal-flux-kontext",
        kind="scene",
        cpu_only=True,  # the provider's GPUs: the actor only waits on the network
        runtime=HostedScene,
        params=HostedSceneParams,
        revision="pro",
        inputs=_IMG2IMG,
        outputs=SCENE_OUTPUTS,
        metrics=SCENE_METRICS,
        resources=Resources(num_gpus=0, num_cpus=0.25, batch_size=8, concurrency=1),
        cost_weight=40.0,
        description="FLUX.1 Kontext [pro] on fal's queue API (fal-client; FAL_KEY): a premium "
                    "scene around the product, its pixels put back exactly; billed per image",
        defaults={"width": 1024, "height": 1024},
        hosted=HostedApi(
            provider="fal", endpoint="fal-ai/flux-pro/kontext", unit="images",
            usd_per_unit=0.04,
            price_source="third-party listing of fal's price ($0.04 per image), 2026; not "
                         "fal's own page",
            concurrency=8),
    ),
    StageCard(
        name="segment/fal-bria-rmbg",
        kind="segment",
        cpu_only=True,  # the provider's GPUs: the actor only waits on the network
        runtime=HostedSegment,
        params=HostedParams,
        revision="2.0",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_gpus=0, num_cpus=0.25, batch_size=8, concurrency=1),
        cost_weight=2.0,
        description="Bria RMBG 2.0 background removal on fal's queue API (fal-client; "
                    "FAL_KEY): an RGBA cut-out, billed per image",
        hosted=HostedApi(
            provider="fal", endpoint="fal-ai/bria/background/remove", unit="images",
            usd_per_unit=0.018,
            price_source="third-party listing of fal's price ($0.018 per image), 2026; not "
                         "fal's own page",
            concurrency=8),
    ),
    StageCard(
        name="segment/studio-key",
        cpu_only=True,
        kind="segment",
        runtime=StudioKeySegmenter,
        params=StudioKeyParams,
        weight_format="none",
        inputs=_IMAGE,
        outputs=_IMAGE,
        metrics=_ALPHA,
        resources=Resources(num_cpus=0.5, batch_size=8),
        cost_weight=0.005,
        description="Classical key of a white or uniform studio sweep (no weights): real "
                    "cut-outs offline, a cheap tier",
    ),
    StageCard(
        name="identity/passthrough",
        cpu_only=True,
        kind="identity",
        runtime=Passthrough,
        params=PassthroughParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_cpus=0.5, batch_size=8),
        cost_weight=0.0,
        description="No-op; 'fail_skus' injects per-row failures for drills",
    ),
    # Simulated stages (stages.simulated): no model, a sleep of the device time per batch and
    # arrays of the real shapes, for measuring the factory's pools on logical GPUs. Their cost
    # models are H100 device seconds: fixed per batch + per image.
    StageCard(
        name="generate/sim-flux-schnell",
        kind="generate",
        runtime=SimulatedStage,
        params=SimGenerateParams,
        inputs=_TEXT,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=1, batch_size=4),
        cost_weight=0.0,
        # published: 1.54 s per image, 1024², 4 steps, eager bf16 on an H100 PCIe; the
        # transformer is compute-bound, so a batch saves only the text encoders' share
        description="Simulated FLUX.1-schnell 1024px, 4 steps on an H100: 0.09 s per batch "
                    "+ 1.45 s per image, slept",
        defaults={"width": 1024, "height": 1024, "fixed_s": 0.09, "per_image_s": 1.45},
    ),
    StageCard(
        name="segment/sim-u2net",
        kind="segment",
        runtime=SimulatedStage,
        params=SimParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0.25, num_cpus=0.25, batch_size=16),
        cost_weight=0.0,
        # U^2-Net at 320²: ~37 GFLOPs per image, a few ms on an H100 (estimated, not measured)
        description="Simulated U^2-Net cut-out on an H100: 0.01 s per batch + 0.005 s per "
                    "image, slept; adds the alpha channel",
        defaults={"fixed_s": 0.01, "per_image_s": 0.005},
    ),
    StageCard(
        name="lora/sim-sdxl-turbo-brand",
        kind="lora",
        runtime=SimulatedStage,
        params=SimLoraParams,
        inputs=_IMG2IMG,
        outputs=_IMAGE,
        resources=Resources(num_gpus=1, num_cpus=0.25, batch_size=4),
        cost_weight=0.0,
        # 2 SDXL UNet steps at 1024² (~0.065 s each, eager fp16) + VAE encode and decode:
        # estimated, not measured
        description="Simulated SDXL-Turbo img2img with a brand LoRA, 1024px, 2 steps on an "
                    "H100: 0.04 s per batch + 0.28 s per image, slept",
        defaults={"fixed_s": 0.04, "per_image_s": 0.28},
    ),
    StageCard(
        name="recolor/sim-lab",
        cpu_only=True,
        kind="recolor",
        runtime=SimulatedStage,
        params=SimParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_cpus=1, batch_size=16),
        cost_weight=0.0,
        # recolor/lab took 0.88 CPU s per 1024² image (one 2-core x86 machine, with its
        # CIEDE2000 figures): slept, as one core of a CPU node would spend it
        description="Simulated Lab recolor at 1024px: 0.9 CPU s per image of one core, slept",
        defaults={"fixed_s": 0.0, "per_image_s": 0.9},
    ),
    StageCard(
        name="upscale/sim-swin2sr-x2",
        kind="upscale",
        runtime=SimulatedStage,
        params=SimUpscaleParams,
        inputs=_IMAGE,
        outputs=_IMAGE,
        resources=Resources(num_gpus=0.5, num_cpus=0.25, batch_size=4),
        cost_weight=0.0,
        # Swin2SR classical x2, 1024² -> 2048² in 256² tiles with 32 px overlap: ~40 TFLOP
        # per image, at a fifth of an H100's bf16 peak (estimated, not measured)
        description="Simulated Swin2SR x2 on an H100: 0.02 s per batch + 0.25 s per image, "
                    "slept; emits the image twice as large",
        defaults={"fixed_s": 0.02, "per_image_s": 0.25, "scale": 2},
    ),
)


def _index(cards: tuple[StageCard, ...]) -> dict[str, StageCard]:
    index: dict[str, StageCard] = {}
    for card in cards:
        if card.name in index:
            raise ValueError(f"duplicate model card '{card.name}' in the registry")
        if card.name.split("/", 1)[0] != card.kind:
            raise ValueError(f"card '{card.name}' must be named '{card.kind}/<model>'")
        index[card.name] = card
    return index


REGISTRY: dict[str, StageCard] = _index(CARDS)


class UnknownModelError(KeyError):
    """A model name that no card has."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_card(name: str, kind: str | None = None) -> StageCard:
    """Find a card by ``kind/model`` (or ``model`` when the kind is given)."""
    full = name if "/" in name or kind is None else f"{kind}/{name}"
    if full in REGISTRY:
        return REGISTRY[full]
    valid = sorted(n for n in REGISTRY if kind is None or n.startswith(f"{kind}/"))
    raise UnknownModelError(f"unknown model '{name}'; valid: {', '.join(valid)}")
