import numpy as np
import pytest

from diffdict.errors import DiffdictError
from diffdict.world import (
    HELDOUT_PAIRS, VOCAB, Scene, SceneObject, caption, concept_grid, concept_names, encode_prompts,
    parse_caption, render, sample_scene, sample_scenes, scene_for_caption,
)
from diffdict.world.render import SUPERSAMPLE
from diffdict.world.phrases import phrase_constraints, text_matches_scene


def test_renderer_is_deterministic_and_independent_of_batching():
    a = [render(s).image for s in sample_scenes(8, seed=3)]
    b = [render(sample_scene(3, i)).image for i in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sample_scene(3, 5) != sample_scene(4, 5)


def test_circle_mask_matches_its_geometry():
    obj = SceneObject("circle", "red", "large", (0.5, 0.5))
    rendered = render(Scene((obj,), "black", "plain"), size=32)
    mask = rendered.masks["shape:circle"]
    radius = 7.0
    # area equals pi r^2 up to the supersampling error
    assert abs(mask.sum() - np.pi * radius ** 2) < 2.0
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    dist = np.hypot(xs - 16, ys - 16)
    assert np.all(mask[dist < radius - 1] == 1.0)
    assert np.all(mask[dist > radius + 1] == 0.0)
    # each pixel's coverage matches a much finer numerical integration of the disc
    fine = (np.arange(32 * 16) + 0.5) / 16
    fx, fy = np.meshgrid(fine, fine)
    coverage = ((fx - 16) ** 2 + (fy - 16) ** 2 <= radius ** 2).reshape(32, 16, 32, 16).mean(axis=(1, 3))
    assert np.abs(mask - coverage).max() < 0.15
    # exact fractions on the supersampling grid
    assert np.allclose(mask * SUPERSAMPLE ** 2, np.round(mask * SUPERSAMPLE ** 2), atol=1e-4)
    # the image is the object's colour where the mask is full
    assert tuple(rendered.image[16, 16]) == (220, 40, 40)


def test_masks_partition_the_image_and_respect_occlusion():
    front = SceneObject("square", "blue", "large", (0.45, 0.45))
    back = SceneObject("circle", "red", "large", (0.4, 0.4))
    rendered = render(Scene((back, front), "white", "stripes"))
    m = rendered.masks
    assert set(m) == set(concept_names())
    assert np.allclose(m["object"] + m["background"], 1.0)
    assert np.allclose(m["color:red"] + m["color:blue"], m["object"], atol=1e-6)
    assert np.allclose(m["texture:stripes"], m["background"])
    # the front square hides the circle's centre
    assert m["shape:circle"][14, 14] == 0.0 and m["shape:square"][14, 14] == 1.0


@pytest.mark.parametrize("grid", [4, 8, 16, 32, 5])
def test_concept_grid_is_exact_area_fraction(grid):
    mask = np.zeros((32, 32), np.float32)
    mask[:8, :8] = 1.0  # the top-left quarter of a quarter
    cells = concept_grid(mask, grid)
    assert cells.shape == (grid, grid)
    # total area is preserved: mean over cells == mean over pixels
    assert np.isclose(cells.mean(), mask.mean(), atol=1e-6)
    if grid == 4:
        assert cells[0, 0] == 1.0 and cells[1, 1] == 0.0
    if grid == 5:  # cell width 6.4 px: cell (1,1) covers x,y in [6.4, 12.8): overlap 1.6 x 1.6
        assert np.isclose(cells[1, 1], (1.6 * 1.6) / (6.4 * 6.4), atol=1e-6)


def test_captions_parse_back_to_their_attributes():
    for scene in sample_scenes(200, seed=1, split="all"):
        spec = parse_caption(caption(scene))
        assert spec.background == scene.background and spec.texture == scene.texture
        assert [(o.shape, o.color, o.size, o.region) for o in spec.objects] == [
            (o.shape, o.color, o.size, o.region()) for o in scene.objects
        ]


def test_partial_captions_and_scene_for_caption():
    spec = parse_caption("a red circle")
    assert spec.objects[0].color == "red" and spec.objects[0].size is None and spec.background is None
    rng = np.random.default_rng(0)
    scene = scene_for_caption("a small blue cross at the top right on a white dotted background", rng)
    assert scene.objects[0].region() == "top right" and scene.texture == "dots"
    assert text_matches_scene(phrase_constraints("blue"), scene)
    assert text_matches_scene(phrase_constraints("top right"), scene)
    assert not text_matches_scene(phrase_constraints("red"), scene)
    assert text_matches_scene(phrase_constraints("dotted background"), scene)


def test_splits_hold_out_colour_shape_pairs():
    train = sample_scenes(300, seed=0, split="train")
    heldout = sample_scenes(100, seed=0, split="heldout")
    assert not any(s.has_heldout_pair() for s in train)
    assert all(s.has_heldout_pair() for s in heldout)
    assert len(HELDOUT_PAIRS) == 4


def test_bad_prompts_get_one_clear_line():
    with pytest.raises(DiffdictError, match=r"prompt word 'dog' is not in the shapes world's vocabulary: a at"):
        encode_prompts(["a red dog"])
    with pytest.raises(DiffdictError, match="more than the text encoder's context of 32"):
        encode_prompts([" ".join(["a red circle and"] * 9)])
    with pytest.raises(DiffdictError, match="expected a shape"):
        parse_caption("a red at the top")
    assert encode_prompts([""]).sum() == 0 and VOCAB[0] == "<pad>"
    with pytest.raises(DiffdictError, match="image size 30 not supported"):
        render(sample_scene(0, 0), size=30)
