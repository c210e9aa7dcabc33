"""Purity: how precisely a feature's activations pick out one concept (docs/bench.md, "Why
purity is measured over the whole activation range"): a live feature's precision for its
concept (the one most of its ``top`` activations have on the selection half) on the test half,
over its whole activation range as the mean of ``bins`` equal-count bins; the top precision
beside it, which random directions in clustered data match; and concept purity, per concept
the purest feature. Ties count fractionally everywhere (the expected precision under a random
tie break), so a constant feature scores its concept's base rate: density is not rewarded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from diffdict.bench.detection import Ranked

PURITY_BINS = 10


def rank_weights(ranked: Ranked, top: int | None = None, bins: int | None = None) -> Tensor:
    """Weight of each entry (E,) float64 by its rank within its feature: with ``top``, 1 in
    the feature's ``top`` strongest; with ``bins``, 1 / the size of its activation bin (the
    feature's entries cut into ``bins`` equal-count bins, so each bin weighs the same);
    with neither, 1. Entries tied in value share the mean weight of the ranks they hold."""
    rank = ranked.rank
    if top is not None:
        weight = (rank <= top).double()
    elif bins is not None:
        count = ranked.count[ranked.feature]
        cell = ranked.feature * bins + (rank - 1) * bins // count.clamp_min(1)
        size = torch.bincount(cell, minlength=ranked.count.numel() * bins).double()
        weight = 1.0 / size[cell]
    else:
        return torch.ones(rank.numel(), dtype=torch.float64)
    if weight.numel() == 0:
        return weight
    cut = ranked.cut.long()
    run = torch.cumsum(cut, 0) - cut  # runs of equal values within a feature
    runs = int(run[-1]) + 1
    mean = torch.zeros(runs, dtype=torch.float64).index_add_(0, run, weight) / torch.bincount(run, minlength=runs)
    return mean[run]


def concept_precision(ranked: Ranked, labels: Tensor, n_features: int, top: int | None = None,
                      bins: int | None = None) -> tuple[Tensor, Tensor]:
    """(precision (n_features, C), weight (n_features,)): the weighted share of each
    feature's activations (``rank_weights``) that have each concept, and the total weight."""
    return weighted_shares(ranked, labels, n_features, [rank_weights(ranked, top, bins)])[0]


def weighted_shares(ranked: Ranked, labels: Tensor, n_features: int,
                    weightings: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``concept_precision`` for several weightings of the same entries, as one sparse
    product each: W (n_features x items, an entry's weight at its feature and item; the
    entries are sorted by feature, so they are W's CSR rows) times the labels (items x C)."""
    rows = torch.zeros(n_features + 1, dtype=torch.long)
    rows[1:] = torch.cumsum(ranked.count, 0)
    dense_labels = labels.double()
    out = []
    for weights in weightings:
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(rows, ranked.item, weights.double(), size=(n_features, labels.shape[0]))
            sums = matrix @ dense_labels
        total = torch.zeros(n_features, dtype=torch.float64).index_add_(0, ranked.feature, weights.double())
        out.append((sums / total.clamp_min(1e-12).unsqueeze(1), total))
    return out


@dataclass
class Purity:
    """Every feature's precision for every concept: over its activation range on both
    halves, and of its top activations on the test half."""

    selection: Tensor  # (n_features, C) purity on the selection half
    selection_top: Tensor  # (n_features, C) top precision on the selection half
    test: Tensor  # (n_features, C) purity on the test half
    test_top: Tensor  # (n_features, C) top precision on the test half
    live: Tensor  # (n_features,) fires on at least ``min_count`` items of each half


def precisions(selection: Ranked, test: Ranked, selection_labels: Tensor, test_labels: Tensor, n_features: int,
               top: int, min_count: int, bins: int = PURITY_BINS) -> Purity:
    (sel_range, _), (sel_top, _) = weighted_shares(selection, selection_labels, n_features,
                                                   [rank_weights(selection, bins=bins), rank_weights(selection, top)])
    (test_range, _), (test_top, _) = weighted_shares(test, test_labels, n_features,
                                                     [rank_weights(test, bins=bins), rank_weights(test, top)])
    return Purity(sel_range, sel_top, test_range, test_top, (selection.count >= min_count) & (test.count >= min_count))


def purity(p: Purity) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per feature: (purity on the test half for its concept, the concept most of its top
    activations have on the selection half; the top precision for that concept on the test
    half; the concept's index; the live mask); NaN for features that are not live."""
    concept = p.selection_top.argmax(1)
    rows = torch.arange(p.test.shape[0])
    nan = torch.full((rows.numel(),), float("nan"), dtype=p.test.dtype)
    return (torch.where(p.live, p.test[rows, concept], nan), torch.where(p.live, p.test_top[rows, concept], nan),
            concept, p.live)


def concept_purity(p: Purity) -> tuple[Tensor, Tensor]:
    """Per concept: (test-half purity of the live feature purest for it on the selection
    half, that feature; NaN and -1 when no feature is live). Ties on the selection half go
    to the lowest index."""
    if not bool(p.live.any()):
        c = p.selection.shape[1]
        return torch.full((c,), float("nan"), dtype=torch.float64), torch.full((c,), -1, dtype=torch.long)
    masked = torch.where(p.live.unsqueeze(1), p.selection, torch.full_like(p.selection, -1.0))
    feature = masked.argmax(0)
    return p.test[feature, torch.arange(p.test.shape[1])], feature


__all__ = ["PURITY_BINS", "Purity", "concept_precision", "concept_purity", "precisions", "purity", "rank_weights",
           "weighted_shares"]
