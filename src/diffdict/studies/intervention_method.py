"""Intervention method: edit the dense site (``add``) or the sparse code (``latent``),
with the reconstruction error kept or dropped, on the same features, prompts, mask and
strength.

- ``add``: x + s·a_i·d_i at every masked token (the SDXL Turbo paper);
- ``latent-keep``: encode, set c_i = s·a_i, decode, keep the error x − x̂ (only the change
  of c_i reaches the site);
- ``latent-drop``: the same without the error: masked tokens become the edited
  reconstruction.

The random direction of causal strength has the same per-token norm as the method's own change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.options import option
from diffdict.studies.base import Metric, Study, StudyContext
from diffdict.studies.dictionary_study import DictionaryStudyConfig, trained_folder
from diffdict.studies.stages import (Member, activation_store, generate_images, generation_settings, judge_fingerprint,
                                     nan_mean, original_images, site_capture, study_prompts, train_members)
from diffdict.studies.scoring import clip_scores, evaluation, steering_features
from diffdict.studies.cache import text_digest

METHODS = ("add", "latent-keep", "latent-drop")


@dataclass
class InterventionMethodConfig(DictionaryStudyConfig):
    methods: tuple[str, ...] = option(METHODS, "intervention methods (comma-separated)", choices=METHODS)
    mask: tuple[float, ...] = option((0.25, 0.25, 0.75, 0.75), "edit box x0,y0,x1,y1 as fractions of the image",
                                     minimum=0.0, maximum=1.0, distinct=False)
    edit_features: int = option(3, "features edited", quick=1, minimum=1)
    edit_prompts: int = option(5, "prompts per feature", quick=3, minimum=2)

    def check(self) -> None:
        if len(self.mask) != 4 or not (self.mask[0] < self.mask[2] and self.mask[1] < self.mask[3]):
            raise DiffdictError(f"--mask: expected x0,y0,x1,y1 with x0 < x1 and y0 < y1 (fractions), got "
                                f"{','.join(map(str, self.mask))}")


class InterventionMethod(Study):
    name = "intervention-method"
    title = "Intervention method: dense add vs latent edit"
    question = "Is it better to steer the dense block output or the SAE's sparse code (keeping or dropping the error)?"
    Config = InterventionMethodConfig
    reference = "add"
    metrics = (
        Metric("lpips", "LPIPS-style", 0, math.inf, None, "perceptual distance edited vs unedited"),
        Metric("locality", "Manhattan dist.", 0, math.inf, "lower", "change-weighted token distance from the mask"),
        Metric("in_mask", "in-mask share", 0, 1, "higher", "share of the change inside the mask"),
        Metric("clip_similarity", "CLIP sim. (expl.)", -1, 1, "higher", "CLIP similarity with the explanation"),
        Metric("fid", "Fréchet dist.", 0, math.inf, "lower", "edited set vs unedited set"),
        Metric("causal_strength", "causal strength", -1, 1, "higher", "p(concept | edit) - p(concept | random)"),
    )

    def labels(self, config: InterventionMethodConfig) -> list[str]:
        return list(config.methods)

    def run(self, ctx: StudyContext) -> None:
        from diffdict.interventions import PixelBox

        config = ctx.config
        member = Member.of("topk", "topk", k=config.k, auxk=True)
        height, width = ctx.host.image_size
        x0, y0, x1, y1 = config.mask
        mask = PixelBox(x0 * width, y0 * height, x1 * width, y1 * height)
        prompts = study_prompts(config, "edit", config.edit_prompts)
        for site in ctx.sites:
            train_store = activation_store(ctx, "train", config.train_prompts, [site])
            eval_store = activation_store(ctx, "eval", config.eval_prompts, [site])
            for seed in ctx.order(config.seed_list()):
                (folder,) = train_members(ctx, train_store, site, [member], seed).values()
                t = trained_folder(member, folder, eval_store, site)
                result = evaluation(ctx, t.key, t.load, eval_store, site, seed)
                features = [f for f in steering_features(result, config.steer_concepts) or result.get("frequent", [])
                            if f["activation"] > 0][: config.edit_features]
                if not features:
                    ctx.note(f"seed {seed}: no feature fired on the evaluation prompts; nothing to edit")
                    continue
                for method in ctx.order(config.methods):
                    settings = {"dictionary": t.key, "site": site, "method": method, "features": features,
                                "prompts": text_digest(prompts), "mask": list(config.mask), "seed": seed,
                                "strength": config.strength, "judge": judge_fingerprint(ctx.judge),
                                "host": ctx.host.describe(), **generation_settings(ctx)}
                    values = ctx.cache.json("intervention", settings, lambda method=method: self.measure(
                        ctx, method, site, t.load(), features, prompts, mask, seed))
                    ctx.record(self.row_name(ctx, method, site), seed, **values)

    def measure(self, ctx: StudyContext, method: str, site: str, dictionary, features: list[dict], prompts,
                mask, seed: int) -> dict[str, float]:
        from diffdict.interventions import Add, LatentEdit, RandomDirection, resolve_mask
        from diffdict.metrics.causal import read_target
        from diffdict.metrics.image import fid, perceptual_distance
        from diffdict.metrics.locality import manhattan_locality

        ctx.log(f"{method} on {site}, seed {seed}: {len(features)} feature(s) x {len(prompts)} prompts")
        original = original_images(ctx, prompts)
        grid = ctx.host.site(site).grid
        token_mask = resolve_mask(mask, grid, ctx.host.image_size).numpy().reshape(grid)
        edited_sets, lpips, distance, inside, similarity, strength = [], [], [], [], [], []

        def edit(feature: dict):
            common = dict(feature=feature["feature"], strength=ctx.config.strength, activation=feature["activation"],
                          mask=mask, capture=site_capture(ctx, site))
            if method == "add":
                return Add(site, dictionary, **common)
            return LatentEdit(site, dictionary, op="set", keep_error=method == "latent-keep", **common)

        for feature in features:
            edited = generate_images(ctx, prompts, [edit(feature)])
            control = generate_images(ctx, prompts, [RandomDirection(edit(feature), seed)])
            edited_sets.append(edited)
            lpips.append(perceptual_distance(original, edited, ctx.judge).mean())
            locality = manhattan_locality(original, edited, token_mask)
            distance.append(locality["distance"].mean())
            inside.append(nan_mean(locality["inside_share"]))
            if feature.get("concept"):
                similarity.append(np.nanmean(clip_scores(ctx.judge, edited, feature["phrase"])))
                strength.append((read_target(edited, feature["concept"], ctx.judge)
                                 - read_target(control, feature["concept"], ctx.judge)).mean())
        edited_all = np.concatenate(edited_sets)
        original_all = np.concatenate([original] * len(edited_sets))

        def mean(values):
            values = [float(v) for v in values if np.isfinite(v)]
            return float(np.mean(values)) if values else math.nan

        return {"lpips": mean(lpips), "locality": mean(distance), "in_mask": mean(inside),
                "clip_similarity": mean(similarity), "fid": fid(edited_all, original_all, ctx.judge),
                "causal_strength": mean(strength)}
