"""Scenes: what an image of the shapes world contains, how it is sampled and split.

A scene is one or two objects (shape, colour, size, continuous centre) on a background
(colour, texture). Sampling is deterministic per (seed, split, index): scene ``i`` of a
split is the same whether it is drawn alone or in a batch of thousands.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.world.concepts import BACKGROUNDS, COLORS, REGIONS, SHAPES, SIZES, TEXTURES, region_index

DEFAULT_SIZE = 32

# colour x shape pairs never shown to the model in the "train" split
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("blue", "cross"), ("yellow", "circle"), ("green", "square")}
)
SPLITS: dict[str, int] = {"train": 0, "test": 1, "heldout": 2, "all": 3}
TWO_OBJECT_PROBABILITY = 0.4


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    center: tuple[float, float]  # (x, y) in units of the image width, in [0, 1]

    def region(self) -> str:
        return REGIONS[region_index(self.center[0], self.center[1], 1.0)]

    def attributes(self) -> dict[str, str]:
        """Its value of each object family (``shape``, ``color``, ``size``, ``region``)."""
        return {"shape": self.shape, "color": self.color, "size": self.size, "region": self.region()}


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    texture: str
    # attributes the caption leaves out (for prompts that omit e.g. the background)
    omitted: frozenset[str] = field(default=frozenset())

    def has_heldout_pair(self) -> bool:
        return any((o.color, o.shape) in HELDOUT_PAIRS for o in self.objects)


def center_range(region: int, size_name: str, image_size: int = DEFAULT_SIZE) -> tuple[tuple[float, float], tuple[float, float]]:
    """Range of object centres (fractions of the width) inside a region, keeping the
    object inside the image and one pixel away from the region's borders."""
    half = SIZES[size_name] * image_size / DEFAULT_SIZE
    lo_img, hi_img = half + 0.5, image_size - half - 0.5
    row, col = divmod(region, 3)
    cell = image_size / 3

    def interval(index: int) -> tuple[float, float]:
        lo = max(index * cell + 1.0, lo_img)
        hi = min((index + 1) * cell - 1.0, hi_img)
        if hi < lo:  # degenerate for very large objects: fall back to the cell centre
            lo = hi = (index + 0.5) * cell
        return lo / image_size, hi / image_size

    return interval(col), interval(row)


def place_object(rng: np.random.Generator, shape: str, color: str, size: str, region: int) -> SceneObject:
    (x0, x1), (y0, y1) = center_range(region, size)
    return SceneObject(shape, color, size, (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))))


def pick(rng: np.random.Generator, options) -> str:
    """One of ``options`` (a tuple, or a dict's keys) drawn uniformly."""
    return list(options)[rng.integers(len(options))]


def _draw_scene(rng: np.random.Generator) -> Scene:
    n_objects = 2 if rng.random() < TWO_OBJECT_PROBABILITY else 1
    regions = rng.choice(len(REGIONS), size=n_objects, replace=False)
    objects = tuple(place_object(rng, pick(rng, SHAPES), pick(rng, COLORS), pick(rng, SIZES), int(r)) for r in regions)
    return Scene(objects, pick(rng, BACKGROUNDS), pick(rng, TEXTURES))


def sample_scene(seed: int, index: int, split: str = "train") -> Scene:
    """Scene number ``index`` of ``split`` for ``seed``.

    ``train`` and ``test`` never contain a held-out colour x shape pair; every
    ``heldout`` scene contains at least one; ``all`` is unrestricted.
    """
    if split not in SPLITS:
        raise DiffdictError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    while True:
        scene = _draw_scene(rng)
        if split == "all":
            return scene
        if split == "heldout":
            if scene.has_heldout_pair():
                return scene
            # force the first object onto a held-out pair rather than reject (faster)
            first = scene.objects[0]
            color, shape = sorted(HELDOUT_PAIRS)[rng.integers(len(HELDOUT_PAIRS))]
            forced = SceneObject(shape, color, first.size, first.center)
            return Scene((forced,) + scene.objects[1:], scene.background, scene.texture)
        if not scene.has_heldout_pair():
            return scene


def sample_scenes(count: int, seed: int = 0, split: str = "train", start: int = 0) -> list[Scene]:
    return [sample_scene(seed, start + i, split) for i in range(count)]


def single_object_scene(seed: int, index: int, split: str = "test") -> Scene:
    """A one-object scene (the kind the accuracy metrics are measured on)."""
    scene = sample_scene(seed, index, split)
    return Scene(scene.objects[:1], scene.background, scene.texture)

