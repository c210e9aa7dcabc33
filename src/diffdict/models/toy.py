"""The toy text-to-image model of the shapes world.

A pixel-space diffusion model built from diffusers' ``UNet2DConditionModel`` with the
same block layout as SDXL at a tenth of the width (channels 32-64-128, two layers per
block, cross-attention ``Transformer2DModel`` blocks at 16x16 and 8x8), conditioned on a
small text encoder over the world's vocabulary. Classifier-free guidance, v-prediction
with a cosine schedule, sampled with DPM-Solver++.

Sites (transformer blocks), named as for SDXL: ``down.1.0``, ``down.1.1`` (16x16, d=64),
``down.2.0``, ``down.2.1`` (8x8, d=128), ``mid.0`` (8x8, d=128), ``up.0.0..2`` (8x8,
d=128), ``up.1.0..2`` (16x16, d=64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

from diffdict.errors import DiffdictError, noise_seeds
from diffdict.models.text_encoder import ModelConfig, ShippedModel, TextEncoder, TextEncoderConfig
from diffdict.world import DEFAULT_SIZE

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


@dataclass
class ToyConfig(ModelConfig):
    image_size: int = DEFAULT_SIZE
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 8
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)


def build_unet(config: ToyConfig) -> UNet2DConditionModel:
    n = len(config.block_out_channels)
    return UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.text.width,
        attention_head_dim=config.attention_heads,  # diffusers' legacy name: this is the number of heads
        norm_num_groups=config.norm_num_groups,
        use_linear_projection=True,
        transformer_layers_per_block=1,
    )


class ToyDiffusion(ShippedModel):
    """UNet + text encoder + schedulers; ``generate`` gives uint8 images for prompts."""

    weights_folder = "toy"
    config_class = ToyConfig
    label = "toy model"
    the_label = "the toy model"
    train_command = "train-model"

    def __init__(self, config: ToyConfig | None = None):
        super().__init__()
        self.config = config or ToyConfig()
        self.unet = build_unet(self.config)
        self.text_encoder = TextEncoder(self.config.text)
        self.train_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
        # set while generating so hooks can gate on the denoising step
        self.current_step: int | None = None

    # -- sampling ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_image_size(self, size: int) -> None:
        levels = len(self.config.block_out_channels) - 1
        if size != self.config.image_size:
            raise DiffdictError(
                f"image size {size} not supported by this toy model; it was trained at {self.config.image_size}x{self.config.image_size} "
                f"(sizes must also be multiples of {2 ** levels})"
            )

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, seeds: list[int] | None = None, steps: int = 10,
                 guidance: float = 3.0, image_size: int | None = None,
                 on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """Images (N, H, W, 3) uint8. Image i starts from noise seeded by ``seeds[i]``
        (default ``seed + i``), so an image does not depend on its batch. With
        ``guidance`` > 1 the UNet runs on [unconditional; conditional] halves."""
        self.check_image_size(image_size or self.config.image_size)
        seeds = noise_seeds(prompts, seed, seeds)
        cond = self.text_encoder.encode_prompts(prompts)
        use_cfg = guidance != 1.0
        context = torch.cat([self.text_encoder.encode_prompts([""] * len(prompts)), cond]) if use_cfg else cond
        if steps < 1 or steps > 1000:
            raise DiffdictError(f"number of denoising steps {steps} must be between 1 and 1000")
        scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG, algorithm_type="dpmsolver++")
        scheduler.set_timesteps(steps)
        size = self.config.image_size
        noise = [torch.randn(3, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
        sample = torch.stack(noise).to(self.device) * scheduler.init_noise_sigma
        try:
            for step, t in enumerate(scheduler.timesteps):
                self.current_step = step
                if on_step is not None:
                    on_step(step)
                model_in = torch.cat([sample, sample]) if use_cfg else sample
                out = self.unet(model_in, t, encoder_hidden_states=context).sample
                if use_cfg:
                    out_uncond, out_cond = out.chunk(2)
                    out = out_uncond + guidance * (out_cond - out_uncond)
                sample = scheduler.step(out, t, sample).prev_sample
        finally:
            self.current_step = None
        images = ((sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    # -- training ---------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor, token_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """v-prediction MSE for a batch of images in [-1, 1] (B, 3, H, W)."""
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        timesteps = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (images.shape[0],), generator=generator)
        timesteps = timesteps.to(images.device)
        noisy = self.train_scheduler.add_noise(images, noise, timesteps)
        target = self.train_scheduler.get_velocity(images, noise, timesteps)
        context = self.text_encoder(token_ids)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states=context).sample
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

