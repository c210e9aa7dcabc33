"""Image grids and PNG files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from diffdict.io import atomic_write_bytes


def image_grid(images: np.ndarray, columns: int | None = None, scale: int = 1, gap: int = 1) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images into one (rows*H, columns*W, 3) image, upscaled
    ``scale`` times with nearest-neighbour sampling so that small images stay crisp."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got {images.shape}")
    n, h, w, _ = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = image
    return grid


#: about how many pixels a shown image gets: small images are upscaled to it, large ones are not
DISPLAY_PIXELS = 128


def display_scale(size: int, target: int = DISPLAY_PIXELS) -> int:
    """The nearest-neighbour upscale factor that brings an image of ``size`` pixels to
    about ``target`` (at least 1: a 32 px toy image gets 4, a 512 px one 1)."""
    return max(1, int(target) // max(1, int(size)))


def save_png(path: str | Path, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def load_png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))
