"""Image metrics: pixel and perceptual distances, CLIP score, Fréchet distance.

:func:`perceptual_distance` is LPIPS-style (``backbones.lpips_style``: Zhang et al. 2018 with
uniform layer weights; the ``lpips`` backbone gives the learned LPIPS instead);
:func:`frechet_distance` is ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), the matrix square root by
symmetric eigendecompositions (numpy, no scipy), and :func:`fid` reads its features with a
backbone (``inception`` for the usual FID). Distances are float64 numpy arrays with one value
per image pair; pixel distances are in [0, 1] units.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffdict.errors import DiffdictError
from diffdict.metrics.backbones import Backbone, as_uint8, load_backbone, lpips_style


def _pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    a, b = as_uint8(a), as_uint8(b)
    if a.shape != b.shape:
        raise DiffdictError(f"image sets differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def pixel_mae(a: Any, b: Any) -> np.ndarray:
    """Mean absolute pixel difference per image, in [0, 1]."""
    a, b = _pair(a, b)
    return ((a.double() - b.double()).abs() / 255.0).flatten(1).mean(1).numpy()


def pixel_mse(a: Any, b: Any) -> np.ndarray:
    """Mean squared pixel difference per image, pixels in [0, 1]."""
    a, b = _pair(a, b)
    return (((a.double() - b.double()) / 255.0) ** 2).flatten(1).mean(1).numpy()


def _batched(fn, a: Tensor, b: Tensor | None, batch_size: int) -> Tensor:
    parts = [fn(a[i:i + batch_size]) if b is None else fn(a[i:i + batch_size], b[i:i + batch_size])
             for i in range(0, a.shape[0], batch_size)]
    return torch.cat([p.reshape(p.shape[0], -1) if p.ndim > 1 else p for p in parts])


@torch.no_grad()
def perceptual_distance(a: Any, b: Any, backbone: "str | Backbone | None" = None, batch_size: int = 64) -> np.ndarray:
    """LPIPS-style distance per image pair (0 for identical images)."""
    a, b = _pair(a, b)
    model = load_backbone(backbone)
    out = _batched(lambda x, y: model.perceptual_distance(x, y).reshape(-1), a, b, batch_size).double().numpy()
    out[(a == b).flatten(1).all(1).numpy()] = 0.0  # exact zero for identical images
    return out


@torch.no_grad()
def clip_score(images: Any, texts: str | Sequence[str], backbone: "str | Backbone | None" = None,
               batch_size: int = 64) -> np.ndarray:
    """Cosine similarity of each image with its text (one text for all, or one per image)."""
    images = as_uint8(images)
    texts = [texts] * images.shape[0] if isinstance(texts, str) else list(texts)
    if len(texts) != images.shape[0]:
        raise DiffdictError(f"got {len(texts)} texts for {images.shape[0]} images")
    model = load_backbone(backbone)
    image_emb = _batched(model.image_embeddings, images, None, batch_size).float()
    unique = sorted(set(texts))
    text_emb = model.text_embeddings(unique).float().cpu()
    index = torch.tensor([unique.index(t) for t in texts])
    return F.cosine_similarity(image_emb.cpu(), text_emb[index], dim=-1).double().numpy()


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (N, f)."""
    fa, fb = (np.asarray(f.detach().cpu() if isinstance(f, Tensor) else f, dtype=np.float64)
              for f in (features_a, features_b))
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise DiffdictError(f"Fréchet distance needs two (N, f) feature sets of one width, got {fa.shape} and {fb.shape}")
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        raise DiffdictError(f"Fréchet distance needs at least 2 samples per set, got {fa.shape[0]} and {fb.shape[0]}")
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    values, vectors = np.linalg.eigh((cov_a + cov_a.T) / 2)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T  # Σa^½
    # Tr((Σa Σb)^½) = Tr((Σa^½ Σb Σa^½)^½), a symmetric PSD matrix
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)
    return max(value, 0.0)


@torch.no_grad()
def fid(images_a: Any, images_b: Any, backbone: "str | Backbone | None" = None, batch_size: int = 64) -> float:
    """Fréchet distance between two image sets in a backbone's feature space
    (shapes-clip offline; ``inception`` for the standard FID)."""
    model = load_backbone(backbone)
    fa = _batched(model.fid_features, as_uint8(images_a), None, batch_size)
    fb = _batched(model.fid_features, as_uint8(images_b), None, batch_size)
    return frechet_distance(fa, fb)


__all__ = ["clip_score", "fid", "frechet_distance", "lpips_style", "perceptual_distance", "pixel_mae", "pixel_mse"]
