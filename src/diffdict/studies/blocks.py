"""Block ablation: which sites carry composition, detail and style (the SDXL Turbo
paper's block analysis).

Each site's update is removed (``Ablate``, at every denoising step) and the judge reads
the concept families of the ablated and the original images. A family *flips* when its
most likely value changes. Composition = mean flip rate of shape, size, region and number
of objects; style = colour, background colour and texture; detail = the share of the
pixel change in fine spatial detail (energy above a 4-pixel blur). A judge without
attribute heads (CLIP) reads the families zero-shot from their words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffdict.options import option
from diffdict.studies.base import Metric, Study, StudyConfig, StudyContext
from diffdict.studies.cache import text_digest
from diffdict.studies.stages import (block_sites, generate_images, generation_settings, judge_fingerprint, nan_mean,
                                     original_images, study_prompts)
from diffdict.studies.scoring import clip_scores

COMPOSITION = ("shape", "size", "region", "n_objects")
STYLE = ("color", "bg_color", "texture")
FAMILY_METRICS = tuple(Metric(f"flip_{family}", f"{family} flips", 0, 1, None, f"share of images whose {family} changes")
                       for family in COMPOSITION + STYLE)


@dataclass
class BlocksConfig(StudyConfig):
    prompts: int = option(12, "prompts per site and seed", quick=3, minimum=1)
    scale: float = option(0.0, "the update is multiplied by this (0 removes it)")


def concept_readings(judge, images: np.ndarray) -> dict[str, torch.Tensor]:
    """Per concept family, (N, values) readings: the judge's heads when it has them, else
    zero-shot softmax over the family's words."""
    if hasattr(judge, "read_concepts"):
        return {k: v.float().cpu() for k, v in judge.read_concepts(images).items()}
    from diffdict.interpret.groundtruth import concept_phrase
    from diffdict.world import FAMILIES

    image_emb = judge.image_embeddings(images).float()
    out = {}
    for family, values in FAMILIES.items():
        texts = [concept_phrase(f"{family}:{v}") for v in values]
        out[family] = torch.softmax(100 * image_emb @ judge.text_embeddings(texts).float().T, -1)
    return out


def detail_share(original: np.ndarray, edited: np.ndarray) -> float:
    """Share of the change's energy in fine detail: ‖Δ − blur(Δ)‖² / ‖Δ‖²."""
    delta = torch.from_numpy(edited.astype(np.float32) - original.astype(np.float32)).permute(0, 3, 1, 2)
    blur = F.avg_pool2d(delta, 5, stride=1, padding=2, count_include_pad=False)
    total = float(delta.pow(2).sum())
    return float((delta - blur).pow(2).sum()) / total if total > 0 else math.nan


class Blocks(Study):
    name = "blocks"
    title = "Block ablation: composition, detail, style"
    question = "Which blocks compose the image, which add detail, which set its style?"
    Config = BlocksConfig
    metrics = (
        Metric("composition", "composition", 0, 1, None, "mean flip rate of shape, size, region, number of objects"),
        Metric("style", "style", 0, 1, None, "mean flip rate of colour, background colour, texture"),
        Metric("detail", "detail", 0, 1, None, "share of the pixel change in fine detail"),
        Metric("lpips", "LPIPS-style", 0, math.inf, None, "perceptual distance ablated vs original"),
        Metric("clip_drop", "CLIP drop", -2, 2, None, "CLIP score with the prompt lost by the ablation"),
    ) + FAMILY_METRICS

    def sites(self, ctx: StudyContext) -> list[str]:
        return ctx.sites if ctx.config.sites else block_sites(ctx.host)

    def rows(self, ctx: StudyContext) -> list[str]:
        return self.sites(ctx)

    def run(self, ctx: StudyContext) -> None:
        config = ctx.config
        prompts = study_prompts(config, "edit", config.prompts)
        for seed in ctx.order(config.seed_list()):
            offset = seed - config.seed  # a seed is a new draw of the noise for the same prompts
            for site in ctx.order(self.sites(ctx)):
                settings = {"site": site, "scale": config.scale, "prompts": text_digest(prompts), "seed": seed,
                            "judge": judge_fingerprint(ctx.judge), "host": ctx.host.describe(), **generation_settings(ctx)}
                values = ctx.cache.json("ablation", settings,
                                        lambda site=site: self.measure(ctx, site, prompts, offset))
                ctx.record(site, seed, **values)

    def measure(self, ctx: StudyContext, site: str, prompts: list[str], offset: int) -> dict[str, float]:
        from diffdict.interventions import Ablate
        from diffdict.metrics.image import perceptual_distance

        ctx.log(f"ablating {site} on {len(prompts)} prompts")
        original = original_images(ctx, prompts, seed_offset=offset)
        ablated = generate_images(ctx, prompts, [Ablate(site, scale=ctx.config.scale)], seed_offset=offset)
        before, after = concept_readings(ctx.judge, original), concept_readings(ctx.judge, ablated)
        flips = {f"flip_{family}": float((before[family].argmax(-1) != after[family].argmax(-1)).float().mean())
                 for family in COMPOSITION + STYLE if family in before}
        return {
            **flips,
            "composition": float(np.mean([flips[f"flip_{f}"] for f in COMPOSITION if f"flip_{f}" in flips])),
            "style": float(np.mean([flips[f"flip_{f}"] for f in STYLE if f"flip_{f}" in flips])),
            "detail": detail_share(original, ablated),
            "lpips": float(perceptual_distance(original, ablated, ctx.judge).mean()),
            "clip_drop": nan_mean(clip_scores(ctx.judge, original, prompts) - clip_scores(ctx.judge, ablated, prompts)),
        }

    def plot(self, ctx: StudyContext, table, out: Path) -> list[Path]:
        from diffdict.studies.plots import heatmap, metric_bars

        names = [m.name for m in FAMILY_METRICS]
        matrix = np.array([[table.cell(row, name).mean for name in names] for row in table.rows])
        return [
            metric_bars(table, self.metrics[:5], out / "metrics.png", title=self.title),
            heatmap(matrix, table.rows, [n.removeprefix("flip_") for n in names], out / "flips.png",
                    "Concept flips when a block's update is removed", "flip rate"),
        ]
