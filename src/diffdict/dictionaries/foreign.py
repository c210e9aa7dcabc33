"""Readers for dictionaries saved by EleutherAI sparsify and SAE Lens, and the file
layouts that ``export.py`` writes back.

sparsify (``cfg.json`` + ``sae.safetensors``): ``encoder.weight`` (n, d), ``encoder.bias``
(n,), ``W_dec`` (n, d), ``b_dec`` (d,); cfg ``d_in``, ``k``, ``activation``,
``num_latents`` / ``expansion_factor``. Codes: top-k of ReLU((x − b_dec) encoder.weightᵀ +
encoder.bias); reconstruction Σ codes · W_dec + b_dec.

SAE Lens (``cfg.json`` + ``sae_weights.safetensors``): ``W_enc`` (d, n), ``b_enc``, ``W_dec``
(n, d), ``b_dec``, ``threshold`` (jumprelu); cfg ``architecture`` (standard: ReLU, topk,
jumprelu: ReLU(pre) · H(pre − threshold)), ``d_in``, ``d_sae``, ``k``,
``apply_b_dec_to_input``, ``normalize_activations``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffdict.dictionaries.sae import SparseAutoencoder
from diffdict.errors import DiffdictError
from diffdict.io import load_tensors, read_json

SPARSIFY_WEIGHTS = "sae.safetensors"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"
FOREIGN_CONFIG = "cfg.json"

# SAE Lens architecture -> the diffdict mechanism that encodes like it
SAE_LENS_MECHANISMS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def to_sparsify_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAE Lens names and shapes (W_enc (d, n), b_enc, W_dec, b_dec) -> sparsify's
    (encoder.weight (n, d), encoder.bias, W_dec, b_dec)."""
    return {"encoder.weight": tensors["W_enc"].t().contiguous(), "encoder.bias": tensors["b_enc"],
            "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}


def _require(tensors: dict[str, torch.Tensor], names: list[str], folder: Path) -> None:
    missing = [name for name in names if name not in tensors]
    if missing:
        raise DiffdictError(f"{folder} lacks the tensors {', '.join(missing)}")


def _config(folder: Path) -> dict:
    config = read_json(folder / FOREIGN_CONFIG)
    if not isinstance(config, dict):
        raise DiffdictError(f"{folder / FOREIGN_CONFIG} is not a JSON object")
    return config


def load_sparsify(folder: str | Path) -> SparseAutoencoder:
    folder = Path(folder)
    config = _config(folder)
    tensors = {k: v.float() for k, v in load_tensors(folder / SPARSIFY_WEIGHTS).items()}
    _require(tensors, ["encoder.weight", "encoder.bias", "W_dec", "b_dec"], folder)
    if config.get("activation", "topk") != "topk":
        raise DiffdictError(f"{folder}: sparsify activation {config['activation']!r} is not supported (only topk)")
    if config.get("transcode") or config.get("skip_connection") or "W_skip" in tensors:
        raise DiffdictError(f"{folder}: sparsify transcoders and skip connections are not supported")
    n, d = tensors["encoder.weight"].shape
    if config.get("d_in", d) != d:
        raise DiffdictError(f"{folder}: cfg.json says d_in = {config['d_in']} but encoder.weight is {n}x{d}")
    sae = SparseAutoencoder(d, n, mechanism="topk", mechanism_options={"k": int(config.get("k", 32))})
    sae.load_state_tensors({"W_enc": tensors["encoder.weight"].t(), "b_enc": tensors["encoder.bias"],
                            "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]})
    return sae


def load_sae_lens(folder: str | Path) -> SparseAutoencoder:
    folder = Path(folder)
    config = _config(folder)
    architecture = config.get("architecture", "standard")
    if architecture not in SAE_LENS_MECHANISMS:
        raise DiffdictError(
            f"{folder}: SAE Lens architecture {architecture!r} is not supported; expected one of "
            f"{', '.join(SAE_LENS_MECHANISMS)}"
        )
    normalize = config.get("normalize_activations", "none") or "none"
    if normalize != "none":
        raise DiffdictError(f"{folder}: SAE Lens normalize_activations={normalize!r} is not supported (only 'none')")
    if config.get("rescale_acts_by_decoder_norm"):
        raise DiffdictError(f"{folder}: SAE Lens rescale_acts_by_decoder_norm is not supported")
    tensors = {k: v.float() for k, v in load_tensors(folder / SAE_LENS_WEIGHTS).items()}
    _require(tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], folder)
    d, n = tensors["W_enc"].shape
    if (config.get("d_in", d), config.get("d_sae", n)) != (d, n):
        raise DiffdictError(
            f"{folder}: cfg.json says d_in={config.get('d_in')}, d_sae={config.get('d_sae')} but W_enc is {d}x{n}"
        )
    mechanism = SAE_LENS_MECHANISMS[architecture]
    options = {"k": int(config.get("k", 100))} if mechanism == "topk" else {}
    if mechanism == "jumprelu":
        _require(tensors, ["threshold"], folder)
        if bool((tensors["threshold"] < 0).any()):
            raise DiffdictError(f"{folder}: negative JumpReLU thresholds are not supported")
    sae = SparseAutoencoder(
        d, n, mechanism=mechanism, mechanism_options=options,
        apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        normalize_decoder=False,
    )
    sae.load_state_tensors(tensors)
    return sae


# the folder layouts load_dictionary reads besides its own, tried in order: (label, weights file, loader)
FOREIGN_FORMATS = (("sparsify", SPARSIFY_WEIGHTS, load_sparsify), ("SAE Lens", SAE_LENS_WEIGHTS, load_sae_lens))
