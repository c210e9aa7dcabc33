"""What a study measures on one trained dictionary, each cached by exactly the settings
it depends on: the ground-truth benchmark's interpretability scores (``diffdict.bench``),
the CLIP score of the detected features' top images, steering success and causal
strength of each concept's writer, and spliced fidelity."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from diffdict.studies.cache import text_digest
from diffdict.studies.stages import (cached_images, generate_images, generation_settings, judge_fingerprint, nan_mean,
                                     original_images, reconstruction_metrics, site_capture, study_prompts)


if TYPE_CHECKING:  # pragma: no cover
    from diffdict.studies.base import StudyContext


def interpretability(ctx: "StudyContext", dictionary, store, site: str, seed: int) -> dict[str, Any]:
    """The benchmark's ground-truth scores (``diffdict.bench``) on the eval store, the CLIP
    score of the chosen features' top images, and per concept the chosen feature, its F1 and
    typical activation. NaN without ground truth (real models)."""
    from diffdict.bench.data import BENCH_CONCEPTS, dictionary_codes
    from diffdict.bench.interpretability import interpretability_scores
    from diffdict.bench.runner import concept_directions, concept_writers, typical_activations
    from diffdict.interpret.groundtruth import concept_phrase

    result: dict[str, Any] = {name: math.nan for name in ("detect_f1", "detect_f1_image", "purity", "concept_purity",
                                                          "coverage", "clip_score")}
    result.update(items={}, concepts={})
    codes = dictionary_codes(dictionary, store, site, seed=seed)
    counts = torch.bincount(codes.feature, minlength=codes.n_features)
    typical = typical_activations(codes)
    if not ctx.host.shapes_world:
        # no concepts to steer towards: the most frequent features, for the edits that need no target
        result["frequent"] = [{"feature": int(f), "activation": float(typical[f]), "concept": None, "phrase": None}
                              for f in torch.argsort(counts, descending=True, stable=True)[:16] if counts[f] > 0]
        return result
    truth = study_ground_truth(ctx, store, site)
    supervised = concept_directions(store, site, truth, list(ctx.config.steer_concepts))
    writers = concept_writers(dictionary, supervised, counts > 0, store.d(site))
    scores = interpretability_scores(codes, truth, seed, writers)
    summary, concepts = scores["summary"], scores["concepts"]
    result.update(detect_f1=summary["token_f1"]["mean"], detect_f1_image=summary["image_f1"]["mean"],
                  purity=summary["token_purity"]["mean"], concept_purity=summary["concept_purity"]["mean"],
                  coverage=summary["coverage"])
    result["items"] = {key: [_nan(concepts[c][field]) for c in BENCH_CONCEPTS]
                       for key, field in (("detect_f1", "token_f1"), ("detect_f1_image", "image_f1"),
                                          ("concept_purity", "concept_purity"))}
    result["concepts"] = {c: {"feature": concepts[c]["token_feature"], "token_f1": _nan(concepts[c]["token_f1"]),
                              "activation": float(typical[concepts[c]["token_feature"]]), "phrase": concept_phrase(c)}
                          for c in BENCH_CONCEPTS}
    for c, f in writers.items():  # the feature steered: the one closest to the concept's direction
        result["concepts"][c].update(writer=f, writer_activation=float(typical[f]),
                                     writer_f1=_nan(concepts[c]["writer_token_f1"]),
                                     edit_norm=float(supervised[c].norm()))
    result["clip_score"] = clip_interpretability(ctx, dictionary, store, site, seed, result["concepts"])
    return result


_GROUND_TRUTH: dict[tuple, Any] = {}


def study_ground_truth(ctx: "StudyContext", store, site: str):
    """The ground truth of a store's site, kept in memory (every dictionary of a study reads the
    same eval store); the split is the study's seed, so every variant and seed is scored on the
    same test half."""
    from diffdict.bench.data import ground_truth

    key = (store.digest, site, ctx.config.seed)
    if key not in _GROUND_TRUTH:
        _GROUND_TRUTH.clear()
        _GROUND_TRUTH[key] = ground_truth(store, site, seed=ctx.config.seed)
    return _GROUND_TRUTH[key]


def clip_interpretability(ctx: "StudyContext", dictionary, store, site: str, seed: int,
                          concepts: dict[str, dict]) -> float:
    """Mean CLIP similarity (the judge) between a chosen feature's top images and its
    concept's phrase, over the ``clip_features`` best-detected concepts."""
    from diffdict.interpret.base import Explanation, FeatureView, InterpretContext
    from diffdict.interpret.scorers import ClipScorer
    from diffdict.interpret.stats import compute_activation_stats

    clip = getattr(ctx.judge, "model", None) if ctx.judge.name == "shapes-clip" else None
    if clip is None:
        return math.nan
    ranked = sorted((c for c in concepts if not math.isnan(concepts[c]["token_f1"])),
                    key=lambda c: (-concepts[c]["token_f1"], c))[: ctx.config.clip_features]
    if not ranked:
        return math.nan
    stats = compute_activation_stats(store, dictionary, site, top_n=8, keep_maps=True)
    context = InterpretContext(store, dictionary, site, stats, seed=seed, clip=clip, host=ctx.host)
    scorer, sims = ClipScorer(), []
    for concept in ranked:
        f = concepts[concept]["feature"]
        if int(stats.fire_count[f]) == 0:
            continue
        view = FeatureView(f, context, context.examples(f, 5), stats.feature_summary(f))
        score = scorer.score(Explanation(concepts[concept]["phrase"], "ground truth", {"concept": concept}), view)
        if score.get("similarity") is not None:
            sims.append(score["similarity"])
    return float(np.mean(sims)) if sims else math.nan


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def reconstruction(ctx: "StudyContext", dictionary_key: dict, load, eval_store, site: str) -> dict[str, float]:
    """Reconstruction metrics of one dictionary on the eval store (cached): what a study
    chooses members by, e.g. the one matching an L0."""
    settings = {"dictionary": dictionary_key, "store": eval_store.digest, "site": site}
    return ctx.cache.json("reconstruction", settings, lambda: reconstruction_metrics(load(), eval_store, site))


def evaluation(ctx: "StudyContext", dictionary_key: dict, load, eval_store, site: str, seed: int) -> dict[str, Any]:
    """Reconstruction and interpretability of one dictionary on the eval store (cached)."""
    settings = {"dictionary": dictionary_key, "store": eval_store.digest, "site": site, "seed": seed,
                "split_seed": ctx.config.seed, "clip_features": ctx.config.clip_features, "bench": BENCH_VERSION,
                "steer_concepts": list(ctx.config.steer_concepts),
                "judge": judge_fingerprint(ctx.judge) if ctx.host.shapes_world else None,
                "oracle": ctx.host.shapes_world}

    def compute() -> dict:
        return {**reconstruction(ctx, dictionary_key, load, eval_store, site),
                **interpretability(ctx, load(), eval_store, site, seed)}

    return ctx.cache.json("evaluation", settings, compute)


#: bumped when the benchmark's scores change meaning (it keys the cached evaluations)
BENCH_VERSION = 5


def steering_features(evaluation_result: dict, concepts: Sequence[str]) -> list[dict[str, Any]]:
    """The features to steer: for each concept its writer (the feature closest to the
    concept's direction), with its typical activation; best-detected writers first."""
    entries = [(c, evaluation_result["concepts"].get(c) or {}) for c in concepts]
    chosen = [{"concept": c, "phrase": e["phrase"], "feature": e["writer"], "activation": e["writer_activation"],
               "token_f1": e["writer_f1"], "edit_norm": e["edit_norm"]} for c, e in entries if "writer" in e]
    return sorted(chosen, key=lambda f: (-(f["token_f1"] if not math.isnan(f["token_f1"]) else -1.0), f["concept"]))


def steering_pool(ctx: "StudyContext", site: str):
    """The one-object prompts every dictionary is steered on, with their unedited images (cached)."""
    from diffdict.bench.steering import pool_size, steering_pool as make_pool

    count = pool_size(ctx.config.steer_prompts)
    generator = study_generator(ctx, site)
    settings = {"host": ctx.host.describe(), "pool": count, "seed": ctx.config.seed, **generation_settings(ctx)}

    def pool(**originals: Any):
        return make_pool(generator, ctx.judge, count, ctx.config.seed, ctx.host.site(site).grid, **originals)

    return pool(originals=cached_images(ctx, "steer-pool", settings, lambda: pool().originals))


def study_generator(ctx: "StudyContext", site: str):
    from diffdict.bench.steering import Generator

    gen = generation_settings(ctx)
    return Generator(ctx.host, site, ctx.host.site(site).d, site_capture(ctx, site), gen["num_steps"], gen["guidance"],
                     ctx.config.batch_size)


def steering(ctx: "StudyContext", dictionary_key: dict, load, edit_site: str, evaluation_result: dict,
             seed: int) -> dict[str, Any]:
    """Steering success of each concept's chosen feature (``add`` over the object, or the
    whole image for a scene attribute, s times the norm of the concept's supervised
    direction) and causal strength = success minus the success of a random direction of
    the same norm, per trial (cached). The prompts, their noise and the random directions
    are the study's (``--seed``), the same for every variant, so trials pair up across
    variants and the random control is generated once (``steering_controls``)."""
    if not ctx.host.shapes_world or not evaluation_result.get("concepts"):
        return {"steer_success": math.nan, "causal_strength": math.nan, "items": {}}
    features = steering_features(evaluation_result, ctx.config.steer_concepts)
    concepts = [f["concept"] for f in features]
    norms = {f["concept"]: f["edit_norm"] for f in features}
    settings = {"dictionary": dictionary_key, "site": edit_site, "features": features, **_steering_settings(ctx)}

    def compute() -> dict:
        from diffdict.bench.steering import site_directions

        rows = site_directions(load(), ctx.host.site(edit_site).d)
        scores = _steering_scores(ctx, edit_site, concepts, {"feature": {f["concept"]: rows[f["feature"]]
                                                                         for f in features}}, norms, random=False)
        return {c: scores[c]["feature_success"] for c in concepts}

    per_concept = ctx.cache.json("steering", settings, compute)
    controls = steering_controls(ctx, edit_site, norms)
    success = sum((per_concept[c] for c in concepts), [])
    random = sum((controls[c] for c in concepts), [])
    causal = [a - b for a, b in zip(success, random)]
    return {"steer_success": float(np.mean(success)) if success else math.nan,
            "causal_strength": float(np.mean(causal)) if causal else math.nan,
            "items": {"steer_success": success, "causal_strength": causal}}


def _steering_scores(ctx: "StudyContext", edit_site: str, concepts: list[str], directions: dict,
                     norms: dict[str, float], **kwargs: Any) -> dict:
    from diffdict.bench.steering import steering_scores

    return steering_scores(study_generator(ctx, edit_site), ctx.judge, steering_pool(ctx, edit_site), concepts,
                           directions, norms, [ctx.config.strength], ctx.config.steer_prompts, ctx.config.seed,
                           log=lambda line: None, **kwargs)


def _steering_settings(ctx: "StudyContext") -> dict[str, Any]:
    return {"seed": ctx.config.seed, "prompts": ctx.config.steer_prompts, "strength": ctx.config.strength,
            "bench": BENCH_VERSION, "judge": judge_fingerprint(ctx.judge), "host": ctx.host.describe(),
            **generation_settings(ctx)}


def steering_controls(ctx: "StudyContext", edit_site: str, norms: dict[str, float]) -> dict[str, list[float]]:
    """Per concept, the per-prompt success of the random direction (cached): it depends on
    the pool, the concept's edit norm and the seed, not on the dictionary. The concepts go
    in the benchmark's order, which seeds each one's random directions, so a study run on
    its own draws the same ones as inside ``study all``."""
    from diffdict.bench.data import BENCH_CONCEPTS

    settings = {"site": edit_site, "norms": norms, **_steering_settings(ctx)}
    concepts = sorted(norms, key=BENCH_CONCEPTS.index)

    def compute() -> dict:
        scores = _steering_scores(ctx, edit_site, concepts, {}, norms)
        return {c: scores[c]["random_success"] for c in concepts}

    return ctx.cache.json("steer-controls", settings, compute)


def clip_scores(judge, images, texts: Sequence[str] | str) -> np.ndarray:
    """CLIP score of each image with its text; shapes-clip reads only the shapes world's
    words, so other words are dropped (NaN where none is left)."""
    from diffdict.interpret.scorers import in_vocabulary
    from diffdict.metrics.image import clip_score

    texts = [texts] * len(images) if isinstance(texts, str) else list(texts)
    if judge.name == "shapes-clip":
        texts = [in_vocabulary(t) for t in texts]
        known = np.array([bool(t) for t in texts])
        out = np.full(len(texts), np.nan)
        if known.any():
            out[known] = clip_score(np.asarray(images)[known], [t for t in texts if t], judge)
        return out
    return clip_score(images, texts, judge)


def spliced_fidelity(ctx: "StudyContext", dictionary_key: dict, load, edit_site: str) -> dict[str, float]:
    """Images with the site replaced by the reconstruction against the originals:
    perceptual distance, and the drop in CLIP score with the prompt (cached)."""
    from diffdict.interventions import Splice
    from diffdict.metrics.image import perceptual_distance

    prompts = study_prompts(ctx.config, "edit", ctx.config.fidelity_prompts)
    settings = {"dictionary": dictionary_key, "site": edit_site, "prompts": text_digest(prompts),
                "judge": judge_fingerprint(ctx.judge), "host": ctx.host.describe(), **generation_settings(ctx)}

    def compute() -> dict:
        original = original_images(ctx, prompts)
        spliced = generate_images(ctx, prompts, [Splice(edit_site, load(), capture=site_capture(ctx, edit_site))])
        drop = clip_scores(ctx.judge, original, prompts) - clip_scores(ctx.judge, spliced, prompts)
        return {"fidelity_lpips": float(perceptual_distance(original, spliced, ctx.judge).mean()),
                "fidelity_clip_drop": nan_mean(drop)}

    return ctx.cache.json("fidelity", settings, compute)


__all__ = ["clip_interpretability", "clip_scores", "evaluation", "interpretability", "reconstruction",
           "spliced_fidelity", "steering", "steering_controls", "steering_features", "steering_pool",
           "study_generator", "study_ground_truth"]
