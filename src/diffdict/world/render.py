"""Deterministic renderer with exact per-pixel concept masks.

Each pixel is supersampled on a ``SUPERSAMPLE`` x ``SUPERSAMPLE`` grid of sub-pixel
centres, so edges are anti-aliased and a concept mask holds the fraction of each pixel
the concept covers. ``concept_grid`` reads any mask at any token grid as the exact
fraction of each cell it covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.world.concepts import BACKGROUNDS, COLORS, SIZES, concept_names
from diffdict.world.scene import DEFAULT_SIZE, Scene, SceneObject

SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 16, 512
TEXTURE_CONTRAST = 45.0


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8
    masks: dict[str, np.ndarray]  # concept name -> (H, W) float32 coverage in [0, 1]


def _subpixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    return np.meshgrid(offsets, offsets)  # x, y in pixels, shape (S*size, S*size)


def shape_inside(obj: SceneObject, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Boolean mask of the points (x, y) (pixels) inside the object's shape."""
    cx, cy = obj.center[0] * size, obj.center[1] * size
    half = SIZES[obj.size] * size / DEFAULT_SIZE
    dx, dy = x - cx, y - cy
    if obj.shape == "circle":
        return dx * dx + dy * dy <= half * half
    if obj.shape == "square":
        side = 0.85 * half
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if obj.shape == "triangle":  # apex up, base at 0.75 * half below the centre
        top, base = -half, 0.75 * half
        return (dy >= top) & (dy <= base) & (np.abs(dx) <= half * (dy - top) / (base - top))
    if obj.shape == "cross":
        arm = 0.35 * half
        return ((np.abs(dx) <= half) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= half) & (np.abs(dx) <= arm))
    raise DiffdictError(f"unknown shape {obj.shape!r}")


def _pool(sub: np.ndarray, size: int) -> np.ndarray:
    """Average supersampled values back to pixels."""
    return sub.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


def _texture_pattern(texture: str, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    scale = size / DEFAULT_SIZE
    if texture == "plain":
        return np.zeros_like(x, dtype=bool)
    if texture == "stripes":  # diagonal stripes, period 6 px at 32x32
        return np.floor((x + y) / (3.0 * scale)) % 2 == 0
    if texture == "dots":  # dots of radius 1.1 px on a 6 px lattice
        period = 6.0 * scale
        fx = (x % period) - period / 2
        fy = (y % period) - period / 2
        return fx * fx + fy * fy <= (1.1 * scale) ** 2
    raise DiffdictError(f"unknown texture {texture!r}")


def check_size(size: int) -> None:
    if not isinstance(size, int) or size < MIN_SIZE or size > MAX_SIZE or size % 8:
        raise DiffdictError(f"image size {size!r} not supported; expected a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}")


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Rendered:
    """Render a scene to an RGB image and its concept masks."""
    check_size(size)
    x, y = _subpixel_grid(size)
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    shade = TEXTURE_CONTRAST if base.mean() < 160 else -TEXTURE_CONTRAST
    pattern = _pool(_texture_pattern(scene.texture, x, y, size).astype(np.float32), size)
    image = base[None, None, :] + shade * pattern[..., None]

    insides = [shape_inside(obj, x, y, size) for obj in scene.objects]
    masks = {name: np.zeros((size, size), np.float32) for name in concept_names()}
    covered = np.zeros(x.shape, bool)
    # later objects are drawn on top: an object's visible part excludes those after it
    for i, (obj, inside) in enumerate(zip(scene.objects, insides)):
        visible_sub = inside.copy()
        for later in insides[i + 1:]:
            visible_sub &= ~later
        visible = _pool(visible_sub.astype(np.float32), size)
        coverage = _pool(inside.astype(np.float32), size)
        color = np.array(COLORS[obj.color], dtype=np.float32)
        image = image * (1 - coverage[..., None]) + color[None, None, :] * coverage[..., None]
        for family, value in obj.attributes().items():
            masks[f"{family}:{value.replace(' ', '_')}"] += visible
        covered |= inside
    foreground = _pool(covered.astype(np.float32), size)
    masks["object"] = foreground
    masks["background"] = 1.0 - foreground
    masks[f"bg_color:{scene.background}"] = masks["background"].copy()
    masks[f"texture:{scene.texture}"] = masks["background"].copy()
    for name in masks:
        np.clip(masks[name], 0.0, 1.0, out=masks[name])
    return Rendered(np.clip(np.rint(image), 0, 255).astype(np.uint8), masks)


def render_batch(scenes: list[Scene], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Images only, as a (N, H, W, 3) uint8 array."""
    return np.stack([render(s, size).image for s in scenes]) if scenes else np.zeros((0, size, size, 3), np.uint8)


def cell_overlap(size: int, grid: int) -> np.ndarray:
    """(grid, size) matrix: fraction of cell g covered by pixel p (rows sum to 1)."""
    edges = np.arange(size + 1, dtype=np.float64)
    cell = size / grid
    lo = np.arange(grid)[:, None] * cell
    hi = lo + cell
    overlap = np.clip(np.minimum(hi, edges[None, 1:]) - np.maximum(lo, edges[None, :-1]), 0, None)
    return overlap / cell


def concept_grid(mask: np.ndarray, grid: int) -> np.ndarray:
    """Read a pixel mask (H, W) or stack (..., H, W) at a grid x grid token grid: each
    cell holds the exact fraction of its area the concept covers."""
    size = mask.shape[-1]
    if mask.shape[-2] != size:
        raise DiffdictError(f"masks must be square; got {mask.shape[-2:]}")
    if grid < 1 or grid > size:
        raise DiffdictError(f"token grid {grid} must be between 1 and the image size {size}")
    weights = cell_overlap(size, grid)
    return np.einsum("gh,...hw,kw->...gk", weights, mask.astype(np.float64), weights).astype(np.float32)
