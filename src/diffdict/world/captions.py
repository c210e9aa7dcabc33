"""Captions: templates, the closed vocabulary, a tokenizer and a parser.

Grammar (optional parts in brackets)::

    caption := object ("and" object)* ["on a" [bg_color] [texture] "background"]
    object  := "a" [size] [color] shape ["at the" region]

Full captions name every attribute; the model is also trained on captions with some
optional phrases dropped so that "a red circle" is a valid prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.world.concepts import BACKGROUNDS, COLORS, REGIONS, SHAPES, SIZES, TEXTURES
from diffdict.world.scene import Scene, SceneObject, pick, place_object, sample_scenes

PAD = "<pad>"
CONTEXT_LENGTH = 32
_TEXTURE_BY_ADJ = {adj: name for name, adj in TEXTURES.items()}
_STRUCTURE_WORDS = ("a", "at", "the", "and", "on", "background")
_REGION_WORDS = ("top", "bottom", "left", "right", "center")
#: all words a prompt may use; index 0 is the padding token (the empty prompt)
VOCAB = list(dict.fromkeys([PAD, *_STRUCTURE_WORDS, *SIZES, *COLORS, *SHAPES, *_REGION_WORDS, *BACKGROUNDS,
                            *_TEXTURE_BY_ADJ]))
WORD_TO_ID = {w: i for i, w in enumerate(VOCAB)}


def object_phrase(obj: SceneObject, omit: frozenset[str] = frozenset()) -> str:
    words = ["a"]
    if "size" not in omit:
        words.append(obj.size)
    if "color" not in omit:
        words.append(obj.color)
    words.append(obj.shape)
    if "region" not in omit:
        words += ["at", "the", obj.region()]
    return " ".join(words)


def caption(scene: Scene) -> str:
    """The template caption of a scene (leaving out what ``scene.omitted`` names)."""
    omit = scene.omitted
    text = " and ".join(object_phrase(o, omit) for o in scene.objects)
    bg_words = []
    if "bg_color" not in omit:
        bg_words.append(scene.background)
    if "texture" not in omit:
        bg_words.append(TEXTURES[scene.texture])
    if bg_words:
        text += " on a " + " ".join(bg_words) + " background"
    return text


def sample_prompts(count: int, seed: int = 0, split: str = "train", start: int = 0) -> list[str]:
    """Captions of ``count`` scenes of a split (the prompts the studies sample)."""
    return [caption(s) for s in sample_scenes(count, seed, split, start)]


def tokenize_words(prompt: str) -> list[str]:
    words = prompt.lower().replace(",", " ").split()
    unknown = [w for w in words if w not in WORD_TO_ID or w == PAD]
    if unknown:
        raise DiffdictError(
            f"prompt word {unknown[0]!r} is not in the shapes world's vocabulary: {' '.join(VOCAB[1:])}"
        )
    return words


def encode_prompts(prompts: list[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """Token ids (N, context_length), padded with 0; errors name the offending prompt."""
    ids = np.zeros((len(prompts), context_length), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        words = tokenize_words(prompt)
        if len(words) > context_length:
            raise DiffdictError(
                f"prompt has {len(words)} words, more than the text encoder's context of {context_length}: {prompt!r}"
            )
        ids[row, : len(words)] = [WORD_TO_ID[w] for w in words]
    return ids


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str | None = None
    size: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class CaptionSpec:
    objects: tuple[ObjectSpec, ...]
    background: str | None = None
    texture: str | None = None


def parse_caption(prompt: str) -> CaptionSpec:
    """Parse a caption back into the attributes it names (None where left out)."""
    words = tokenize_words(prompt)
    pos = 0

    def fail(expected: str) -> DiffdictError:
        got = words[pos] if pos < len(words) else "the end of the prompt"
        return DiffdictError(f"cannot parse prompt {prompt!r}: expected {expected} at word {pos + 1}, got {got!r}")

    def take(options) -> str | None:
        nonlocal pos
        if pos < len(words) and words[pos] in options:
            pos += 1
            return words[pos - 1]
        return None

    objects = []
    while True:
        if take(("a",)) is None:
            raise fail("'a'")
        size, color, shape = take(SIZES), take(COLORS), take(SHAPES)
        if shape is None:
            raise fail(f"a shape ({', '.join(SHAPES)})")
        region = None
        if take(("at",)):
            if take(("the",)) is None:
                raise fail("'the'")
            first = take(_REGION_WORDS)
            if first is None:
                raise fail("a region")
            second = take(("left", "right")) if first in ("top", "bottom") else None
            region = f"{first} {second}" if second else first
        objects.append(ObjectSpec(shape, color, size, region))
        if take(("and",)) is None:
            break
    background = texture = None
    if take(("on",)):
        if take(("a",)) is None:
            raise fail("'a'")
        background = take(BACKGROUNDS)
        adj = take(_TEXTURE_BY_ADJ)
        texture = _TEXTURE_BY_ADJ[adj] if adj else None
        if take(("background",)) is None:
            raise fail("'background'")
    if pos != len(words):
        raise fail("the end of the prompt")
    return CaptionSpec(tuple(objects), background, texture)


def scene_for_caption(prompt: str, rng: np.random.Generator) -> Scene:
    """A random scene that fits a caption (attributes it leaves out drawn at random)."""
    spec = parse_caption(prompt)
    taken: set[int] = set()
    objects = []
    for o in spec.objects:
        if o.region is not None:
            region = REGIONS.index(o.region)
        else:
            free = [r for r in range(len(REGIONS)) if r not in taken] or list(range(len(REGIONS)))
            region = int(rng.choice(free))
        taken.add(region)
        objects.append(place_object(rng, o.shape, o.color or pick(rng, COLORS), o.size or pick(rng, SIZES), region))
    return Scene(tuple(objects), spec.background or pick(rng, BACKGROUNDS), spec.texture or pick(rng, TEXTURES))


def with_random_omissions(scene: Scene, rng: np.random.Generator, probability: float) -> Scene:
    """The same scene with each optional attribute left out of its caption with the given probability."""
    omitted = frozenset(a for a in ("size", "color", "region", "bg_color", "texture") if rng.random() < probability)
    return Scene(scene.objects, scene.background, scene.texture, omitted)
