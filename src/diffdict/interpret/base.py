"""The two interfaces of automated interpretation, their registries, and what they see.

An :class:`Explainer` turns a :class:`FeatureView` into one short :class:`Explanation`; a
:class:`Scorer` turns an explanation and the view into a dict with a primary ``"score"``.
Both may implement ``prepare(context, features)``, called once before the features. Built by
name with :func:`make_explainer` / :func:`make_scorer`, which ignore keyword options a class
does not take, so one set of CLI options serves them all.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.interpret.stats import Example, ActivationStats
from diffdict.interpret.vlm import vlm_client


@dataclass
class Explanation:
    text: str
    source: str  # the explainer's name
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"text": self.text, "source": self.source, **({"details": self.details} if self.details else {})}


@dataclass
class InterpretContext:
    """What explainers and scorers may read: the store, the dictionary, the site and the
    feature statistics; images are read once and cached."""

    store: Any
    dictionary: Any
    site: str
    stats: ActivationStats
    seed: int = 0
    host: Any = None
    clip: Any = None
    cache: dict = field(default_factory=dict, repr=False)  # shared by explainers and scorers
    _images: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def images(self, prompt_ids: list[int]) -> np.ndarray:
        missing = sorted({int(p) for p in prompt_ids} - set(self._images))
        if missing:
            self._images.update(zip(missing, self.store.images(missing)))
        return np.stack([self._images[int(p)] for p in prompt_ids]) if prompt_ids else np.zeros((0, 1, 1, 3), np.uint8)

    def prompt(self, prompt_id: int) -> str | None:
        prompts = self.store.prompts
        return prompts[prompt_id] if prompts and 0 <= prompt_id < len(prompts) else None

    def examples(self, feature: int, limit: int | None = None) -> list[Example]:
        return self._shown(self.stats.top_examples(feature, limit))

    def _shown(self, examples: list[Example]) -> list[Example]:
        """``examples`` with their images and prompts."""
        if examples:
            for e, image in zip(examples, self.images([e.prompt_id for e in examples])):
                e.image, e.prompt = image, self.prompt(e.prompt_id)
        return examples

    def other_examples(self, feature: int, count: int, exclude: set[int] | None = None) -> list[Example]:
        """Top images of ``count`` other features chosen at random (seeded by the feature):
        the non-activating side of a detection test."""
        exclude = set(exclude or ()) | {int(p) for p in self.stats.top_prompts[feature].tolist() if p >= 0}
        candidates = [f for f in range(self.stats.n_features) if f != feature and int(self.stats.top_prompts[f, 0]) >= 0]
        rng = np.random.default_rng([self.seed, feature])
        rng.shuffle(candidates)
        out: list[Example] = []
        for f in candidates:
            for e in self.stats.top_examples(f):
                if e.prompt_id not in exclude:
                    exclude.add(e.prompt_id)
                    out.append(e)
                    break
            if len(out) >= count:
                break
        return self._shown(out)

    def shapes_clip(self):
        if self.clip is None:
            from diffdict.models.shapes_clip import ShapesClip

            self.clip = ShapesClip.from_pretrained()
        return self.clip


@dataclass
class FeatureView:
    """One feature as an explainer sees it."""

    feature: int
    context: InterpretContext
    examples: list[Example]
    summary: dict
    icon: np.ndarray | None = None
    gallery: np.ndarray | None = None  # (prompts * strengths, H, W, 3), a row per prompt
    gallery_columns: int = 3
    files: dict[str, str] = field(default_factory=dict)  # name -> path of the PNGs written

    @property
    def vmax(self) -> float:
        return max((float(np.max(e.map)) for e in self.examples if e.map is not None), default=1.0)


class Explainer:
    name: str = ""

    def prepare(self, context: InterpretContext, features: list[int]) -> None:
        """Optional: one call before the features are explained."""

    def explain(self, view: FeatureView) -> Explanation:
        raise NotImplementedError


class Scorer:
    name: str = ""

    def prepare(self, context: InterpretContext, features: list[int]) -> None:
        """Optional: one call before the features are scored."""

    def score(self, explanation: Explanation, view: FeatureView) -> dict:
        raise NotImplementedError


EXPLAINERS: dict[str, type[Explainer]] = {}
SCORERS: dict[str, type[Scorer]] = {}


def register_explainer(cls: type[Explainer]) -> type[Explainer]:
    EXPLAINERS[cls.name] = cls
    return cls


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    SCORERS[cls.name] = cls
    return cls


def _build(registry: dict, kind: str, name: str, options: dict):
    # the built-in ones are registered: diffdict.interpret (run before any of its modules) imports them
    if name not in registry:
        raise DiffdictError(f"unknown {kind} {name!r}; expected one of {', '.join(sorted(registry))}")
    cls = registry[name]
    params = inspect.signature(cls.__init__).parameters
    if "client" in params:  # a VLM judge: the given client (interpret shares one), else one from the VLM options
        options = {**options, "client": vlm_client(options)}
    return cls(**{k: v for k, v in options.items() if k in params and v is not None})


def make_explainer(name: str, **options) -> Explainer:
    return _build(EXPLAINERS, "explainer", name, options)


def make_scorer(name: str, **options) -> Scorer:
    return _build(SCORERS, "scorer", name, options)


def feature_file(folder: str | Path, feature: int, suffix: str) -> Path:
    return Path(folder) / f"f{feature:06d}{suffix}"
