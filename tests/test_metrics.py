"""Metrics on known inputs; real backbones only when their extra is installed."""

import math

import numpy as np
import pytest
import torch

from diffdict.errors import DiffdictError
from diffdict.metrics import (
    backbone_available,
    clip_score,
    fid,
    frechet_distance,
    load_backbone,
    lpips_style,
    manhattan_locality,
    mask_distances,
    mean_interval,
    perceptual_distance,
    pixel_mae,
)
from diffdict.metrics.causal import summarize


@pytest.fixture(scope="module")
def backbone():
    from diffdict.metrics.backbones import ShapesClipBackbone
    from diffdict.models.shapes_clip import ShapesClip

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return ShapesClipBackbone(ShapesClip())


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)


def test_identical_images_have_zero_distance(backbone, images):
    assert np.all(pixel_mae(images, images) == 0)
    assert np.all(perceptual_distance(images, images, backbone) == 0)
    other = images.copy()
    other[0, :8, :8] = 255 - other[0, :8, :8]
    d = perceptual_distance(images, other, backbone)
    assert d[0] > 0 and np.all(d[1:] == 0)
    assert fid(images, images, backbone) == pytest.approx(0.0, abs=1e-6)


def test_lpips_style_on_known_maps():
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    a[0, 0] = 3.0  # every location points along channel 0
    b[0, 0, 0, 0] = 5.0  # location (0, 0) along channel 0 (same direction) ...
    b[0, 1, 0, 1:] = 2.0  # ... (0, 1) along channel 1: squared distance 2
    b[0, 1, 1, :] = -1.0  # ... row 1 along -channel 1: squared distance 2
    # one layer: mean over 4 locations of (0, 2, 2, 2), doubled by a second identical layer
    assert lpips_style([a], [b]).item() == pytest.approx(1.5)
    assert lpips_style([a, a], [b, b]).item() == pytest.approx(3.0)


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-8)
    shift = np.arange(6.0)
    assert frechet_distance(f, f + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-8)
    # scaling by k: FD = (1 - k)^2 (|mu|^2 + tr(cov))
    k = 3.0
    expected = (1 - k) ** 2 * (float((f.mean(0) ** 2).sum()) + float(np.trace(np.cov(f, rowvar=False))))
    assert frechet_distance(f, k * f) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(DiffdictError, match="at least 2 samples"):
        frechet_distance(f[:1], f)


def test_manhattan_locality_known_distance():
    original = np.zeros((1, 32, 32, 3), np.uint8)
    mask = np.zeros((8, 8))
    mask[0, 0] = 1  # token (0, 0): pixels 0..3 x 0..3
    far = original.copy()
    far[0, 8:12, 12:16] = 255  # token (row 2, col 3): Manhattan distance 5
    out = manhattan_locality(original, far, mask)
    assert out["distance"][0] == pytest.approx(5.0) and out["inside_share"][0] == 0
    both = far.copy()
    both[0, 0:4, 0:4] = 255  # the same amount of change inside the mask
    out = manhattan_locality(original, both, mask)
    assert out["distance"][0] == pytest.approx(2.5) and out["inside_share"][0] == pytest.approx(0.5)
    still = manhattan_locality(original, original, mask)
    assert still["distance"][0] == 0 and math.isnan(still["inside_share"][0])
    assert mask_distances(mask)[7, 7] == 14


def test_clip_score_shapes(backbone, images):
    scores = clip_score(images, "red", backbone)
    assert scores.shape == (4,) and np.all(np.abs(scores) <= 1 + 1e-6)
    per = clip_score(images, ["red", "blue", "red", "circle"], backbone)
    assert per[0] == pytest.approx(scores[0]) and per[2] == pytest.approx(scores[2])
    with pytest.raises(DiffdictError, match="3 texts for 4 images"):
        clip_score(images, ["a", "b", "c"], backbone)


def test_intervals_and_causal_summary():
    values = [1.0, 2.0, 3.0, 4.0]
    mean, low, high = mean_interval(values)
    half = 3.1824 * np.std(values, ddof=1) / 2
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half), rel=1e-4)
    assert mean_interval(values, "bootstrap", seed=3) == mean_interval(values, "bootstrap", seed=3)
    many = np.arange(41.0)  # 40 degrees of freedom: t quantile 2.0211
    assert mean_interval(many)[2] - 20.0 == pytest.approx(2.0211 * np.std(many, ddof=1) / np.sqrt(41), rel=1e-4)
    s = summarize([0.1, 0.2, 0.1], [0.9, 0.8, 0.3], [0.2, 0.2, 0.4])
    assert s["effect"]["mean"] == pytest.approx(0.5333333) and s["strength"]["mean"] == pytest.approx(0.4)
    assert s["win_rate"] == pytest.approx(2 / 3)


def test_unknown_backbone_is_one_line():
    with pytest.raises(DiffdictError, match="unknown backbone 'clip-xl'"):
        load_backbone("clip-xl")


@pytest.mark.parametrize("name", ["open-clip", "lpips", "inception"])
def test_real_backbones(name, images):
    available, reason = backbone_available(name)
    if not available:
        with pytest.raises(DiffdictError, match=r"diffdict\[metrics\]"):
            load_backbone(name)
        pytest.skip(f"{name}: {reason}")
    try:
        model = load_backbone(name)
    except DiffdictError as error:  # e.g. installed without torchvision, or weights not downloadable offline
        pytest.skip(f"{name}: {error}")
    except Exception as error:  # pragma: no cover - network / cache problems of the real package
        pytest.skip(f"{name} could not load its weights: {error}")
    if name == "lpips":
        assert np.all(perceptual_distance(images, images, model) == 0)
    elif name == "inception":
        assert fid(images, images, model) == pytest.approx(0.0, abs=1e-3)
    else:
        assert clip_score(images, "a photo", model).shape == (4,)
