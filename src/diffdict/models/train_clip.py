"""Training of shapes-clip (``diffdict world train-clip``).

Trained on rendered scenes of every colour x shape pair (it is the judge, so it should
know them all; scenes come from a seed stream disjoint from the evaluation's), with
light augmentation (noise, blur, brightness) so that it reads generated images, which
are never as clean as renders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffdict.models.shapes_clip import HEADS, ShapesClip, ShapesClipConfig
from diffdict.models.trainloop import LoopConfig, run_training
from diffdict.world import FAMILIES, render_batch, sample_scene
from diffdict.world.concepts import OBJECT_FAMILIES
from diffdict.world.phrases import phrase_constraints, text_matches_scene, training_text

CLIP_SEED_OFFSET = 7919  # scenes for shapes-clip never coincide with evaluation scenes


def head_targets(scenes) -> dict[str, torch.Tensor]:
    targets = {}
    for family, values in FAMILIES.items():
        if family in OBJECT_FAMILIES:
            t = torch.zeros(len(scenes), len(values))
            for i, s in enumerate(scenes):
                for o in s.objects:
                    t[i, values.index(o.attributes()[family])] = 1.0
        else:
            attr = "background" if family == "bg_color" else "texture"
            t = torch.tensor([values.index(getattr(s, attr)) for s in scenes])
        targets[family] = t
    targets["n_objects"] = torch.tensor([len(s.objects) - 1 for s in scenes])
    return targets


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = pixels.shape[0]
    strength = torch.rand(n, 1, 1, 1, generator=generator)
    pixels = pixels + 0.12 * strength * torch.randn(pixels.shape, generator=generator)
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([0.25, 0.5, 0.25])
        kernel2d = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(pixels[blur], (1, 1, 1, 1), mode="replicate"), kernel2d, groups=3)
        pixels = pixels.clone()
        pixels[blur] = blurred
    gain = 1 + 0.08 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    return (pixels * gain).clamp(-1, 1)


def clip_loss(model: ShapesClip, scenes, texts: list[str], generator: torch.Generator) -> torch.Tensor:
    pixels = torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1
    pixels = augment(pixels, generator)
    constraints = [phrase_constraints(t) for t in texts]
    labels = torch.tensor([[float(text_matches_scene(c, s)) for c in constraints] for s in scenes])
    features = model.image_features(pixels)
    image_emb = F.normalize(model.image_projection(features), dim=-1)
    text_emb = model.text_embeddings(texts)
    logits = model.pair_logits(image_emb.float(), text_emb.float())
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    targets = head_targets(scenes)
    for family, head in model.attribute_heads.items():
        head_loss = F.binary_cross_entropy_with_logits if family in OBJECT_FAMILIES else F.cross_entropy
        loss = loss + head_loss(head(features).float(), targets[family]) / len(HEADS)
    return loss


def train_shapes_clip(out: str | Path, steps: int = 2500, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                      export_to: str | Path | None = None, threads: int | None = None) -> ShapesClip:
    torch.manual_seed(seed)
    model = ShapesClip(ShapesClipConfig())
    loop = LoopConfig(steps=steps, lr=lr, seed=seed, threads=threads, ema_decay=0.995, bf16=False)

    def loss_fn(m: ShapesClip, step: int, generator: torch.Generator) -> torch.Tensor:
        rng = np.random.default_rng([seed, 202, step])
        scenes = [sample_scene(seed + CLIP_SEED_OFFSET, step * batch_size + i, "all") for i in range(batch_size)]
        texts = [training_text(s, rng) for s in scenes]
        return clip_loss(m, scenes, texts, generator)

    return run_training(model, loss_fn, loop, out, batch_size, export_to)
