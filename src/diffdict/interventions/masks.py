"""Where and when an intervention edits: masks on the site's token grid or in image
pixels, pooled to the grid by area, and the denoising steps checked against the schedule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffdict.errors import DiffdictError


# -- masks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelBox:
    """A box in image pixels: x0 <= x < x1, y0 <= y < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in (self.x0, self.y0, self.x1, self.y1))


@dataclass(frozen=True)
class TokenBox:
    """A box on the site's token grid: rows r0 <= r < r1, columns c0 <= c < c1."""

    r0: int
    c0: int
    r1: int
    c1: int


def parse_box(text: str) -> PixelBox:
    """``"x0,y0,x1,y1"`` (pixels) -> :class:`PixelBox`."""
    try:
        values = [float(part) for part in str(text).split(",")]  # float() ignores surrounding spaces
    except ValueError:
        values = []
    if len(values) != 4:
        raise DiffdictError(f"bad mask {text!r}: expected four pixel coordinates x0,y0,x1,y1")
    return PixelBox(*values)


def _coverage(n_pixels: int, n_cells: int, lo: float, hi: float) -> np.ndarray:
    """(n_cells,) share of each cell of [0, n_pixels) split evenly into n_cells covered by [lo, hi)."""
    edges = np.linspace(0.0, n_pixels, n_cells + 1)
    overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    return overlap / np.diff(edges)


def _pool_matrix(n_pixels: int, n_cells: int) -> np.ndarray:
    """(n_cells, n_pixels): the share of cell r that pixel p covers (rows sum to 1)."""
    return np.stack([_coverage(n_pixels, n_cells, p, p + 1) for p in range(n_pixels)], axis=1)


def pool_to_grid(pixel_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-average an (H, W) mask onto a (rows, cols) grid."""
    h, w = pixel_mask.shape
    return _pool_matrix(h, grid[0]) @ pixel_mask.astype(np.float64) @ _pool_matrix(w, grid[1]).T


def resolve_mask(mask: Any, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor | None:
    """Token weights (rows*cols,) float32 in [0, 1] for a mask spec (None: no mask)."""
    if mask is None:
        return None
    rows, cols = grid
    height, width = image_size
    if isinstance(mask, str):
        mask = parse_box(mask)
    if isinstance(mask, (tuple, list)) and len(mask) == 4 and all(isinstance(v, (int, float, np.number)) for v in mask):
        mask = PixelBox(*(float(v) for v in mask))
    if isinstance(mask, PixelBox):
        x0, y0, x1, y1 = mask.x0, mask.y0, mask.x1, mask.y1
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DiffdictError(
                f"mask {mask} lies outside the {width}x{height} image: expected 0 <= x0 < x1 <= {width} "
                f"and 0 <= y0 < y1 <= {height} (pixels, end exclusive)"
            )
        weights = np.outer(_coverage(height, rows, y0, y1), _coverage(width, cols, x0, x1))
    elif isinstance(mask, TokenBox):
        r0, c0, r1, c1 = mask.r0, mask.c0, mask.r1, mask.c1
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            raise DiffdictError(
                f"token mask rows {r0}:{r1}, columns {c0}:{c1} lies outside the site's {rows}x{cols} token grid"
            )
        weights = np.zeros((rows, cols))
        weights[r0:r1, c0:c1] = 1.0
    else:
        array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        if array.dtype == object or array.ndim != 2:
            raise DiffdictError(f"bad mask of type {type(mask).__name__}: expected x0,y0,x1,y1 or a 2-D array")
        array = array.astype(np.float64)
        if array.shape == (rows, cols):
            weights = array
        elif array.shape == (height, width):
            weights = pool_to_grid(array, grid)
        else:
            raise DiffdictError(
                f"mask of shape {array.shape[0]}x{array.shape[1]} matches neither the site's {rows}x{cols} token grid "
                f"nor the {height}x{width} image"
            )
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DiffdictError("mask weights must lie in [0, 1]")
    if not (weights > 0).any():
        raise DiffdictError(f"the mask covers no token of the site's {rows}x{cols} grid")
    return torch.from_numpy(np.clip(weights, 0.0, 1.0).reshape(-1).astype(np.float32))


# -- steps -----------------------------------------------------------------------------------
def check_steps(steps: frozenset[int] | None, num_steps: int | None) -> None:
    if steps is None or num_steps is None:
        return
    bad = sorted(s for s in steps if not 0 <= s < num_steps)
    if bad:
        raise DiffdictError(
            f"step {bad[0]} is outside the schedule: the generation has {num_steps} denoising "
            f"step{'s' if num_steps != 1 else ''} (0..{num_steps - 1})"
        )
