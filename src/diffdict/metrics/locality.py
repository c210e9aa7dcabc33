"""Manhattan locality: how far from the intervention mask an edit changed the image.

Each pixel's change is the mean absolute difference over its channels (in [0, 1]). A
pixel belongs to the token of the site's grid that covers it (row = ⌊y · rows / H⌋,
col = ⌊x · cols / W⌋); a token's distance to the mask is the Manhattan (L1) distance, in
tokens, to the nearest token the mask touches (0 inside). Per image:

- ``distance``: Σ_p change_p · dist(token(p)) / Σ_p change_p — the change-weighted mean
  distance (0: every change inside the mask);
- ``inside_share``: the share of the total change that lies inside the mask;
- ``total_change``: Σ_p change_p (pixel units).

An image with no change gets distance 0 and an undefined (NaN) inside share.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffdict.errors import DiffdictError
from diffdict.metrics.image import _pair


def change_map(original: Any, edited: Any) -> np.ndarray:
    """(N, H, W) per-pixel change: mean |Δ| over channels, in [0, 1]."""
    a, b = _pair(original, edited)
    return ((a.double() - b.double()).abs().mean(-1) / 255.0).numpy()


def mask_distances(mask: np.ndarray) -> np.ndarray:
    """(rows, cols) Manhattan distance of each token to the nearest token with mask > 0."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DiffdictError(f"locality needs a (rows, cols) token mask, got shape {mask.shape}")
    inside = np.argwhere(mask > 0)
    if inside.size == 0:
        raise DiffdictError("the mask covers no token")
    grid = np.indices(mask.shape).reshape(2, -1).T  # (T, 2)
    dist = np.abs(grid[:, None, :] - inside[None, :, :]).sum(-1).min(1)
    return dist.reshape(mask.shape).astype(np.float64)


def manhattan_locality(original: Any, edited: Any, mask: Any, threshold: float = 0.0) -> dict[str, np.ndarray]:
    """Per image ``distance``, ``inside_share`` and ``total_change`` (see the module doc).

    ``mask``: token weights (rows, cols) (or a flat (rows*cols,) tensor with ``grid``
    folded in by the caller). Pixel changes at or below ``threshold`` are ignored."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask, dtype=np.float64)
    change = change_map(original, edited)
    if threshold > 0:
        change = np.where(change > threshold, change, 0.0)
    n, h, w = change.shape
    dist = mask_distances(mask)
    row_of, col_of = (np.arange(h) * mask.shape[0]) // h, (np.arange(w) * mask.shape[1]) // w  # each pixel's token
    pixel_dist = dist[row_of][:, col_of]  # (H, W)
    pixel_inside = (mask > 0)[row_of][:, col_of]
    total = change.reshape(n, -1).sum(1)
    weighted = (change * pixel_dist).reshape(n, -1).sum(1)
    inside = (change * pixel_inside).reshape(n, -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), 0.0)
        share = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return {"distance": distance, "inside_share": share, "total_change": total}


__all__ = ["change_map", "manhattan_locality", "mask_distances"]
