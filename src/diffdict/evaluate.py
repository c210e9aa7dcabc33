"""Reconstruction metrics of trained dictionaries on held activations.

Per dictionary: mse (mean squared error per element), fvu = Σ‖x − x̂‖² / Σ‖x − x̄‖²,
explained_variance = 1 − fvu, l0 (mean non-zero codes per token), dead_fraction (share of
features that never fire on the evaluated tokens).

Spliced fidelity (images generated with the site replaced by the reconstruction, against
the originals) needs a host model; ``evaluate_run`` takes it as a ``fidelity`` callable
(dictionary → extra metrics), built from a host-model adapter by the interventions code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from diffdict.dictionaries.base import Dictionary, SparseCodes, load_dictionary
from diffdict.dictionaries.data import ActivationSource, open_activations
from diffdict.errors import DiffdictError
from diffdict.train import run_members

FidelityFn = Callable[[Dictionary], dict[str, float]]


@torch.no_grad()
def evaluate_dictionary(
    dictionary: Dictionary, source: ActivationSource, batch_size: int = 4096, max_tokens: int | None = None
) -> dict[str, float]:
    if source.d != dictionary.d_in:
        raise DiffdictError(
            f"d mismatch: the {dictionary.kind} dictionary expects d = {dictionary.d_in}, {source.name} has d = {source.d}"
        )
    dictionary.eval()
    sq_error = sum_sq = 0.0
    sum_x = torch.zeros(source.d, dtype=torch.float64)
    tokens = nonzero = 0
    fired = torch.zeros(dictionary.n_features, dtype=torch.bool)
    for x in source.sequential(batch_size, max_tokens):
        if not torch.isfinite(x).all():
            raise DiffdictError(f"NaN or infinite activations in {source.name} near token {tokens}")
        codes: SparseCodes = dictionary.encode_sparse(x)
        recon = dictionary.decode(codes)
        active = codes.values != 0
        fired[codes.indices[active]] = True
        sq_error += float((x - recon).double().pow(2).sum())
        sum_x += x.double().sum(0)
        sum_sq += float(x.double().pow(2).sum())
        nonzero += int(active.sum())
        tokens += x.shape[0]
    if tokens == 0:
        raise DiffdictError(f"no tokens to evaluate in {source.name}")
    total_variance = sum_sq - float(sum_x.pow(2).sum()) / tokens
    fvu = sq_error / total_variance if total_variance > 0 else float("nan")
    return {
        "tokens": tokens,
        "n_features": dictionary.n_features,
        "mse": sq_error / (tokens * source.d),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "l0": nonzero / tokens,
        "dead_fraction": float((~fired).float().mean()) if dictionary.n_features else 0.0,
    }


def evaluate_run(
    run_dir: str | Path,
    acts: str | Path | ActivationSource,
    *,
    site: str | None = None,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    fidelity: FidelityFn | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of every member of a training run: member name → metrics."""
    source = acts if isinstance(acts, ActivationSource) else open_activations(acts, site)
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
