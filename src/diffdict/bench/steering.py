"""The causal scores, read by the judge (shapes-clip; docs/bench.md defines them).

Steering: a concept's steered feature is added (s · n · d/|d|, n the norm of the concept's
supervised direction) on one-object test prompts whose image lacks the concept, over the
object's box or the whole image, at every step, against a seeded random unit direction and
the supervised direction at the same norm; success = the judge's most likely value of the
family is the target. Erasure (SAeUron, UnlearnCanvas): on prompts that name the concept, its
detectors are removed (x − Σ z_i d_i), against as many random live features. Retain accuracy:
the share of the other families the judge reads as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from diffdict.interventions import Intervention, PixelBox, resolve_mask
from diffdict.world.concepts import FAMILIES, OBJECT_FAMILIES

MASK_MARGIN = 2  # pixels around the object's box


@dataclass
class RowwiseAdd(Intervention):
    """Adds ``deltas[i]`` (N, d) to prompt i's tokens, weighted by ``row_weights[i]``
    (N, tokens; None: every token)."""

    deltas: Any = None
    row_weights: Any = None
    name = "rowwise-add"

    def apply(self, x: Tensor, step: int | None) -> Tensor:
        rows = list(self._batch_rows) if self._batch_rows is not None else list(range(x.shape[0]))
        delta = self.deltas[rows].to(x.device, x.dtype).unsqueeze(1)
        if self.row_weights is None:
            return x + delta
        return x + self.row_weights[rows].to(x.device, x.dtype).unsqueeze(-1) * delta


@dataclass
class RowwiseErase(Intervention):
    """Removes the features ``erased[i]`` (N, n_features bool) from prompt i's tokens:
    x − Σ_{erased} z_j(x) d_j."""

    dictionary: Any = None
    erased: Any = None
    name = "rowwise-erase"

    def prepare(self, host, info, capture) -> None:
        from diffdict.feature_stats import site_space

        self.space = site_space(self.dictionary, info.d, f"site {info.name}")
        self.directions = site_directions(self.dictionary, info.d)

    def apply(self, x: Tensor, step: int | None) -> Tensor:
        from diffdict.feature_stats import encode_dense

        rows = list(self._batch_rows) if self._batch_rows is not None else list(range(x.shape[0]))
        b, t, d = x.shape
        codes = encode_dense(self.dictionary, x.reshape(-1, d).float(), self.space).reshape(b, t, -1)
        codes = codes * self.erased[rows].to(codes.dtype).unsqueeze(1)
        return x - (codes @ self.directions.to(codes.device)).to(x.dtype)


@dataclass
class JudgeReadings:
    """The judge's most likely value index per family for each image."""

    values: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, judge, images: np.ndarray) -> "JudgeReadings":
        probs = judge.read_concepts(images)
        return cls({family: probs[family].argmax(1).cpu().numpy() for family in FAMILIES})

    def retain(self, other: "JudgeReadings", family: str) -> np.ndarray:
        """Per image, the share of the families except ``family`` read the same as in ``other``."""
        same = [self.values[f] == other.values[f] for f in FAMILIES if f != family]
        return np.mean(same, 0)


def scene_value(scene, family: str) -> str:
    """The value of ``family`` in a one-object scene, as FAMILIES spells it."""
    if family == "bg_color":
        return scene.background
    if family == "texture":
        return scene.texture
    if family == "region":
        return scene.objects[0].region()
    return getattr(scene.objects[0], family)


def object_weights(image: np.ndarray, prompt: str, grid: tuple[int, int]) -> Tensor:
    """Token weights of the object's box (plus a margin) in a generated one-object image."""
    from diffdict.interpret.groundtruth import CONCEPTS, pixel_concepts

    mask = pixel_concepts(image, prompt)[CONCEPTS.index("object")] > 0
    h, w = mask.shape
    if not mask.any():
        return torch.ones(grid[0] * grid[1])
    ys, xs = np.nonzero(mask)
    box = PixelBox(max(0, xs.min() - MASK_MARGIN), max(0, ys.min() - MASK_MARGIN),
                   min(w, xs.max() + 1 + MASK_MARGIN), min(h, ys.max() + 1 + MASK_MARGIN))
    return resolve_mask(box, grid, (h, w))


@dataclass
class Generator:
    """Generates images of one host at fixed settings, each prompt from its own noise seed."""

    host: Any
    site: str
    width: int  # the site's d
    capture: str  # the capture mode edited (update, output, mlp)
    num_steps: int | None
    guidance: float | None
    batch_size: int

    originals: dict = field(default_factory=dict, repr=False)  # unedited images, shared by every dictionary scored

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int], edit: Intervention | None = None) -> np.ndarray:
        from diffdict.interventions import generate

        key = (tuple(prompts), tuple(seeds)) if edit is None else None
        if key in self.originals:
            return self.originals[key]
        images = generate(self.host, list(prompts), [edit] if edit is not None else [], seeds=list(seeds),
                          num_steps=self.num_steps, guidance=self.guidance, batch_size=self.batch_size)
        if key is not None:
            self.originals[key] = images
        return images


@dataclass
class SteeringPool:
    """One-object test prompts, their noise seeds, the unedited images, what the judge
    reads in them and each image's object-box token weights: shared by every dictionary
    steered on the same site, so their successes pair up prompt by prompt."""

    scenes: list
    prompts: list[str]
    seeds: list[int]
    originals: np.ndarray
    readings: JudgeReadings
    weights: Tensor


def steering_pool(generator: "Generator", judge, count: int, seed: int, grid: tuple[int, int],
                  originals: np.ndarray | None = None) -> SteeringPool:
    """``count`` one-object test scenes (noise seed ``seed + 50_000 + i``); ``originals``
    when the caller has them cached."""
    from diffdict.world import caption, single_object_scene

    scenes = [single_object_scene(seed, i, "test") for i in range(count)]
    prompts = [caption(s) for s in scenes]
    seeds = [seed + 50_000 + i for i in range(count)]
    if originals is None:
        originals = generator(prompts, seeds)
    weights = torch.stack([object_weights(im, p, grid) for im, p in zip(originals, prompts)])
    return SteeringPool(scenes, prompts, seeds, originals, JudgeReadings.of(judge, originals), weights)


def pool_size(prompts: int) -> int:
    """Pool size that leaves ``prompts`` prompts lacking any concept (a background colour
    or texture is lacking from 2/3 of one-object scenes)."""
    return 2 * prompts + 8


def site_directions(dictionary, d: int) -> Tensor:
    """(n_features, d): each feature's direction in the site's space (decoder rows; unit
    vectors for MLP neurons read on their own site)."""
    from diffdict.feature_stats import site_space

    if site_space(dictionary, d) == "neurons":
        return torch.eye(dictionary.n_features)
    return dictionary.decoder_directions.detach().float().cpu()


def steering_scores(generator: Generator, judge, pool: SteeringPool, concepts: Sequence[str],
                    directions: dict[str, dict[str, Tensor]], norms: dict[str, float], strengths: Sequence[float],
                    prompts: int, seed: int, log=print, random: bool = True) -> dict[str, Any]:
    """Per concept and strength s: success and retain accuracy of adding s · n_c · u to the
    prompts lacking the concept, for each method's unit direction u (``directions``: method →
    concept → direction) and, with ``random``, a seeded random unit direction per prompt.
    n_c = ``norms[concept]`` (the supervised direction's norm): an edit's size and the random
    control never depend on the dictionary. Per method: best strength, cross-fitted successes."""
    methods = list(directions) + (["random"] if random else [])
    out: dict[str, Any] = {}
    for ci, concept in enumerate(concepts):
        family, _, value = concept.partition(":")
        target = FAMILIES[family].index(value.replace("_", " "))
        rows = [i for i, s in enumerate(pool.scenes) if scene_value(s, family) != value.replace("_", " ")
                and pool.readings.values[family][i] != target][:prompts]
        norm = float(norms[concept])
        width = generator.width
        units = {m: torch.nn.functional.normalize(directions[m][concept].float(), dim=0) for m in directions}
        random_units = torch.randn(len(pool.prompts), width,
                                   generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (ci + 1)))
        random_units = random_units / random_units.norm(dim=1, keepdim=True)
        row_weights = pool.weights[rows] if family in OBJECT_FAMILIES else None
        before = JudgeReadings({k: v[rows] for k, v in pool.readings.values.items()})
        entry: dict[str, Any] = {"edit_norm": norm, "prompts": len(rows), "strengths": {}}
        for strength in strengths:
            scale = float(strength) * norm
            by_method = {}
            for method in methods:
                deltas = random_units[rows] * scale if method == "random" else units[method].expand(len(rows), width) * scale
                edit = RowwiseAdd(generator.site, capture=generator.capture, deltas=deltas, row_weights=row_weights)
                images = generator([pool.prompts[i] for i in rows], [pool.seeds[i] for i in rows], edit)
                after = JudgeReadings.of(judge, images)
                by_method[method] = {"success": (after.values[family] == target).astype(float).tolist(),
                                     "retain": after.retain(before, family).tolist()}
            entry["strengths"][str(strength)] = by_method
            log(f"  steer {concept} s={strength}: " + " ".join(
                f"{m} {np.mean(v['success']) if rows else float('nan'):.2f}" for m, v in by_method.items()))
        for method in methods:
            best, success, retain = cross_fitted({s: v[method] for s, v in entry["strengths"].items()})
            entry.update({f"{method}_best_strength": float(best), f"{method}_success": success,
                          f"{method}_retain": retain})
        out[concept] = entry
    return out


def best_strength(by_strength: dict[str, dict[str, list[float]]], rows: Sequence[int]) -> str:
    """The strength with the highest success on ``rows`` (ties: the weaker strength)."""
    def mean(s):
        values = [by_strength[s]["success"][i] for i in rows]
        return float(np.mean(values)) if values else 0.0
    return max(by_strength, key=lambda s: (mean(s), -float(s)))


def cross_fitted(by_strength: dict[str, dict[str, list[float]]]) -> tuple[str, list[float], list[float]]:
    """(the best strength over all prompts, per-prompt success, per-prompt retain) where,
    with several strengths, each prompt's result is taken at the strength chosen on the
    *other* half of the prompts (two-fold cross-fitting): choosing the best strength on
    the prompts it is scored on would report the luck of the draw as steering."""
    first = next(iter(by_strength.values()))
    n = len(first["success"])
    best = best_strength(by_strength, range(n))
    if len(by_strength) == 1:
        return best, list(first["success"]), list(first["retain"])
    halves = [list(range(0, n, 2)), list(range(1, n, 2))]
    chosen = [best_strength(by_strength, halves[1]), best_strength(by_strength, halves[0])]  # per half: the other's
    success, retain = [0.0] * n, [0.0] * n
    for half, strength in zip(halves, chosen):
        for i in half:
            success[i], retain[i] = by_strength[strength]["success"][i], by_strength[strength]["retain"][i]
    return best, success, retain


def erasure_scores(generator: Generator, judge, dictionary, concepts: Sequence[str], erased: dict[str, list[int]],
                   live: Tensor, prompts: int, seed: int, log=print, controls: bool = True) -> dict[str, Any]:
    """Per concept: erasure rate and retain accuracy of removing its features, and of
    removing as many random live features."""
    from diffdict.world import caption, single_object_scene

    out: dict[str, Any] = {}
    live_ids = torch.nonzero(live).flatten()
    for ci, concept in enumerate(concepts):
        family, _, value = concept.partition(":")
        target = FAMILIES[family].index(value.replace("_", " "))
        candidates = (single_object_scene(seed + 1, i, "test") for i in range(200 * prompts))
        scenes = list(islice((s for s in candidates if scene_value(s, family) == value.replace("_", " ")), prompts))
        texts = [caption(s) for s in scenes]
        seeds = [seed + 90_000 + 1000 * ci + i for i in range(len(texts))]
        originals = generator(texts, seeds)
        before = JudgeReadings.of(judge, originals)
        keep = before.values[family] == target
        chosen = erased[concept]
        generator_random = torch.Generator().manual_seed(seed * 1_000_003 + 104_729 * (ci + 1))
        result = {"features": chosen, "prompts": int(keep.sum())}
        for method in ("feature", "random") if controls else ("feature",):
            mask = torch.zeros(len(texts), dictionary.n_features, dtype=torch.bool)
            if method == "feature":
                mask[:, chosen] = True
            else:
                for row in mask:
                    row[live_ids[torch.randperm(live_ids.numel(), generator=generator_random)[: len(chosen)]]] = True
            edit = RowwiseErase(generator.site, capture=generator.capture, dictionary=dictionary, erased=mask)
            images = generator(texts, seeds, edit)
            after = JudgeReadings.of(judge, images)
            erased_now = (after.values[family] != target)[keep].astype(float)
            retain = after.retain(before, family)[keep]
            result[method] = {"erased": erased_now.tolist(), "retain": retain.tolist()}
        log(f"  erase {concept}: " + " ".join(f"{m} {np.mean(result[m]['erased']) if keep.any() else float('nan'):.2f}"
                                            for m in ("feature", "random") if m in result))
        out[concept] = result
    return out


__all__ = ["Generator", "JudgeReadings", "cross_fitted", "RowwiseAdd", "RowwiseErase", "erasure_scores", "object_weights",
           "steering_scores"]
