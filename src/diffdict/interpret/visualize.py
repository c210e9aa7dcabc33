"""Visualisations of a feature, all as PNG files: top images with the activation map
overlaid as a heatmap, the activation histogram, the empty-prompt ``icon`` and a small
gallery of ``add`` interventions.

The icon and the gallery run the host model through :mod:`diffdict.interventions`
(``feature_icon`` and ``Add``), generated with the store's steps and guidance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffdict.capture import capture_mode_of
from diffdict.errors import DiffdictError
from diffdict.imaging import image_grid

# an "inferno"-like colour map: anchors at 0, .25, .5, .75, 1
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 (..., 3)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (v - lo)[..., None]
    return np.rint(_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def upsample_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (rows, cols) map to (H, W)."""
    t = torch.as_tensor(np.asarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay_heatmap(image: np.ndarray, amap: np.ndarray, vmax: float | None = None, alpha: float = 0.65,
                    scale: int = 4) -> np.ndarray:
    """The image (upscaled ``scale`` times) with the activation map blended over it: the
    heat colour's weight grows with the activation, so inactive parts show the image."""
    image = np.asarray(image, dtype=np.uint8)
    if scale > 1:
        image = image.repeat(scale, 0).repeat(scale, 1)
    h, w = image.shape[:2]
    vmax = float(vmax) if vmax is not None and vmax > 0 else float(np.max(amap)) if np.max(amap) > 0 else 1.0
    m = np.clip(upsample_map(amap, (h, w)) / vmax, 0, 1)
    weight = (alpha * m)[..., None]
    out = image.astype(np.float32) * (1 - weight) + colormap(m).astype(np.float32) * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def example_pair(image: np.ndarray, amap: np.ndarray, vmax: float | None, scale: int = 4) -> np.ndarray:
    """Original | heatmap overlay, side by side (what a VLM explainer is shown)."""
    big = np.asarray(image, dtype=np.uint8).repeat(scale, 0).repeat(scale, 1)
    return image_grid(np.stack([big, overlay_heatmap(image, amap, vmax, scale=scale)]), columns=2, gap=2)


def top_images_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], columns: int = 4, scale: int = 4,
                    vmax: float | None = None) -> np.ndarray:
    """A grid of heatmap overlays, normalised to one vmax (the feature's largest value)."""
    if not len(images):
        raise DiffdictError("no images to draw")
    vmax = vmax if vmax is not None else max(float(np.max(m)) for m in maps)
    tiles = np.stack([overlay_heatmap(im, m, vmax, scale=scale) for im, m in zip(images, maps)])
    return image_grid(tiles, columns=min(columns, len(tiles)), gap=2)


def histogram_image(counts: np.ndarray, edges: np.ndarray, title: str = "", width: int = 360,
                    height: int = 150) -> np.ndarray:
    """A bar chart of a histogram on log-spaced bins (equal-width bars), drawn with PIL:
    the activation range under the axis, the largest count on the left."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 44, width - 8, 18, height - 22
    draw.line([(left, bottom), (right, bottom)], fill=(60, 60, 60))
    draw.line([(left, top), (left, bottom)], fill=(60, 60, 60))
    if title:
        draw.text((left, 2), title, fill=(30, 30, 30), font=font)
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) and counts.max() > 0:
        peak = counts.max()
        bar = (right - left) / len(counts)
        for i, c in enumerate(counts):
            h = (bottom - top) * c / peak
            x0 = left + i * bar
            draw.rectangle([x0 + 0.5, bottom - h, x0 + max(bar - 0.5, 1), bottom], fill=(192, 57, 43))
        draw.text((2, top - 4), f"{int(peak)}", fill=(30, 30, 30), font=font)
        draw.text((left, bottom + 4), f"{edges[0]:.3g}", fill=(30, 30, 30), font=font)
        label = f"{edges[-1]:.3g}"
        draw.text((right - 6 * len(label), bottom + 4), label, fill=(30, 30, 30), font=font)
        draw.text(((left + right) // 2 - 50, bottom + 4), "activation (log)", fill=(100, 100, 100), font=font)
    else:
        draw.text((left + 10, (top + bottom) // 2), "never fired", fill=(100, 100, 100), font=font)
    return np.asarray(img)


def _as_stored(store_settings: dict | None) -> dict:
    """The store's generation steps and guidance, and its capture mode (None when it does not say)."""
    gen = (store_settings or {}).get("generation") or {}
    return {"num_steps": gen.get("num_steps"), "guidance": gen.get("guidance"),
            "capture": capture_mode_of((store_settings or {}).get("capture"))}


def icon_image(host, dictionary, site: str, feature: int, typical: float, seed: int = 0,
               store_settings: dict | None = None) -> np.ndarray:
    """The feature's icon (:func:`diffdict.interventions.feature_icon`): the empty prompt
    with the site's value replaced by ``typical * d_feature``."""
    from diffdict.interventions import feature_icon

    return feature_icon(host, site, dictionary, int(feature), activation=float(typical), seed=seed,
                        **_as_stored(store_settings))[0]


def gallery(host, dictionary, site: str, feature: int, typical: float, prompts: list[str],
            strengths: Sequence[float] = (0.0, 2.0, 5.0), seed: int = 0, store_settings: dict | None = None) -> np.ndarray:
    """(len(prompts) * len(strengths), H, W, 3): each prompt (a row) at each strength (0 = the
    original) with ``strength * typical * d_feature`` added at ``site``, generated as the store was."""
    from diffdict.interventions import Add, generate

    stored = _as_stored(store_settings)
    capture = stored.pop("capture")
    rows = [generate(host, prompts, [Add(site, dictionary, int(feature), float(s), activation=float(typical),
                                         capture=capture)], seed=seed, **stored)
            for s in strengths]
    return np.stack(rows, 1).reshape(-1, *rows[0].shape[1:])
