"""The ground-truth scores that need no generation: detection (token and image level),
purity (over the activation range, and of the top activations), splitting and
absorption, per concept and summarised with 95% intervals."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from diffdict.bench.absorption import DETECTOR_F1, absorption, splitting
from diffdict.bench.data import BENCH_CONCEPTS, Codes, GroundTruth
from diffdict.bench.detection import best_threshold_f1, detect, rank_entries, split_halves
from diffdict.bench.purity import concept_purity, precisions, purity
from diffdict.interpret.groundtruth import CONCEPTS, float_or_none

COVERAGE_F1 = 0.8
COVERAGE_AUROC = 0.9
PURE_PRECISION = 0.9
TOP_TOKENS = 64
TOP_IMAGES = 8
MAX_ERASED = 8  # detectors listed per concept: the features erasure removes


def interval(values: Any, seed: int = 0) -> dict[str, float]:
    """Mean and 95% t interval of the finite values (n = how many)."""
    from diffdict.metrics.causal import mean_interval

    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return dict(zip(("mean", "low", "high"), mean_interval(x, "t", seed=seed)), n=int(np.isfinite(x).sum()))


def _concept_columns(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, [CONCEPTS.index(c) for c in BENCH_CONCEPTS]]


def interpretability_scores(codes: Codes, truth: GroundTruth, seed: int = 0,
                            writers: dict[str, int] | Callable[[torch.Tensor], dict[str, int]] | None = None
                            ) -> dict[str, Any]:
    """Every score of the module docstring for one dictionary's codes; with ``writers``
    ({concept: feature}, see ``runner.concept_writers``) also those features' detection
    F1 for their concept (threshold from the selection half, F1 on the test half).
    ``writers`` may be a function of the selection half's F1 (n_features, concepts; the
    better of token and image level) that returns them."""
    n = codes.n_features
    tok_labels = _concept_columns(truth.grid[codes.prompt, :, codes.position])  # (tokens, concepts)
    tok_selection = truth.selection[codes.prompt]
    image_labels = _concept_columns(truth.image)
    image_entries = codes.image_max.nonzero(as_tuple=True)
    image_values = codes.image_max[image_entries]

    def halves(item, feature, value, in_selection):
        selection, test = split_halves(item, feature, value, in_selection)
        return rank_entries(*selection, n), rank_entries(*test, n), test

    tok_sel, tok_test, tok_test_entries = halves(codes.token, codes.feature, codes.value, tok_selection)
    img_sel, img_test, _ = halves(image_entries[0], image_entries[1], image_values, truth.selection)
    tok_best = best_threshold_f1(tok_sel, tok_labels[tok_selection], n)
    img_best = best_threshold_f1(img_sel, image_labels[truth.selection], n)
    if callable(writers):
        writers = writers(torch.maximum(tok_best[0], img_best[0]))
    forced = {BENCH_CONCEPTS.index(c): f for c, f in (writers or {}).items()}
    token = detect(codes.token, codes.feature, codes.value, tok_labels, tok_selection, n, forced, ranked=tok_sel,
                   best=tok_best)
    image = detect(image_entries[0], image_entries[1], image_values, image_labels, truth.selection, n, forced,
                   ranked=img_sel, best=img_best)
    token_precisions = precisions(tok_sel, tok_test, tok_labels[tok_selection], tok_labels[~tok_selection], n,
                                  TOP_TOKENS, TOP_TOKENS // 4)
    image_precisions = precisions(img_sel, img_test, image_labels[truth.selection], image_labels[~truth.selection], n,
                                  TOP_IMAGES, TOP_IMAGES // 2)
    token_purity, token_top, token_concept, token_live = purity(token_precisions)
    image_purity, image_top, image_concept, _ = purity(image_precisions)
    purest, purest_feature = concept_purity(token_precisions)
    absorbed = absorption(tok_sel, tok_labels[tok_selection], *tok_test_entries, tok_labels[~tok_selection],
                          token.feature, token.threshold, n)
    split = splitting(token.all_selection_f1)

    per_concept = {}
    for c, name in enumerate(BENCH_CONCEPTS):
        per_concept[name] = {
            "token_feature": int(token.feature[c]), "token_threshold": float(token.threshold[c]),
            "token_f1": float_or_none(token.test_f1[c]), "token_auroc": float_or_none(token.test_auroc[c]),
            "token_selection_f1": float_or_none(token.selection_f1[c]),
            "image_feature": int(image.feature[c]), "image_f1": float_or_none(image.test_f1[c]),
            "image_auroc": float_or_none(image.test_auroc[c]),
            "detectors": int(split[c]), "absorption": float_or_none(absorbed[c]),
            "purest_feature": int(purest_feature[c]), "concept_purity": float_or_none(purest[c]),
            "detector_features": _detectors(token.all_selection_f1[:, c], int(token.feature[c])),
        }
        if c in forced:
            per_concept[name].update(writer_feature=forced[c], writer_token_f1=float_or_none(token.extra_test_f1[c]),
                                     writer_image_f1=float_or_none(image.extra_test_f1[c]))
    # a concept is covered when a feature detects it accurately (F1) *and* discriminates
    # (AUROC): at image level a common concept gets a high F1 from a feature that is always on
    detected = ((np.nan_to_num(token.test_f1) >= COVERAGE_F1) & (np.nan_to_num(token.test_auroc) >= COVERAGE_AUROC)) | \
               ((np.nan_to_num(image.test_f1) >= COVERAGE_F1) & (np.nan_to_num(image.test_auroc) >= COVERAGE_AUROC))
    summary = {
        "token_f1": interval(token.test_f1, seed), "token_auroc": interval(token.test_auroc, seed),
        "image_f1": interval(image.test_f1, seed), "image_auroc": interval(image.test_auroc, seed),
        "coverage": float(np.mean(detected)), "covered": [c for c, d in zip(BENCH_CONCEPTS, detected) if d],
        "token_purity": interval(token_purity.numpy(), seed), "image_purity": interval(image_purity.numpy(), seed),
        "token_pure_share": _share(token_purity, PURE_PRECISION), "image_pure_share": _share(image_purity, PURE_PRECISION),
        "token_top_precision": interval(token_top.numpy(), seed), "image_top_precision": interval(image_top.numpy(), seed),
        "concept_purity": interval(purest.numpy(), seed), "pure_coverage": _share(purest, PURE_PRECISION),
        "live_features": int(token_live.sum()),
        "detectors_per_concept": interval(split.astype(float), seed), "absorption": interval(absorbed, seed),
    }
    features = {"token_purity": token_purity.tolist(), "token_top_precision": token_top.tolist(),
                "token_concept": [BENCH_CONCEPTS[i] for i in token_concept],
                "image_purity": image_purity.tolist(), "image_top_precision": image_top.tolist(),
                "image_concept": [BENCH_CONCEPTS[i] for i in image_concept]}
    return {"summary": summary, "concepts": per_concept, "features": features, "tokens": codes.num_tokens}


def _detectors(f1: torch.Tensor, main: int, most: int = MAX_ERASED) -> list[int]:
    """The main feature, then the other features that detect the concept, best first."""
    order = [int(f) for f in torch.argsort(f1, descending=True, stable=True) if f1[f] >= DETECTOR_F1 and int(f) != main]
    return [main] + order[: most - 1]


def _share(values: torch.Tensor, level: float) -> float:
    finite = values[torch.isfinite(values)]
    return float((finite >= level).double().mean()) if finite.numel() else math.nan


__all__ = ["COVERAGE_F1", "PURE_PRECISION", "interpretability_scores", "interval"]
