"""The stages studies share, each cached by exactly the settings it depends on.

    prompts ──collect──▶ store ──train (grid, one pass)──▶ dictionaries ──evaluate (scoring.py)──▶ metrics

Everything here is generic over the host model; only the concept oracle (ground-truth
interpretability) is shapes-world specific, and it and every metric that needs a feature's
explanation are NaN for real models. Members not in the cache are trained together in one
pass; each is cached on its own, keyed by the store's digest and its full training settings
(site and seed among them): its weights do not depend on the other members of its pass.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from diffdict.errors import DiffdictError
from diffdict.io import weights_fingerprint
from diffdict.studies.cache import text_digest

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.studies.base import StudyContext

#: the sites a study reads when none are given (the SDXL Turbo paper's and the Flux paper's)
DEFAULT_SITES: dict[str, tuple[str, ...]] = {
    "toy": ("up.1.1",),
    "sdxl-turbo": ("down.2.1", "up.0.1"),
    "sdxl": ("down.2.1", "up.0.1"),
    "flux-schnell": ("double.18",),
}
#: the capture mode a study reads at a block site: the update (SDXL Turbo paper) or the residual stream after the
#: block (Flux paper)
DEFAULT_CAPTURE: dict[str, str] = {"flux-schnell": "output"}


def load_study_host(config):
    from diffdict.hosts import load_host

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_host(config.model, only_taken=True, model=config.model_path, device=device, dtype=config.model_dtype,
                     quantize=config.quantize, image_size=config.image_size)


def judge_name(config) -> str:
    """The judge a study uses: ``auto`` is shapes-clip on the toy model and open-clip on
    real models; shapes-clip (it reads only the shapes world) is refused on real models."""
    from diffdict.hosts import host_class

    host = host_class(config.model)
    if config.judge == "auto":
        return host.default_judge
    if config.judge == "shapes-clip" and not host.shapes_world:
        raise DiffdictError(f"--judge shapes-clip reads only the shapes world, not images of {config.model}; "
                            f"use --judge open-clip (pip install 'diffdict[metrics]')")
    return config.judge


def load_judge(config):
    from diffdict.metrics.backbones import load_backbone

    name = judge_name(config)
    if name == "shapes-clip":
        return load_backbone(name, **({"path": config.judge_path} if config.judge_path else {}))
    return load_backbone(name, device=config.device)


_JUDGE_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def judge_fingerprint(judge) -> str:
    """The judge's name and a hash of its weights (computed once per judge object)."""
    known = _JUDGE_FINGERPRINTS.get(id(judge))
    if known is None or known[0] is not judge:
        model = getattr(judge, "model", None)
        weights = f":{weights_fingerprint(model.state_dict())}" if isinstance(model, torch.nn.Module) else ""
        known = _JUDGE_FINGERPRINTS[id(judge)] = (judge, judge.name + weights)
    return known[1]


def study_sites(host, sites: Sequence[str]) -> list[str]:
    """``sites`` checked against the host (one clear error for an unknown one), or its default study sites."""
    sites = sites or DEFAULT_SITES.get(host.name) or block_sites(host)[:1]
    for site in sites:
        if host.site(site).kind == "mlp":
            raise DiffdictError(f"site {site!r} holds MLP neurons; studies read block sites (e.g. "
                                f"{site.removesuffix('.mlp')}) and take the neurons from them")
    return list(sites)


def block_sites(host) -> list[str]:
    return [name for name, info in host.sites().items() if info.kind != "mlp"]


def study_capture(ctx: "StudyContext") -> str:
    """The capture mode read and edited at block sites (``--capture``, else the host's default)."""
    return ctx.config.capture or DEFAULT_CAPTURE.get(ctx.host.name, "update")


def site_capture(ctx: "StudyContext", site: str) -> str | None:
    """None at an MLP site (its neurons), else :func:`study_capture`."""
    return None if ctx.host.site(site).kind == "mlp" else study_capture(ctx)


PURPOSES = ("train", "eval", "edit")


def study_prompts(config, purpose: str, count: int) -> list[str]:
    """The prompts of one purpose (``train``, ``eval``, ``edit``): shapes-world captions
    (valid English prompts for real models too), each purpose from its own range of a
    split so the sets never overlap; or, with ``prompts_file``, consecutive (cycled) lines
    of the file, train first, then eval, then edit."""
    from diffdict.world import sample_prompts

    if config.prompts_file:
        from diffdict.collect import read_prompts

        lines = read_prompts(config.prompts_file)
        sizes = {"train": getattr(config, "train_prompts", 0), "eval": getattr(config, "eval_prompts", 0)}
        start = sum(sizes.get(p, 0) for p in PURPOSES[:PURPOSES.index(purpose)])
        return [lines[(start + i) % len(lines)] for i in range(count)]
    split, start = {"train": ("train", 0), "eval": ("test", 0), "edit": ("test", 100_000)}[purpose]
    return sample_prompts(count, seed=config.seed, split=split, start=start)


def generation_settings(ctx: "StudyContext") -> dict:
    host, config = ctx.host, ctx.config
    return {"num_steps": config.denoise_steps or host.study_steps or host.default_steps,
            "guidance": host.default_guidance if config.guidance is None else config.guidance}


def activation_store(ctx: "StudyContext", purpose: str, count: int, sites: Sequence[str],
                     capture: str | None = None):
    """The store of ``capture`` (default :func:`study_capture`) at ``sites`` over ``count``
    prompts (cached), opened. Its settings name the mode ``"what"``, as they always have, so
    that existing cache entries stay valid."""
    from diffdict.collect import collect
    from diffdict.store import open_store

    capture = capture or study_capture(ctx)
    prompts = study_prompts(ctx.config, purpose, count)
    gen = generation_settings(ctx)
    settings = {"host": ctx.host.describe(), "prompts": text_digest(prompts), "n": len(prompts), "sites": sorted(sites),
                "what": capture, "steps": ctx.config.capture_steps, "seed": ctx.config.seed, **gen}

    def build(folder: Path) -> None:
        ctx.log(f"collecting {len(prompts)} prompts at {', '.join(sites)} ({capture})")
        collect(ctx.host, prompts, list(sites), folder / "store", capture=capture, steps=ctx.config.capture_steps,
                seed=ctx.config.seed, num_steps=gen["num_steps"], guidance=gen["guidance"], dtype="float32",
                chunk_size=64, batch_size=ctx.config.batch_size, images=True, progress=False)

    return open_store(ctx.cache.folder("store", settings, build) / "store")


def generate_images(ctx: "StudyContext", prompts: Sequence[str], interventions: Sequence = (), seed_offset: int = 0):
    from diffdict.interventions import generate

    gen = generation_settings(ctx)
    return generate(ctx.host, list(prompts), list(interventions), seed=ctx.config.seed + seed_offset,
                    num_steps=gen["num_steps"], guidance=gen["guidance"], batch_size=ctx.config.batch_size)


def original_images(ctx: "StudyContext", prompts: Sequence[str], seed_offset: int = 0) -> np.ndarray:
    """Unedited generations (cached: every study compares against the same originals)."""
    settings = {"host": ctx.host.describe(), "prompts": text_digest(list(prompts)), "n": len(prompts),
                "seed": ctx.config.seed + seed_offset, **generation_settings(ctx)}
    return cached_images(ctx, "images", settings, lambda: generate_images(ctx, prompts, seed_offset=seed_offset))


def nan_mean(values) -> float:
    """The mean ignoring NaN (NaN when no value is finite)."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def cached_images(ctx: "StudyContext", kind: str, settings: dict, make: Callable[[], np.ndarray]) -> np.ndarray:
    """The images ``make()`` returns, cached as the entry's ``images.safetensors``."""
    from diffdict.io import load_tensors, save_tensors

    def build(folder: Path) -> None:
        save_tensors(folder / "images.safetensors", {"images": torch.from_numpy(make())})

    return load_tensors(ctx.cache.folder(kind, settings, build) / "images.safetensors")["images"].numpy()


@dataclass(frozen=True)
class Member:
    """One dictionary to train: an architecture and its sparsity options (``k``, ``l1``,
    ``theta``, ``l0_coef``, ``auxk``; ITDA: ``l0``, ``tau``). ``label`` names it in tables."""

    arch: str
    options: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @classmethod
    def of(cls, arch: str, label: str = "", **options: Any) -> "Member":
        return cls(arch, tuple(sorted(options.items())), label or arch)

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


def training_settings(ctx: "StudyContext", store_path: Path, site: str, member: Member, seed: int):
    """The trainer's settings for one member alone (its grid has one member)."""
    from diffdict.train import TrainSettings

    c = ctx.config
    settings = TrainSettings(
        acts=str(store_path), site=site, arch=[member.arch], expansion=[float(c.expansion)], lr=[float(c.lr)],
        normalization=[c.normalization], batch_size=c.train_batch, tokens=c.tokens, seed=seed,
        dead_window=c.dead_window, init_tokens=min(c.tokens, 16384), bf16=False, itda_tokens=c.itda_tokens,
    )
    for name, value in member.options:
        if name not in ("auxk", "k", "l1", "l0_coef", "theta", "tau", "l0"):
            raise ValueError(f"unknown member option {name!r}")  # a study bug
        setattr(settings, name, [value])
    return settings


def train_members(ctx: "StudyContext", store, site: str, members: Sequence[Member], seed: int) -> dict[Member, Path]:
    """Each member's dictionary folder (``config.json``, ``model.safetensors``,
    ``metrics.jsonl``): cached ones as they are, the rest trained together in one pass
    (the members of a study at one seed share the data, batches and schedule; each
    member's weights do not depend on what else is in the pass)."""
    keys = {}
    for member in members:
        settings = training_settings(ctx, store.path, site, member, seed)
        # what a member's weights depend on: its settings minus where the store lies
        key = {k: v for k, v in settings.to_json().items() if k != "acts"}
        keys[member] = ({"store": store.digest, "member": key}, settings)
    found = {m: path for m, (key, _) in keys.items() if (path := ctx.cache.lookup("dictionary", key)) is not None}
    if len(found) < len(keys):
        # another process sharing the cache may be training some of them: wait for it
        with ctx.cache.locked("dictionary", [key for member, (key, _) in keys.items() if member not in found]):
            missing: dict[str, tuple[Member, dict, Any]] = {}  # by the member's cache key
            for member, (key, settings) in keys.items():
                if member not in found:
                    path = ctx.cache.lookup("dictionary", key)
                    if path is not None:
                        found[member] = path
                    else:
                        missing.setdefault(text_digest(key), (member, key, settings))
            if missing:
                _train_missing(ctx, site, seed, missing, found)
    # a member listed twice is trained once
    return {member: found.get(member) or ctx.cache.path("dictionary", keys[member][0]) for member in members}


def _train_missing(ctx: "StudyContext", site: str, seed: int, missing: dict, found: dict[Member, Path]) -> None:
    from diffdict.io import write_json
    from diffdict.train import grid_members, train

    # each member as its own one-member grid describes it, under a distinct folder name
    specs = {}
    for index, (digest, (member, _, settings)) in enumerate(missing.items()):
        (spec,) = grid_members(settings)
        specs[digest] = dataclasses.replace(spec, name=f"{index:02d}-{spec.name}")
    shared = next(iter(missing.values()))[2]
    ctx.log(f"training {len(missing)} dictionar{'y' if len(missing) == 1 else 'ies'} on {site}, seed {seed}: "
            + ", ".join(member.label for member, _, _ in missing.values()))
    with tempfile.TemporaryDirectory(dir=ctx.cache.root) as tmp:
        began = time.perf_counter()
        folders = train(shared, Path(tmp) / "run", checkpoint_every=shared.total_steps,
                        log_every=max(1, shared.total_steps // 20), progress=False, members=list(specs.values()),
                        device=str(ctx.host.device) if ctx.host.device.type == "cuda" else "cpu")
        seconds = time.perf_counter() - began
        ctx.trained += len(missing)
        for digest, (member, key, _) in missing.items():
            folder = folders[specs[digest].name]
            for checkpoint in folder.glob("checkpoint-*.safetensors"):
                checkpoint.unlink()
            write_json(folder / "pass.json", {"members": len(missing), "seconds": seconds})
            found[member] = ctx.cache.put("dictionary", key, folder, seconds=seconds / len(missing))


def read_training_log(folder: Path) -> list[dict]:
    import json

    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def build_seconds(folder: Path) -> float:
    """Wall time the member itself took (its share of the pass), from its training log."""
    seconds, previous = 0.0, 0
    for row in read_training_log(folder):
        tokens = row["tokens"] - previous
        previous = row["tokens"]
        if row.get("tokens_per_s"):
            seconds += tokens / row["tokens_per_s"]
    return seconds


def neuron_dictionary(host, site: str, k: int):
    """The MLP neurons of ``site``'s block as a dictionary (top-k codes; decoder = the
    output projection), for hosts whose ``NAME.mlp`` site is ``ff.net.0`` of a diffusers
    feed-forward (toy, SDXL) or the FLUX MLP."""
    from diffdict.dictionaries import NeuronDictionary

    info = host.site(f"{site}.mlp") if f"{site}.mlp" in host.sites() else None
    if info is None or not info.module.endswith(".ff.net.0"):
        raise DiffdictError(f"site {site!r} of model {host.name} has no feed-forward MLP neurons to compare with")
    ff = host.module(info.module.rsplit(".", 2)[0])  # ...ff.net.0 -> ...ff
    out_proj = ff.net[2] if hasattr(ff, "net") else None
    if out_proj is None or not hasattr(out_proj, "weight"):
        raise DiffdictError(f"cannot find the MLP output projection of site {site!r}")
    return NeuronDictionary(out_proj.weight.detach().float().cpu(), None if out_proj.bias is None
                            else out_proj.bias.detach().float().cpu(), k=min(k, info.d))


@torch.no_grad()
def reconstruction_metrics(dictionary, store, site: str) -> dict[str, float]:
    """mse, fvu, explained_variance, l0, dead_fraction on the store's tokens. A neuron
    dictionary on its MLP site (the store holds the neuron activations) reconstructs the
    MLP's output, from the top-k neurons against all of them."""
    from diffdict.dictionaries.data import open_activations
    from diffdict.evaluate import ReconstructionTotals, evaluate_dictionary
    from diffdict.feature_stats import site_space

    if site_space(dictionary, store.d(site), f"site {site!r}") == "neurons":
        neurons = dictionary
        totals = ReconstructionTotals(neurons.d_in, neurons.n_features)
        for h in store.iter_batches(site, 4096, shuffle=False):
            target = neurons.decode(h) - neurons.b_dec  # every neuron's contribution
            codes = neurons.encode_activations(h)
            totals.add(target, codes, neurons.decode(codes) - neurons.b_dec)
        return totals.metrics()
    result = evaluate_dictionary(dictionary, open_activations(store.path, site))
    return {k: float(result[k]) for k in ("mse", "fvu", "explained_variance", "l0", "dead_fraction")}


__all__ = [
    "DEFAULT_CAPTURE", "DEFAULT_SITES", "Member", "activation_store", "block_sites", "build_seconds", "cached_images",
    "generate_images", "generation_settings", "judge_fingerprint", "load_judge", "load_study_host", "nan_mean",
    "neuron_dictionary", "original_images", "read_training_log", "reconstruction_metrics", "site_capture",
    "study_capture", "study_prompts", "study_sites", "train_members", "training_settings",
]
