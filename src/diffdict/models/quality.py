"""How good the shipped models are (``diffdict world eval-model``).

The toy model generates one-object prompts; shapes-clip reads each generated image back
and the reading is compared with the prompt. Held-out colour x shape pairs (never seen
by the toy model) are scored separately with the ``heldout_`` prefix. shapes-clip itself
is scored on rendered images of the held-out split (``clip_rendered_accuracy``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from diffdict.imaging import image_grid, save_png
from diffdict.io import write_json
from diffdict.models.shapes_clip import ShapesClip
from diffdict.models.toy import ToyDiffusion
from diffdict.world import FAMILIES, caption, render_batch, single_object_scene

# metric name -> concept family read by shapes-clip
GENERATION_METRICS = {"color_accuracy": "color", "shape_accuracy": "shape", "position_accuracy": "region",
                      "background_accuracy": "bg_color", "texture_accuracy": "texture", "size_accuracy": "size"}


def _truth(scene) -> dict[str, str]:
    return {**scene.objects[0].attributes(), "bg_color": scene.background, "texture": scene.texture}


def accuracy_by_family(labels: list[dict[str, str]], truths: list[dict[str, str]]) -> dict[str, float]:
    return {f: float(np.mean([l[f] == t[f] for l, t in zip(labels, truths)])) for f in FAMILIES}


def evaluate_toy_model(toy: ToyDiffusion, clip: ShapesClip, prompts: int = 500, seed: int = 0, steps: int = 10,
                       guidance: float = 3.0, batch_size: int = 64, out: str | Path | None = None,
                       progress: bool = True) -> dict:
    """Accuracy of the toy model's generations as read by shapes-clip."""
    from tqdm import tqdm

    metrics: dict = {"prompts": prompts, "seed": seed, "steps": steps, "guidance": guidance}
    generated_total, seconds_total = 0, 0.0
    samples = {}
    for split, prefix in (("test", ""), ("heldout", "heldout_")):
        scenes = [single_object_scene(seed, i, split) for i in range(prompts)]
        texts = [caption(s) for s in scenes]
        images = []
        for start in tqdm(range(0, prompts, batch_size), desc=f"generate {split}", disable=not progress):
            t0 = time.perf_counter()
            images.append(toy.generate(texts[start:start + batch_size], seed=seed * 100_000 + start,
                                       steps=steps, guidance=guidance))
            seconds_total += time.perf_counter() - t0
        images = np.concatenate(images)
        generated_total += len(images)
        truths = [_truth(s) for s in scenes]
        by_family = accuracy_by_family(clip.read_labels(images), truths)
        for name, family in GENERATION_METRICS.items():
            metrics[prefix + name] = by_family[family]
        metrics[prefix + "clip_score"] = float(torch.diagonal(clip.similarity(images, texts)).mean())
        samples[split] = images[:32]
        if split == "heldout":
            rendered = accuracy_by_family(clip.read_labels(render_batch(scenes)), truths)
            metrics["clip_rendered_accuracy"] = float(np.mean(list(rendered.values())))
            metrics["clip_rendered_accuracy_by_family"] = rendered
    metrics["images_per_s"] = generated_total / seconds_total
    if out is not None:
        out = Path(out)
        write_json(out / "metrics.json", metrics)
        for split, images in samples.items():
            save_png(out / f"samples_{split}.png", image_grid(images, columns=8, scale=4))
    return metrics
