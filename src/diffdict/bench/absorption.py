"""Splitting and absorption (SAEBench's sense, with ground truth instead of a probe): how
many features detect a concept (selection-half F1 >= ``DETECTOR_F1``), and on test tokens
with the concept, the share where its main feature stays below threshold while a feature
*specific* to it (``SPECIFIC_PRECISION`` of its firings have it) fires, e.g. a "red circle"
feature taking over from "red".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffdict.bench.detection import Ranked, dense_column
from diffdict.bench.purity import concept_precision

DETECTOR_F1 = 0.5
SPECIFIC_PRECISION = 0.8
MIN_FIRES = 10


def splitting(all_selection_f1: Tensor) -> np.ndarray:
    """(C,) the number of features that detect each concept."""
    return (all_selection_f1 >= DETECTOR_F1).sum(0).numpy()


def absorption(selection: Ranked, selection_labels: Tensor, test_item: Tensor, test_feature: Tensor,
               test_value: Tensor, test_labels: Tensor, main: np.ndarray, threshold: np.ndarray,
               n_features: int) -> np.ndarray:
    """(C,) absorption rate per concept (NaN for a concept no test token has)."""
    precision, _ = concept_precision(selection, selection_labels, n_features, None)
    specific = (precision >= SPECIFIC_PRECISION) & (selection.count >= MIN_FIRES).unsqueeze(1)  # (F, C)
    n_test, C = test_labels.shape
    out = np.full(C, np.nan)
    for c in range(C):
        has = test_labels[:, c]
        if not bool(has.any()):
            continue
        m = int(main[c])
        missed = has & (dense_column(test_item, test_feature, test_value, m, n_test) < float(threshold[c]))
        others = specific[:, c].clone()
        others[m] = False
        fired = torch.zeros(n_test, dtype=torch.bool)
        fired[test_item[others[test_feature]]] = True
        out[c] = float((missed & fired).sum()) / float(has.sum())
    return out


__all__ = ["DETECTOR_F1", "SPECIFIC_PRECISION", "absorption", "splitting"]
