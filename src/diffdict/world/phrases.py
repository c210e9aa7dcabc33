"""Texts about scenes as constraints, and whether a text is true of a scene.

shapes-clip learns "text j describes image i" for captions, partial captions and short
concept phrases ("red", "top left", "striped background"). A text is a set of object
constraints (each must be met by a distinct object) and scene constraints.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from diffdict.world.captions import _TEXTURE_BY_ADJ, caption, parse_caption, with_random_omissions
from diffdict.world.concepts import BACKGROUNDS, COLORS, REGIONS, SHAPES, SIZES, TEXTURES
from diffdict.world.scene import Scene


@dataclass(frozen=True)
class TextConstraints:
    objects: tuple[dict[str, str], ...]  # per object: family -> value
    scene: dict[str, str]  # "bg_color" / "texture" -> value


def phrase_constraints(text: str) -> TextConstraints:
    """Constraints of a caption (full or partial) or of a concept phrase."""
    words = text.lower().split()
    if words and words[0] == "a":
        spec = parse_caption(text)
        objects = tuple(
            {k: v for k, v in (("shape", o.shape), ("color", o.color), ("size", o.size), ("region", o.region)) if v}
            for o in spec.objects
        )
        scene = {k: v for k, v in (("bg_color", spec.background), ("texture", spec.texture)) if v}
        return TextConstraints(objects, scene)
    # a concept phrase: object words describe one object, "... background" the scene
    if words and words[-1] == "background":
        scene: dict[str, str] = {}
        for w in words[:-1]:
            if w in BACKGROUNDS:
                scene["bg_color"] = w
            elif w in _TEXTURE_BY_ADJ:
                scene["texture"] = _TEXTURE_BY_ADJ[w]
        return TextConstraints((), scene)
    obj: dict[str, str] = {}
    joined = " ".join(words)
    if joined in REGIONS:
        return TextConstraints(({"region": joined},), {})
    for w in words:
        for family, values in (("shape", SHAPES), ("color", COLORS), ("size", SIZES)):
            if w in values:
                obj[family] = w
    return TextConstraints((obj,) if obj else (), {})


def text_matches_scene(constraints: TextConstraints, scene: Scene) -> bool:
    for family, value in constraints.scene.items():
        actual = scene.background if family == "bg_color" else scene.texture
        if actual != value:
            return False
    wanted = constraints.objects
    if len(wanted) > len(scene.objects):
        return False
    attrs = [o.attributes() for o in scene.objects]
    for chosen in permutations(range(len(attrs)), len(wanted)):
        if all(all(attrs[i].get(f) == v for f, v in want.items()) for want, i in zip(wanted, chosen)):
            return True
    return False


def concept_phrase(scene: Scene, rng: np.random.Generator) -> str:
    """A short phrase naming one or two attributes true of the scene."""
    if rng.random() < 0.25:
        choice = rng.integers(3)
        if choice == 0:
            return f"{scene.background} background"
        if choice == 1:
            return f"{TEXTURES[scene.texture]} background"
        return f"{scene.background} {TEXTURES[scene.texture]} background"
    obj = scene.objects[rng.integers(len(scene.objects))]
    attrs = [obj.size, obj.color, obj.shape, obj.region()]
    picks = sorted(rng.choice(4, size=int(rng.integers(1, 3)), replace=False))
    if 3 in picks and len(picks) > 1:  # a region is only said alone
        picks = [p for p in picks if p != 3]
    return " ".join(attrs[p] for p in picks)


def training_text(scene: Scene, rng: np.random.Generator) -> str:
    """Full caption (half the time), a partial caption, or a concept phrase."""
    draw = rng.random()
    if draw < 0.5:
        return caption(scene)
    if draw < 0.8:
        return caption(with_random_omissions(scene, rng, 0.35))
    return concept_phrase(scene, rng)


def concept_text(concept: str) -> str:
    """The words for a concept that shapes-clip reads and explanations use:
    ``color:red`` -> "red", ``region:top_left`` -> "top left", ``bg_color:gray`` -> "gray
    background", ``texture:stripes`` -> "striped background". Anything that is not a
    ``family:value`` concept (``object``, free text) is returned as it is."""
    family, sep, value = concept.partition(":")
    if not sep:
        return concept
    value = value.replace("_", " ")
    if family == "bg_color":
        return f"{value} background"
    if family == "texture":
        return f"{TEXTURES.get(value, value)} background"
    return value
