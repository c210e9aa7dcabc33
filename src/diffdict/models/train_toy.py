"""Training of the shipped toy diffusion model (``diffdict world train-model``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffdict.models.toy import ToyConfig, ToyDiffusion
from diffdict.models.trainloop import LoopConfig, run_training
from diffdict.world import caption, encode_prompts, render_batch, sample_scene, with_random_omissions

UNCONDITIONAL_PROBABILITY = 0.1  # caption dropped (classifier-free guidance)
OMISSION_PROBABILITY = 0.06  # each optional attribute left out of the caption


def training_batch(seed: int, step: int, batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (B, 3, H, W) and token ids for training step ``step``."""
    rng = np.random.default_rng([seed, 101, step])
    scenes = [sample_scene(seed, step * batch_size + i, "train") for i in range(batch_size)]
    images = render_batch(scenes, image_size)
    prompts = []
    for scene in scenes:
        if rng.random() < UNCONDITIONAL_PROBABILITY:
            prompts.append("")
        else:
            prompts.append(caption(with_random_omissions(scene, rng, OMISSION_PROBABILITY)))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, torch.from_numpy(encode_prompts(prompts))


def train_toy_model(out: str | Path, steps: int = 3500, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    export_to: str | Path | None = None, threads: int | None = None, config: ToyConfig | None = None,
                    extend: bool = False) -> ToyDiffusion:
    config = config or ToyConfig()
    torch.manual_seed(seed)
    model = ToyDiffusion(config)
    loop = LoopConfig(steps=steps, lr=lr, seed=seed, threads=threads)

    def loss_fn(m: ToyDiffusion, step: int, generator: torch.Generator) -> torch.Tensor:
        pixels, ids = training_batch(seed, step, batch_size, config.image_size)
        return m.training_loss(pixels, ids, generator)

    return run_training(model, loss_fn, loop, out, batch_size, export_to, extend=extend)
