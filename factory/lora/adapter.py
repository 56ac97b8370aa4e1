"""The model side of brand LoRA training: a frozen diffusion base with a LoRA on its UNet.

``AdapterTrainer`` holds one worker's models and optimizer and takes one step at a time; it
knows nothing of Ray, so a unit test can run a few steps on the tiny model in-process, and the
Ray Train loop (``factory.lora.train``) is a thin layer over it. The loss is the standard
denoising objective of diffusers' ``train_text_to_image_lora.py``; checkpoints hold the PEFT
state (safetensors), the optimizer state and the step; the finished adapter is saved in
diffusers' LoRA format, which ``pipe.load_lora_weights`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The adapter file, as diffusers' training scripts and ``load_lora_weights`` name it.
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
#: A checkpoint's files: PEFT adapter state, optimizer state, and the loop's own state.
PEFT_STATE = "adapter_peft.safetensors"
OPTIMIZER_STATE = "optimizer.pt"
LOOP_STATE = "state.json"


class AdapterTrainer:
    """A frozen SD-family pipeline's components with a trainable LoRA on the UNet.

    Args:
        base: a local pipeline directory or hub id (``from_pretrained`` layout).
        revision: hub revision; ``local`` or empty for local directories.
        rank: LoRA rank.
        alpha: LoRA alpha (the update is scaled by ``alpha / rank``).
        target_modules: UNet module names the adapter wraps.
        dropout: LoRA dropout.
        learning_rate: AdamW learning rate.
        seed: seeds the adapter's initial weights.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, *, base: str, revision: str, rank: int, alpha: float,
                 target_modules: Sequence[str], dropout: float, learning_rate: float,
                 seed: int, device: str = "cpu") -> None:
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer

        kwargs: dict[str, Any] = {"revision": None if revision in ("", "local") else revision,
                                  "use_safetensors": True}
        self.device = device
        self.tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer",
                                                       revision=kwargs["revision"])
        self.text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kwargs)
        self.vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kwargs)
        self.unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **kwargs)
        self.noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler",
                                                             revision=kwargs["revision"])
        for model in (self.text_encoder, self.vae, self.unet):
            model.requires_grad_(False)
            model.to(device)
        self.text_encoder.eval()
        self.vae.eval()
        torch.manual_seed(seed)  # the adapter's A matrices; B starts at zero (a no-op adapter)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                         init_lora_weights="gaussian",
                                         target_modules=list(target_modules)))
        self.parameters = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=learning_rate)
        self.model = self.unet  # what forward passes go through (Ray Train may wrap it in DDP)

    def encode_captions(self, captions: Sequence[str]) -> Any:
        import torch

        ids = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length,
                             return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def loss(self, pixels: Any, captions: Sequence[str], generator: Any) -> Any:
        """Denoising loss of a batch: ``pixels`` is ``N x 3 x H x W`` in [-1, 1].

        ``generator`` (a CPU ``torch.Generator``) draws the latents' sample, the noise and the
        timesteps, so a step is a pure function of the batch, the weights and the seed.
        """
        import torch
        import torch.nn.functional as F

        pixels = pixels.to(self.device, dtype=torch.float32)
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
            sample = torch.randn(dist.mean.shape, generator=generator).to(self.device)
            latents = (dist.mean + dist.std * sample) * self.vae.config.scaling_factor
            hidden = self.encode_captions(captions)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator)
        timesteps = timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = self.model(noisy, timesteps, hidden, return_dict=False)[0]
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    def step(self, pixels: Any, captions: Sequence[str], generator: Any) -> float:
        """One optimizer step; returns the batch's loss before the update."""
        import torch

        self.model.train()
        loss = self.loss(pixels, captions, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def save_checkpoint(self, directory: Path, state: dict[str, Any]) -> None:
        """PEFT state (safetensors), optimizer state and the loop's ``state`` into ``directory``."""
        import torch
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        peft_state = {k: v.detach().cpu().contiguous()
                      for k, v in get_peft_model_state_dict(self.unet).items()}
        save_file(peft_state, str(directory / PEFT_STATE))
        torch.save(self.optimizer.state_dict(), directory / OPTIMIZER_STATE)
        (directory / LOOP_STATE).write_text(json.dumps(state, sort_keys=True), encoding="utf-8")

    def load_checkpoint(self, directory: Path) -> dict[str, Any]:
        """Restore what ``save_checkpoint`` wrote; return the loop's state."""
        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        result = set_peft_model_state_dict(self.unet, load_file(str(directory / PEFT_STATE)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint {directory} does not fit this adapter: unexpected "
                             f"keys {result.unexpected_keys[:3]}")
        # weights_only: a checkpoint is data, never code (torch's safe unpickler)
        self.optimizer.load_state_dict(torch.load(directory / OPTIMIZER_STATE,
                                                  map_location=self.device, weights_only=True))
        return json.loads((directory / LOOP_STATE).read_text(encoding="utf-8"))

    def save_adapter(self, directory: Path) -> Path:
        """The adapter in diffusers' LoRA format (what ``load_lora_weights`` loads)."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        StableDiffusionPipeline.save_lora_weights(
            directory,
            unet_lora_layers={k: v.detach().cpu().contiguous() for k, v in state.items()},
            safe_serialization=True, weight_name=ADAPTER_FILE)
        return directory / ADAPTER_FILE


def to_pixels(images: Sequence[Any], *, resolution: int, center_crop: bool,
              flips: Sequence[bool]) -> Any:
    """``N x 3 x R x R`` float32 in [-1, 1] from ``HxWx3 uint8`` arrays: shorter side resized
    to ``resolution``, then a centre (or top-left) square crop, then optional mirror flips."""
    import numpy as np
    from PIL import Image

    out = np.empty((len(images), 3, resolution, resolution), dtype=np.float32)
    for i, (array, flip) in enumerate(zip(images, flips)):
        image = Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)),
                max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.BICUBIC)
        left = (image.width - resolution) // 2 if center_crop else 0
        top = (image.height - resolution) // 2 if center_crop else 0
        image = image.crop((left, top, left + resolution, top + resolution))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
    return out
