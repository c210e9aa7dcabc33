"""Write a diffdict SAE as a folder that SAE Lens or EleutherAI sparsify loads with its own
loader (``sae_lens.SAE.load_from_disk``, ``sparsify.Sae.load_from_disk``).

Both libraries compute, on raw activations,

    pre = (x − b_dec) W_enc + b_enc,   z = activation(pre),   x̂ = z W_dec + b_dec.

A diffdict SAE first normalises x_n = (x − m) / s (``input_mean``, ``input_scale``) and
may skip subtracting b_dec; both fold exactly into the weights (computed in float64):

    W_enc' = W_enc / s (per input dimension)     b_dec' = b_dec · s + m
    W_dec' = W_dec · s                           b_enc' = b_enc (+ b_dec W_enc when diffdict
                                                 does not subtract b_dec from its input)

Activations: TopK -> topk (both formats); BatchTopK and Matryoshka BatchTopK -> SAE Lens
jumprelu with their inference threshold on every feature (as SAE Lens exports its own
BatchTopK); JumpReLU -> jumprelu; ReLU, ReLU + L1 -> standard; soft-threshold
ReLU(pre − θ) -> standard with θ folded into b_enc. sparsify has only TopK, so it takes
TopK dictionaries alone; anything a format cannot express is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffdict.dictionaries.base import CONFIG_FILE, WEIGHTS_FILE, Dictionary
from diffdict.dictionaries.foreign import (FOREIGN_CONFIG, SAE_LENS_MECHANISMS, SAE_LENS_WEIGHTS, SPARSIFY_WEIGHTS,
                                         to_sparsify_layout)
from diffdict.dictionaries.sae import SparseAutoencoder
from diffdict.errors import DiffdictError
from diffdict.io import save_tensors, write_json

EXPORT_FORMATS = ("saelens", "sparsify")
WEIGHTS_OF_FORMAT = {"saelens": SAE_LENS_WEIGHTS, "sparsify": SPARSIFY_WEIGHTS}
# The cfg.json layout written here is SAE Lens's since 6.0 (older versions' is converted
# on load by the version this field names).
SAE_LENS_FORMAT_VERSION = "6.0.0"
SAE_LENS_ARCHITECTURES = {mechanism: architecture for architecture, mechanism in SAE_LENS_MECHANISMS.items()}


def plain_form(sae: SparseAutoencoder) -> tuple[dict[str, Tensor], str]:
    """The SAE as both libraries compute it (module docstring): float32 tensors under SAE
    Lens names with the input normalisation and b_dec folded in, and the activation
    (``topk``, ``jumprelu`` or ``relu``; TopK's k is the mechanism's). Refuses mechanisms
    that no plain activation expresses."""
    if not isinstance(sae, SparseAutoencoder):
        raise DiffdictError(f"only SAEs can be exported to SAE Lens or sparsify, not {sae.kind} dictionaries")
    mechanism = sae.mechanism
    name = mechanism.name
    W_enc, b_enc = sae.W_enc.detach().double(), sae.b_enc.detach().double()
    W_dec, b_dec = sae.W_dec.detach().double(), sae.b_dec.detach().double()
    if sae.normalization == "none":
        mean, scale = torch.zeros_like(b_dec), torch.ones_like(b_dec)
    else:
        mean, scale = sae.input_mean.double(), sae.input_scale.double()
    if not sae.apply_b_dec_to_input:
        b_enc = b_enc + b_dec @ W_enc
    extra: dict[str, Tensor] = {}
    if name == "topk":
        activation = "topk"
    elif name in ("batchtopk", "matryoshka-batchtopk"):
        # Inference is ReLU(pre) · H(pre − max(θ, 0)): a JumpReLU with θ on every feature.
        activation = "jumprelu"
        extra["threshold"] = mechanism.threshold.detach().double().clamp_min(0).expand(sae.n_features)
    elif name == "jumprelu":
        threshold = mechanism.threshold.detach().double()
        if bool((threshold < 0).any()):
            raise DiffdictError(f"{int((threshold < 0).sum())} JumpReLU thresholds are negative; SAE Lens applies "
                                "ReLU before its threshold, so only thresholds >= 0 export exactly")
        activation, extra["threshold"] = "jumprelu", threshold
    elif name in ("relu", "relu-l1"):
        activation = "relu"
    elif name == "soft-threshold":
        activation, b_enc = "relu", b_enc - mechanism.threshold.detach().double()
    else:
        raise DiffdictError(f"the sparsity mechanism {name!r} has no SAE Lens or sparsify equivalent")
    tensors = {"W_enc": W_enc / scale.unsqueeze(1), "b_enc": b_enc, "W_dec": W_dec * scale,
               "b_dec": b_dec * scale + mean, **extra}
    return {key: value.float().contiguous() for key, value in tensors.items()}, activation


def _sae_lens_config(sae: SparseAutoencoder, activation: str, metadata: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architecture": SAE_LENS_ARCHITECTURES[activation],
        "d_in": sae.d_in, "d_sae": sae.n_features, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAE_LENS_FORMAT_VERSION, **metadata},
    }
    if activation == "topk":
        config.update(k=sae.mechanism.topk, rescale_acts_by_decoder_norm=False)
    return config


def _sparsify_config(sae: SparseAutoencoder, tensors: dict[str, Tensor], activation: str) -> dict[str, Any]:
    if activation != "topk":
        inference = f" (a {activation} at inference)" if activation != sae.mechanism.name else ""
        raise DiffdictError(f"sparsify has TopK activations only; a {sae.mechanism.name} SAE{inference} "
                            "cannot be expressed; export it with --format saelens")
    unit_rows = bool(torch.allclose(tensors["W_dec"].norm(dim=1), torch.ones(sae.n_features), atol=1e-5))
    return {"activation": "topk", "k": sae.mechanism.topk, "num_latents": sae.n_features, "d_in": sae.d_in,
            "normalize_decoder": unit_rows, "multi_topk": False, "skip_connection": False, "transcode": False}


def export_dictionary(dictionary: Dictionary, folder: str | Path, format: str,
                      metadata: dict[str, Any] | None = None) -> Path:
    """Write ``dictionary`` (an SAE) to ``folder`` in ``format`` (``saelens`` or
    ``sparsify``). ``metadata`` (SAE Lens only), e.g. ``hook_name`` and ``model_name``,
    goes into the config's metadata."""
    if format not in EXPORT_FORMATS:
        raise DiffdictError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    tensors, activation = plain_form(dictionary)
    if format == "saelens":
        config = _sae_lens_config(dictionary, activation, {k: v for k, v in (metadata or {}).items() if v is not None})
    else:
        config = _sparsify_config(dictionary, tensors, activation)
        tensors = to_sparsify_layout(tensors)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DiffdictError(f"{folder} is a file, not a folder")
    clashes = [CONFIG_FILE, WEIGHTS_FILE] + [w for f, w in WEIGHTS_OF_FORMAT.items() if f != format]
    if present := [name for name in clashes if (folder / name).exists()]:
        raise DiffdictError(f"{folder} already holds {', '.join(present)}; export into an empty or new folder")
    save_tensors(folder / WEIGHTS_OF_FORMAT[format], tensors)
    write_json(folder / FOREIGN_CONFIG, config)  # last: a folder with cfg.json is complete
    return folder


def probe_inputs(sae: SparseAutoencoder, tokens: int, seed: int) -> Tensor:
    """Activations around the SAE's data: b_dec plus unit noise in its normalised space."""
    noise = torch.randn(tokens, sae.d_in, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return sae.denormalize(sae.b_dec.detach() + noise)


@torch.no_grad()
def max_differences(reference: SparseAutoencoder, x: Tensor, encode, decode) -> dict[str, float]:
    """Max |difference| to ``reference`` (in float32, bf16 off) of another implementation's
    dense codes ``encode(x)`` and of its reconstruction ``decode(codes)`` of the
    reference's own codes."""
    bf16, reference.bf16 = reference.bf16, False
    try:
        codes = reference.encode(x)
        recon = reference.decode(codes)
    finally:
        reference.bf16 = bf16
    return {"codes": float((encode(x) - codes).abs().max()),
            "reconstruction": float((decode(codes) - recon).abs().max())}
