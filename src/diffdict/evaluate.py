"""Reconstruction metrics of trained dictionaries on held activations.

Per dictionary: mse (mean squared error per element), fvu = Σ‖x − x̂‖² / Σ‖x − x̄‖²,
explained_variance = 1 − fvu, l0 (mean non-zero codes per token), dead_fraction (share of
features that never fire on the evaluated tokens). Spliced fidelity (:mod:`diffdict.metrics.fidelity`)
needs a host model: a store that records one, or any ``fidelity`` callable (dictionary → extra metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from diffdict.dictionaries.base import Dictionary, SparseCodes, load_dictionary
from diffdict.dictionaries.data import ActivationSource, StoreSource, open_activations
from diffdict.errors import DiffdictError
from diffdict.train import run_members

FidelityFn = Callable[[Dictionary], dict[str, float]]


class ReconstructionTotals:
    """Running sums for the reconstruction metrics of one dictionary over batches of
    (target, codes, reconstruction)."""

    def __init__(self, d: int, n_features: int):
        self.d, self.n_features = d, n_features
        self.sq_error = self.sum_sq = 0.0
        self.sum_x = torch.zeros(d, dtype=torch.float64)
        self.tokens = self.nonzero = 0
        self.fired = torch.zeros(n_features, dtype=torch.bool)

    def add(self, target: torch.Tensor, codes: SparseCodes, recon: torch.Tensor) -> None:
        active = codes.values != 0
        self.fired[codes.indices[active]] = True
        self.sq_error += float((target - recon).double().pow(2).sum())
        self.sum_x += target.double().sum(0)
        self.sum_sq += float(target.double().pow(2).sum())
        self.nonzero += int(active.sum())
        self.tokens += target.shape[0]

    def metrics(self) -> dict[str, float]:
        total_variance = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.tokens
        fvu = self.sq_error / total_variance if total_variance > 0 else float("nan")
        return {"mse": self.sq_error / (self.tokens * self.d), "fvu": fvu, "explained_variance": 1 - fvu,
                "l0": self.nonzero / self.tokens,
                "dead_fraction": float((~self.fired).float().mean()) if self.n_features else 0.0}


@torch.no_grad()
def evaluate_dictionary(dictionary: Dictionary, source: ActivationSource, batch_size: int = 4096,
                        max_tokens: int | None = None) -> dict[str, float]:
    if source.d != dictionary.d_in:
        raise DiffdictError(f"d mismatch: the {dictionary.kind} dictionary expects d = {dictionary.d_in}, "
                            f"{source.name} has d = {source.d}")
    dictionary.eval()
    totals = ReconstructionTotals(source.d, dictionary.n_features)
    for x in source.sequential(batch_size, max_tokens):
        if not torch.isfinite(x).all():
            raise DiffdictError(f"NaN or infinite activations in {source.name} near token {totals.tokens}")
        codes = dictionary.encode_sparse(x)
        totals.add(x, codes, dictionary.decode(codes))
    if totals.tokens == 0:
        raise DiffdictError(f"no tokens to evaluate in {source.name}")
    return {"tokens": totals.tokens, "n_features": dictionary.n_features, **totals.metrics()}


def evaluate_run(run_dir: str | Path, acts: str | Path | ActivationSource, *, site: str | None = None,
                 batch_size: int = 4096, max_tokens: int | None = None, fidelity: FidelityFn | None = None,
                 fidelity_prompts: int | None = None, seed: int = 0,
                 model_path: str | None = None) -> dict[str, dict[str, float]]:
    """Metrics of every member of a training run: member name → metrics.

    ``fidelity_prompts``: spliced fidelity on that many test-split prompts (seeded by
    ``seed``; ``model_path`` overrides the store's recorded model weights). ``None`` means
    16 when the store records a host model and none otherwise; 0 skips it."""
    source = acts if isinstance(acts, ActivationSource) else open_activations(acts, site)
    if fidelity is None:
        fidelity = store_fidelity_for(source, fidelity_prompts, seed, model_path)
    results = {}
    for folder in run_members(run_dir):
        dictionary = load_dictionary(folder)
        metrics = evaluate_dictionary(dictionary, source, batch_size, max_tokens)
        if fidelity is not None:
            metrics.update(fidelity(dictionary))
        results[folder.name] = metrics
    if not results:
        raise DiffdictError(f"{run_dir} holds no trained dictionary yet")
    return results


def store_fidelity_for(source: ActivationSource, prompts: int | None, seed: int = 0,
                       model_path: str | None = None) -> FidelityFn | None:
    """The spliced-fidelity function for activations ``source`` (see :func:`evaluate_run`)."""
    from diffdict.metrics.fidelity import store_fidelity

    if prompts is not None and prompts < 0:
        raise DiffdictError(f"--fidelity-prompts must be 0 or more, got {prompts}")
    if prompts == 0:
        return None
    model = (source.store.settings or {}).get("model") if isinstance(source, StoreSource) else None
    if model is None:
        if prompts is None:
            return None
        raise DiffdictError(f"spliced fidelity needs a store made by a host model; {source.name} records none "
                            "(use --fidelity-prompts 0)")
    return store_fidelity(source.store, source.site, prompts=prompts or 16, seed=seed, model_path=model_path)
