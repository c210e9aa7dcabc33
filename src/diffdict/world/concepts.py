"""The shapes world's concepts: the attribute values, their caption words and colours.

Everything else in ``diffdict.world`` (renderer, captions, masks, splits) reads these
tables, so adding a colour or a shape is a one-line change here (and retraining the
shipped models, whose vocabulary and heads follow these lists).
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "cyan": (40, 210, 220),
}

SIZES: dict[str, float] = {"small": 4.5, "large": 7.0}  # half-extent in pixels at 32x32

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25),
    "gray": (120, 120, 120),
    "white": (235, 235, 235),
}

# texture name -> the adjective used in captions
TEXTURES: dict[str, str] = {"plain": "plain", "stripes": "striped", "dots": "dotted"}

# 3x3 grid of image regions, row-major from the top left; caption phrase after "at the".
REGIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

# Concept families in the order used by masks and by shapes-clip's heads.
# "object" families are per object; "scene" families describe the background.
OBJECT_FAMILIES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "size": tuple(SIZES),
    "region": REGIONS,
}
SCENE_FAMILIES: dict[str, tuple[str, ...]] = {
    "bg_color": tuple(BACKGROUNDS),
    "texture": tuple(TEXTURES),
}
FAMILIES: dict[str, tuple[str, ...]] = {**OBJECT_FAMILIES, **SCENE_FAMILIES}


def concept_names() -> list[str]:
    """Every concept as ``family:value`` (region values use underscores), plus
    ``object`` (any foreground pixel) and ``background``."""
    names = [f"{family}:{value.replace(' ', '_')}" for family, values in FAMILIES.items() for value in values]
    return names + ["object", "background"]


def region_index(x: float, y: float, size: int) -> int:
    """The 3x3 region (index into REGIONS) containing the point (x, y) in pixels."""
    col = min(int(3 * x / size), 2)
    row = min(int(3 * y / size), 2)
    return 3 * row + col
