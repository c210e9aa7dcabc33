"""Purity: how precisely a feature's strongest activations pick out one concept.

For each live feature, the concept is chosen on the selection half (the concept most
of its top activations have) and the precision of its top activations for that concept
is measured on the test half. Ties at the cut-off count fractionally (the expected
precision under a random tie break), so a constant feature scores the base rate of the
commonest concept, not the luck of item order: density is not rewarded.

Feature purity cannot tell a trained dictionary from random directions when the data
are clustered: the top activations of *any* direction lie in the cluster at its
extreme (on the shapes world, one background colour), so random directions are pure
about the few commonest concepts. **Concept purity** asks the question the other way
round: for each concept, the purest feature for it (chosen on the selection half) and
its precision on the test half. It separates a learnt feature from random directions
for a concept that is a small shift random directions do not reach (tests); when every
concept is a strong cluster, as the colours are at the toy model's ``up.1.1``, random
directions reach them too and neither purity separates trained from random weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffdict.bench.detection import Ranked


def top_weights(ranked: Ranked, top: int | None) -> Tensor:
    """Weight of each entry in its feature's top ``top`` (None: every firing entry), ties
    at the cut-off shared: (E,) float64, summing to min(count, top) per feature."""
    if top is None:
        return torch.ones(ranked.value.numel(), dtype=torch.float64)
    n = ranked.count.clamp(max=top)
    alive = n > 0
    nth = torch.zeros(ranked.count.numel(), dtype=ranked.value.dtype)
    nth[alive] = ranked.value[ranked.start[alive] + n[alive] - 1]
    cutoff = nth[ranked.feature]
    greater = torch.zeros(ranked.count.numel(), dtype=torch.float64).index_add_(
        0, ranked.feature, (ranked.value > cutoff).double())
    equal = torch.zeros(ranked.count.numel(), dtype=torch.float64).index_add_(
        0, ranked.feature, (ranked.value == cutoff).double())
    share = ((n.double() - greater) / equal.clamp_min(1.0))[ranked.feature]
    return torch.where(ranked.value > cutoff, torch.ones_like(share),
                       torch.where(ranked.value == cutoff, share, torch.zeros_like(share)))


def concept_precision(ranked: Ranked, labels: Tensor, n_features: int, top: int | None) -> tuple[Tensor, Tensor]:
    """(precision (n_features, C), weight (n_features,)): the share of each feature's top
    activations that have each concept, and how many activations that share is over."""
    weights = top_weights(ranked, top)
    keep = weights > 0
    feature, item, weights = ranked.feature[keep], ranked.item[keep], weights[keep]
    sums = torch.zeros(n_features, labels.shape[1], dtype=torch.float64)
    for c in range(labels.shape[1]):  # one concept at a time: entries x concepts can be gigabytes
        sums[:, c] = torch.bincount(feature, weights=labels[item, c].double() * weights, minlength=n_features)
    total = torch.bincount(feature, weights=weights, minlength=n_features)
    return sums / total.clamp_min(1e-12).unsqueeze(1), total


@dataclass
class Purity:
    """Top-activation precision of every feature for every concept, on both halves."""

    selection: Tensor  # (n_features, C) precision on the selection half
    test: Tensor  # (n_features, C) precision on the test half
    live: Tensor  # (n_features,) fires on at least ``min_count`` items of each half


def precisions(selection: Ranked, test: Ranked, selection_labels: Tensor, test_labels: Tensor, n_features: int,
               top: int, min_count: int) -> Purity:
    return Purity(concept_precision(selection, selection_labels, n_features, top)[0],
                  concept_precision(test, test_labels, n_features, top)[0],
                  (selection.count >= min_count) & (test.count >= min_count))


def purity(p: Purity) -> tuple[Tensor, Tensor, Tensor]:
    """Per feature: (precision on the test half for the concept chosen on the selection
    half, that concept's index, live mask); NaN for features that are not live."""
    concept = p.selection.argmax(1)
    value = p.test[torch.arange(p.test.shape[0]), concept]
    return torch.where(p.live, value, torch.full_like(value, float("nan"))), concept, p.live


def concept_purity(p: Purity) -> tuple[Tensor, Tensor]:
    """Per concept: (test-half precision of the live feature purest for it on the selection
    half, that feature; NaN and -1 when no feature is live). Ties on the selection half go
    to the lowest index."""
    if not bool(p.live.any()):
        c = p.selection.shape[1]
        return torch.full((c,), float("nan"), dtype=torch.float64), torch.full((c,), -1, dtype=torch.long)
    masked = torch.where(p.live.unsqueeze(1), p.selection, torch.full_like(p.selection, -1.0))
    feature = masked.argmax(0)
    return p.test[feature, torch.arange(p.test.shape[1])], feature


__all__ = ["Purity", "concept_precision", "concept_purity", "precisions", "purity", "top_weights"]
