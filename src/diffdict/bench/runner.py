"""``run_bench``: every benchmark score of one dictionary at one site of the toy model,
beside the same scores of its two baselines (random-init twin, raw basis), with the
difference to each baseline and its 95% interval.

    store (with images) ──▶ ground truth ──▶ detection · purity · splitting · absorption
    dictionary ──encode──┘                    │ chosen features
                     host + judge ──▶ steering success · erasure · spliced fidelity
                     other seeds  ──▶ stability
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from diffdict.bench.baselines import random_init_twin, raw_basis, site_sample
from diffdict.bench.data import (BACKGROUND_INDEX, BENCH_CONCEPTS, OBJECT_INDEX, GroundTruth, dictionary_codes,
                                 ground_truth)
from diffdict.bench.interpretability import interpretability_scores, interval
from diffdict.bench.steering import (Generator, JudgeReadings, erasure_scores, pool_size, scene_value, site_directions,
                                     steering_pool, steering_scores)
from diffdict.errors import DiffdictError, require_int
from diffdict.world.concepts import OBJECT_FAMILIES

#: concepts steered and erased by default: every colour, shape, background colour and texture
STEER_FAMILIES = ("color", "shape", "bg_color", "texture")
BASELINES = ("random-init", "raw-basis")
STEER_FEATURES = ("writer", "reader", "both")


@dataclass
class BenchConfig:
    """What the benchmark measures and on how many prompts."""

    seed: int = 0
    causal: bool = True
    concepts: Sequence[str] = tuple(c for c in BENCH_CONCEPTS if c.split(":")[0] in STEER_FAMILIES)
    steer_prompts: int = 32
    # in units of the concept's supervised shift: 1 = its norm (see bench.steering)
    strengths: Sequence[float] = (1.0, 2.0, 4.0)
    erase_prompts: int = 16
    fidelity_prompts: int = 16
    baselines: Sequence[str] = BASELINES
    # which feature of a concept is steered: its writer, detection's reader, or the one
    # that does both best (``concept_writers`` with the selection half's F1)
    steer_feature: str = "writer"
    batch_size: int = 64
    num_steps: int | None = None
    guidance: float | None = None

    def __post_init__(self):
        unknown = [c for c in self.concepts if c not in BENCH_CONCEPTS]
        if unknown:
            raise DiffdictError(f"unknown concept {unknown[0]!r}; expected family:value, one of {', '.join(BENCH_CONCEPTS)}")
        if self.steer_feature not in STEER_FEATURES:
            raise DiffdictError(f"unknown steered feature {self.steer_feature!r}; expected {' or '.join(STEER_FEATURES)}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise DiffdictError(f"unknown baseline {bad[0]!r}; expected {', '.join(BASELINES)}")
        for name in ("steer_prompts", "erase_prompts", "batch_size"):
            require_int(getattr(self, name), name.replace("_", "-"), 2 if "prompts" in name else 1)
        if not self.strengths or not all(math.isfinite(float(s)) and float(s) > 0 for s in self.strengths):
            raise DiffdictError(f"strengths must be positive numbers, got {list(self.strengths)}")


@dataclass
class Shared:
    """What every dictionary of one site shares: ground truth, the supervised concept
    directions, the generator and the judge."""

    store: Any
    site: str
    truth: GroundTruth
    sample: torch.Tensor
    supervised: dict[str, torch.Tensor] = field(default_factory=dict)
    generator: Any = None
    judge: Any = None
    pool: Any = None


@torch.no_grad()
def concept_directions(store, site: str, truth: GroundTruth, concepts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Mean activation of selection-half tokens with the concept minus that of tokens of
    the same kind (object / background) without it."""
    from diffdict.interpret.groundtruth import CONCEPTS

    d = store.d(site)
    index = [CONCEPTS.index(c) for c in concepts]
    sums_with = torch.zeros(len(concepts), d, dtype=torch.float64)
    sums_kind = torch.zeros(2, d, dtype=torch.float64)
    n_with = torch.zeros(len(concepts), dtype=torch.float64)
    n_kind = torch.zeros(2, dtype=torch.float64)
    total = store.num_tokens(site)
    cols = truth.cols
    for start in range(0, total, 16384):
        x, meta = store.read(site, start, min(start + 16384, total))
        pid = meta["prompt_id"].long()
        keep = truth.selection[pid]
        labels = truth.grid[pid[keep], :, (meta["row"].long() * cols + meta["col"].long())[keep]].double()
        x = x[keep].double()
        sums_with += labels[:, index].t() @ x
        n_with += labels[:, index].sum(0)
        kinds = labels[:, [OBJECT_INDEX, BACKGROUND_INDEX]]
        sums_kind += kinds.t() @ x
        n_kind += kinds.sum(0)
    out = {}
    for i, concept in enumerate(concepts):
        kind = 0 if concept.split(":")[0] in OBJECT_FAMILIES else 1
        with_mean = sums_with[i] / max(float(n_with[i]), 1.0)
        without = (sums_kind[kind] - sums_with[i]) / max(float(n_kind[kind] - n_with[i]), 1.0)
        out[concept] = (with_mean - without).float()
    return out


def direction_cosines(dictionary, supervised: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Per concept, the cosine of every feature's direction with the concept's supervised direction."""
    directions = torch.nn.functional.normalize(site_directions(dictionary, width), dim=1)
    return {concept: directions @ torch.nn.functional.normalize(direction.float(), dim=0)
            for concept, direction in supervised.items()}


def concept_writers(dictionary, supervised: dict[str, torch.Tensor], live: torch.Tensor, width: int,
                    selection_f1: torch.Tensor | None = None) -> dict[str, int]:
    """Per concept, the live feature whose direction is closest (cosine) to the concept's
    supervised direction: the feature that *writes* it (detection's reader often only
    reports it, docs/bench.md). With ``selection_f1`` (n_features, len(BENCH_CONCEPTS)), the
    feature that does both: the largest max(cosine, 0) × F1. A feature writes at most one value
    of a family, the one its direction is closest to, unless no live feature is closest to it."""
    cosines = direction_cosines(dictionary, supervised, width)
    families: dict[str, list[str]] = {}
    for concept in cosines:
        families.setdefault(concept.split(":")[0], []).append(concept)
    out = {}
    for concept, cosine in cosines.items():
        own = live.clone()
        for rival in families[concept.split(":")[0]]:
            if rival != concept:
                own &= cosine >= cosines[rival]
        score = cosine.clone()
        if selection_f1 is not None:
            score = score.clamp_min(0.0) * selection_f1[:, BENCH_CONCEPTS.index(concept)].float()
        score[~(own if bool(own.any()) else live)] = -2.0
        out[concept] = int(score.argmax())
    return out


def typical_activations(codes) -> torch.Tensor:
    """Mean non-zero code of each feature (the ``a`` of an ``add`` edit)."""
    n = codes.n_features
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, codes.feature, codes.value.double())
    counts = torch.bincount(codes.feature, minlength=n).double()
    return (sums / counts.clamp_min(1.0)).float()


def stability(dictionary, others: Sequence[Any]) -> dict[str, float] | None:
    """Mean |cosine| of decoder rows matched one to one (Hungarian) with each other
    dictionary of the same configuration."""
    from scipy.optimize import linear_sum_assignment

    if not others:
        return None
    scores = []
    a = torch.nn.functional.normalize(dictionary.decoder_directions.float(), dim=1)
    for other in others:
        b = torch.nn.functional.normalize(other.decoder_directions.float(), dim=1)
        if b.shape != a.shape:
            raise DiffdictError(f"stability needs dictionaries of one shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        cos = (a @ b.t()).numpy()
        rows, cols = linear_sum_assignment(-cos)
        scores.append(float(cos[rows, cols].mean()))
    return {"mean_cosine": float(np.mean(scores)), "pairs": len(scores)}


def fidelity(shared: Shared, dictionary, prompts: int, seed: int) -> dict[str, float]:
    """Spliced fidelity on one-object test prompts: LPIPS-style distance to the originals
    and the judge's accuracy (share of families read as the prompt says)."""
    from diffdict.interventions import Splice
    from diffdict.world import FAMILIES, caption, single_object_scene

    scenes = [single_object_scene(seed + 2, i, "test") for i in range(prompts)]
    texts = [caption(s) for s in scenes]
    seeds = [seed + 70_000 + i for i in range(prompts)]
    original = shared.generator(texts, seeds)
    spliced = shared.generator(texts, seeds, Splice(shared.site, dictionary, capture=shared.generator.capture))
    truth = {f: np.array([FAMILIES[f].index(scene_value(s, f)) for s in scenes]) for f in FAMILIES}
    before, after = (float(np.mean([reading.values[f] == truth[f] for f in FAMILIES]))
                     for reading in (JudgeReadings.of(shared.judge, original), JudgeReadings.of(shared.judge, spliced)))
    lpips = shared.judge.perceptual_distance(original, spliced)
    return {"lpips": float(torch.as_tensor(lpips).float().mean()), "judge_accuracy": after,
            "judge_accuracy_original": before}


def score_dictionary(shared: Shared, dictionary, config: BenchConfig, others: Sequence[Any] = (),
                     log: Callable[[str], None] = print, controls: bool = True) -> dict[str, Any]:
    """Every score of one dictionary; ``controls``: also the random-direction, supervised
    and random-feature controls (a baseline needs only its own edits)."""
    codes = dictionary_codes(dictionary, shared.store, shared.site, seed=config.seed)
    live = torch.bincount(codes.feature, minlength=codes.n_features) > 0
    def writers(selection_f1):
        return concept_writers(dictionary, shared.supervised, live, shared.store.d(shared.site),
                               selection_f1 if config.steer_feature == "both" else None)

    result = interpretability_scores(codes, shared.truth, config.seed, writers)
    for concept, cosine in direction_cosines(dictionary, shared.supervised, shared.store.d(shared.site)).items():
        entry = result["concepts"][concept]
        entry["writer_cosine"] = float(cosine[entry["writer_feature"]])
    result["l0"] = codes.value.numel() / max(codes.num_tokens, 1)
    result["stability"] = stability(dictionary, others)
    if not config.causal:
        return result
    concepts = list(config.concepts)
    features = {c: result["concepts"][c]["token_feature" if config.steer_feature == "reader" else "writer_feature"]
                for c in concepts}
    if shared.pool is None:
        shared.pool = steering_pool(shared.generator, shared.judge, pool_size(config.steer_prompts), config.seed,
                                    (shared.truth.rows, shared.truth.cols))
    rows = site_directions(dictionary, shared.generator.width)
    directions = {"feature": {c: rows[features[c]] for c in concepts}}
    if controls:
        directions["supervised"] = shared.supervised
    result["steering"] = steering = steering_scores(
        shared.generator, shared.judge, shared.pool, concepts, directions,
        {c: float(shared.supervised[c].norm()) for c in concepts}, config.strengths, config.steer_prompts, config.seed,
        log, random=controls)
    for concept in concepts:
        steering[concept]["feature"] = features[concept]
    erased = {c: result["concepts"][c]["detector_features"] for c in concepts}
    result["erasure"] = erasure = erasure_scores(shared.generator, shared.judge, dictionary, concepts, erased, live,
                                                 config.erase_prompts, config.seed, log, controls)
    result["fidelity"] = fidelity(shared, dictionary, config.fidelity_prompts, config.seed)
    result["summary"].update(_causal_summary(steering, erasure, result["concepts"], config.seed, config.steer_feature))
    result["summary"]["fidelity_lpips"] = result["fidelity"]["lpips"]
    result["summary"]["fidelity_judge_accuracy"] = result["fidelity"]["judge_accuracy"]
    return result


def writer_f1(concept: dict[str, Any], steer_feature: str = "writer") -> float | None:
    """The steered feature's test-half F1: the writer's (also the feature chosen by
    ``both``), the better of token and image level; detection's reader's at token level,
    the level it was chosen at. None: no such feature."""
    keys = ("token_f1",) if steer_feature == "reader" else ("writer_token_f1", "writer_image_f1")
    values = [concept[k] for k in keys if concept.get(k) is not None]
    return max(values) if values else None


def proportion_interval(successes: Sequence[float]) -> dict[str, float]:
    """Share of successes with its 95% Wilson interval."""
    x = np.asarray(successes, dtype=np.float64)
    n = x.size
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    p, z = float(x.mean()), 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": p, "low": centre - half, "high": centre + half, "n": n}


def _causal_summary(steering: dict, erasure: dict, concepts: dict, seed: int,
                    steer_feature: str = "writer") -> dict[str, Any]:
    """Pooled steering and erasure rates; a concept *steers* when the steered feature also
    detects it (test-half F1 >= 0.8, token or image level) and steers it on >= 80% of the
    prompts with an interval above the random direction's."""
    out: dict[str, Any] = {}
    pooled = {m: sum((steering[c][f"{m}_success"] for c in steering), []) for m in ("feature", "random", "supervised")
              if all(f"{m}_success" in e for e in steering.values())}
    for method, values in pooled.items():
        out[f"steer_{method}"] = proportion_interval(values)
    if "random" in pooled:
        out["steer_minus_random"] = interval(np.array(pooled["feature"]) - np.array(pooled["random"]), seed)
    out["steer_retain"] = interval(sum((steering[c]["feature_retain"] for c in steering), []), seed)
    for concept, entry in steering.items():
        entry["success"] = mine = proportion_interval(entry["feature_success"])
        if "random_success" in entry:
            entry["random"] = rand = proportion_interval(entry["random_success"])
            f1 = writer_f1(concepts[concept], steer_feature) or 0.0
            entry["writer_f1"] = f1
            entry["steers"] = bool(f1 >= 0.8 and mine["mean"] >= 0.8 and mine["low"] > rand["high"])
    if "random" in pooled:
        out["steered_concepts"] = sorted(c for c, e in steering.items() if e.get("steers"))
    for method in ("feature", "random"):
        if all(method in erasure[c] for c in erasure):
            out[f"erase_{method}"] = proportion_interval(sum((erasure[c][method]["erased"] for c in erasure), []))
    out["erase_retain"] = interval(sum((erasure[c]["feature"]["retain"] for c in erasure), []), seed)
    return out


def per_concept(result: dict, key: str) -> np.ndarray:
    """One score per benchmark concept, NaN where it is undefined."""
    return np.array([np.nan if result["concepts"][c][key] is None else result["concepts"][c][key]
                     for c in BENCH_CONCEPTS], dtype=float)


def differences(mine: dict, other: dict, seed: int) -> dict[str, dict[str, float]]:
    """Dictionary minus baseline per headline score with a 95% interval: paired over
    concepts (detection, concept purity), over (concept, prompt) trials (steering, erasure: the same
    prompts and noise), unpaired over features (purity, bootstrap)."""
    out = {}
    for kind in ("token", "image"):
        a, b = (per_concept(r, f"{kind}_f1") for r in (mine, other))
        out[f"{kind}_f1"] = interval(a - b, seed)
    for key in ("token_purity", "image_purity", "token_top_precision"):
        pa, pb = (np.array(r["features"].get(key, []), dtype=float) for r in (mine, other))
        pa, pb = pa[np.isfinite(pa)], pb[np.isfinite(pb)]
        if pa.size > 1 and pb.size > 1:
            rng = np.random.default_rng(seed)
            boots = [pa[rng.integers(0, pa.size, pa.size)].mean() - pb[rng.integers(0, pb.size, pb.size)].mean()
                     for _ in range(2000)]
            low, high = np.quantile(boots, [0.025, 0.975])
            out[key] = {"mean": float(pa.mean() - pb.mean()), "low": float(low), "high": float(high), "n": int(pa.size)}
    out["concept_purity"] = interval(per_concept(mine, "concept_purity") - per_concept(other, "concept_purity"), seed)
    if "steering" in mine and "steering" in other:
        a = sum((mine["steering"][c]["feature_success"] for c in mine["steering"]), [])
        b = sum((other["steering"][c]["feature_success"] for c in mine["steering"]), [])
        out["steer_feature"] = interval(np.array(a) - np.array(b), seed)
        a = sum((mine["erasure"][c]["feature"]["erased"] for c in mine["erasure"]), [])
        b = sum((other["erasure"][c]["feature"]["erased"] for c in mine["erasure"]), [])
        if len(a) == len(b):
            out["erase_feature"] = interval(np.array(a) - np.array(b), seed)
    return out


def run_bench(dictionary, store, site: str, config: BenchConfig | None = None, host=None, judge=None,
              others: Sequence[Any] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score ``dictionary`` at ``site`` of ``store`` and its baselines (see the module docstring).
    ``host``/``judge`` are needed for the causal scores (default: the store's toy model and shapes-clip)."""
    from diffdict.feature_stats import site_space

    config = config or BenchConfig()
    if site not in store.sites:
        raise DiffdictError(f"site {site!r} is not in store {store.path}; it has {', '.join(store.sites)}")
    site_space(dictionary, store.d(site), f"site {site!r}")
    log(f"ground truth of {store.num_prompts} prompts at {site}")
    truth = ground_truth(store, site, seed=config.seed)
    shared = Shared(store, site, truth, site_sample(store, site, seed=config.seed))
    if config.causal:
        from diffdict.capture import capture_mode_of

        if host is None or judge is None:
            raise DiffdictError("the causal scores need the host model and the judge")
        settings = store.settings
        generation = settings.get("generation", {})
        shared.generator = Generator(host, site, store.d(site), capture_mode_of(settings.get("capture")) or "update",
                                     config.num_steps or generation.get("num_steps"),
                                     config.guidance if config.guidance is not None else generation.get("guidance"),
                                     config.batch_size)
        shared.judge = judge
    shared.supervised = concept_directions(store, site, truth, list(config.concepts))
    results: dict[str, Any] = {"site": site, "store": str(store.path), "prompts": store.num_prompts,
                               "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}}
    log("scoring the dictionary")
    results["dictionary"] = score_dictionary(shared, dictionary, config, others, log)
    results["baselines"], results["differences"] = {}, {}
    for name in config.baselines:
        log(f"scoring the {name} baseline")
        if name == "random-init":
            base = random_init_twin(dictionary, shared.sample, seed=config.seed, l0=results["dictionary"]["l0"])
            twin_others = [random_init_twin(dictionary, shared.sample, seed=config.seed + 1 + i) for i in range(len(others))]
        else:
            base, twin_others = raw_basis(shared.sample), []
        results["baselines"][name] = score_dictionary(shared, base, config, twin_others, log, controls=False)
        results["differences"][name] = differences(results["dictionary"], results["baselines"][name], config.seed)
    return results


__all__ = ["BASELINES", "BenchConfig", "STEER_FAMILIES", "concept_directions", "differences", "run_bench",
           "score_dictionary", "stability", "typical_activations"]
