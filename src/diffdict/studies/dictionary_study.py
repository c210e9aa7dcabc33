"""What the dictionary studies share: data and training options, and one runner.

A dictionary study names the members it trains (``members(config)``); the runner
collects the training and evaluation stores once, trains every member of every seed
(the trainer's grid, cached per member), evaluates them (reconstruction and
interpretability on held-out prompts), lets the study pick the rows of its table
(``select``, e.g. the member closest to a target L0), and measures the generation metrics
(causal strength of steering, spliced fidelity) for the picked ones only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from diffdict.options import option
from diffdict.studies.base import Metric, Study, StudyConfig, StudyContext
from diffdict.studies.stages import Member, activation_store, train_members
from diffdict.studies.scoring import evaluation, reconstruction, spliced_fidelity, steering


#: concepts steered by default: the colours (the family the study block, up.1.1, writes;
#: ``diffdict bench`` steers every colour, shape, background colour and texture)
STEER_CONCEPTS = ("color:red", "color:green", "color:blue", "color:yellow", "color:purple", "color:cyan")


def _bench_concepts() -> list[str]:
    from diffdict.bench.data import BENCH_CONCEPTS

    return BENCH_CONCEPTS


@dataclass
class DictionaryStudyConfig(StudyConfig):
    train_prompts: int = option(512, "prompts collected for training", quick=48, minimum=1)
    eval_prompts: int = option(96, "held-out prompts for evaluation and interpretation", quick=12, minimum=2)
    capture_steps: str = option("all", "denoising steps captured: all, or e.g. 0,5")
    k: int = option(10, "L0 target: k of TopK, and the L0 the other mechanisms are matched to", minimum=1)
    expansion: float = option(4.0, "dictionary width / d", quick=2.0, minimum=0.01)
    lr: float = option(1e-3, "learning rate", minimum=1e-9)
    normalization: str = option("standardise", "input normalisation", choices=("none", "standardise", "scalar"))
    train_batch: int = option(1024, "training batch (tokens)", quick=256, minimum=1)
    tokens: int = option(300_000, "training tokens per dictionary", quick=12_288, minimum=1)
    dead_window: int = option(50_000, "tokens without firing after which a feature counts as dead (AuxK)",
                              quick=2048, minimum=1)
    itda_tokens: int | None = option(None, "tokens ITDA builds on (default: all training tokens)", minimum=1)
    clip_features: int = option(12, "best-detected concepts whose feature's top images CLIP scores", quick=4, minimum=1)
    steer_concepts: tuple[str, ...] = option(STEER_CONCEPTS, "concepts steered (family:value, comma-separated)",
                                             quick=("color:red", "color:blue"), choices=_bench_concepts)
    steer_prompts: int = option(6, "one-object prompts per steered concept (lacking it)", quick=2, minimum=2)
    fidelity_prompts: int = option(8, "prompts for spliced fidelity", quick=3, minimum=2)
    strength: float = option(2.0, "steering strength s: adds s times the norm of the colour's supervised direction "
                                  "along the feature's unit direction")


RECONSTRUCTION = (
    Metric("mse", "MSE", 0, math.inf, "lower", "mean squared error per element"),
    Metric("fvu", "FVU", 0, math.inf, "lower", "fraction of variance unexplained"),
    Metric("explained_variance", "explained var.", -math.inf, 1, "higher"),
    Metric("l0", "L0", 0, math.inf, None, "mean non-zero codes per token (reached)"),
    Metric("dead_fraction", "dead", 0, 1, "lower", "share of features that never fire on the eval tokens"),
)
INTERPRETABILITY = (
    Metric("detect_f1", "detection F1", 0, 1, "higher",
           "token-level F1 of each concept's best feature (chosen on one half of the prompts, scored on the other), "
           "mean over the 27 concepts"),
    Metric("detect_f1_image", "detection F1 (image)", 0, 1, "higher", "the same at image level (per-image maximum)"),
    Metric("purity", "purity", 0, 1, "higher",
           "precision of a live feature's token activations for its concept (the one its top 64 have), over its "
           "whole activation range: mean over 10 equal-count activation bins"),
    Metric("concept_purity", "concept purity", 0, 1, "higher",
           "per concept, the purity of its purest feature (chosen on one half, scored on the other), "
           "mean over the 27 concepts"),
    Metric("coverage", "coverage", 0, 1, "higher", "share of concepts with a feature at F1 >= 0.8 and AUROC >= 0.9"),
    Metric("clip_score", "CLIP score", -1, 1, "higher", "CLIP similarity of a chosen feature's top images and its concept"),
)
GENERATION = (
    Metric("steer_success", "steering success", 0, 1, "higher",
           "share of prompts where adding the concept's feature makes the judge read the concept"),
    Metric("causal_strength", "causal strength", -1, 1, "higher",
           "steering success minus that of a random direction of equal norm, per prompt"),
    Metric("fidelity_lpips", "splice LPIPS", 0, math.inf, "lower", "perceptual distance, spliced vs original"),
    Metric("fidelity_clip_drop", "splice CLIP drop", -2, 2, "lower", "CLIP score lost by splicing"),
)


@dataclass
class Trained:
    """A dictionary ready for evaluation: how to load it, where it is evaluated
    (``eval_site`` of ``eval_store``) and which site of the host it edits (MLP neurons read
    and edit their block's ``NAME.mlp`` site)."""

    member: Member
    key: dict
    load: Callable[[], Any]
    eval_store: Any
    eval_site: str
    edit_site: str
    folder: Path | None = None


class DictionaryStudy(Study):
    Config = DictionaryStudyConfig
    metrics = RECONSTRUCTION + INTERPRETABILITY + GENERATION

    def members(self, config: DictionaryStudyConfig) -> list[Member]:
        raise NotImplementedError

    def labels(self, config: DictionaryStudyConfig) -> list[str]:
        return list(dict.fromkeys(m.label for m in self.members(config)))

    def select(self, ctx: StudyContext, site: str, seed: int, results: dict[Member, dict]) -> list[tuple[str, Member]]:
        """(row, member) pairs of one seed's table, chosen on each member's reconstruction
        metrics (``results``; e.g. the one closest to an L0); default every member under
        its label. Only the chosen members are scored further."""
        return [(member.label, member) for member in results]

    def site_members(self, ctx: StudyContext, site: str) -> list[Member]:
        """The members trained at ``site`` (default: every member)."""
        return self.members(ctx.config)

    def build(self, ctx: StudyContext, site: str, seed: int, train_store, eval_store) -> list[Trained]:
        """The dictionaries of one seed (default: the members, trained or from the cache)."""
        folders = train_members(ctx, train_store, site, self.site_members(ctx, site), seed)
        return [trained_folder(member, folder, eval_store, site) for member, folder in folders.items()]

    def run(self, ctx: StudyContext) -> None:
        config = ctx.config
        for site in ctx.sites:
            stores = {purpose: activation_store(ctx, purpose, count, [site])
                      for purpose, count in ctx.order([("train", config.train_prompts), ("eval", config.eval_prompts)])}
            seeds = config.seed_list()
            for seed in seeds[:1] + ctx.order(seeds[1:]):  # the first seed first: a study may calibrate on it
                trained = {t.member: t for t in self.build(ctx, site, seed, stores["train"], stores["eval"])}
                recon = {m: reconstruction(ctx, t.key, t.load, t.eval_store, t.eval_site) for m, t in trained.items()}
                chosen = self.select(ctx, site, seed, recon)
                results = {}
                for _, member in ctx.order(chosen):
                    t = trained[member]
                    results[member] = evaluation(ctx, t.key, t.load, t.eval_store, t.eval_site, seed)
                for row, member in ctx.order(chosen):
                    t, result = trained[member], results[member]
                    steered = steering(ctx, t.key, t.load, t.edit_site, result, seed)
                    values = {m.name: result[m.name] for m in RECONSTRUCTION + INTERPRETABILITY}
                    values.update(steer_success=steered["steer_success"], causal_strength=steered["causal_strength"],
                                  **spliced_fidelity(ctx, t.key, t.load, t.edit_site),
                                  **self.extra_metrics(ctx, t, result))
                    name = self.row_name(ctx, row, site)
                    ctx.record(name, seed, items={**result.get("items", {}), **steered["items"]}, **values)
                    if t.folder is not None:
                        ctx.extras.setdefault("dictionaries", {}).setdefault(name, []).append(
                            {"folder": str(t.folder), "store": str(t.eval_store.path), "site": t.eval_site})
                self.after_seed(ctx, site, seed, trained, results)

    def extra_metrics(self, ctx: StudyContext, t: Trained, result: dict) -> dict[str, float]:
        return {}

    def after_seed(self, ctx: StudyContext, site: str, seed: int, trained: dict, results: dict) -> None:
        pass


def trained_folder(member: Member, folder: Path, eval_store, site: str) -> Trained:
    """A cached dictionary folder: its cache entry name is its key (content-addressed)."""
    from diffdict.dictionaries import load_dictionary

    return Trained(member, {"entry": folder.name}, lambda: load_dictionary(folder), eval_store, site, site,
                   folder=folder)


__all__ = ["DictionaryStudy", "DictionaryStudyConfig", "GENERATION", "INTERPRETABILITY", "RECONSTRUCTION", "Trained",
           "trained_folder"]
