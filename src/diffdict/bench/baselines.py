"""The two baselines every benchmark number is reported against, of the dictionary's shape:
**random-init**, the same architecture and width untrained, initialised as the trainer does
(input normalisation and b_dec from a sample of the site; a dictionary that is not an SAE gets
a TopK SAE of its width with k = its L0), and the **raw basis**, the site's standardised
dimensions, each sign a feature (2d features, dense): the basis a dictionary must beat.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffdict.dictionaries.base import Dictionary, SparseCodes


class RawBasis(Dictionary):
    """Codes ReLU(±(x − μ)/σ) per dimension: feature 2i is dimension i up, 2i + 1 down."""

    kind = "raw-basis"

    def __init__(self, mean: Tensor, scale: Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("scale", scale.float().clamp_min(1e-6))

    @property
    def d_in(self) -> int:
        return self.mean.numel()

    @property
    def n_features(self) -> int:
        return 2 * self.d_in

    @property
    def decoder_directions(self) -> Tensor:
        eye = torch.diag(self.scale)
        return torch.stack([eye, -eye], 1).reshape(self.n_features, self.d_in)

    def encode(self, x: Tensor) -> Tensor:
        z = (x.float() - self.mean) / self.scale
        return torch.stack([z, -z], -1).reshape(x.shape[0], -1).clamp_min(0.0)

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        if isinstance(codes, SparseCodes):
            codes = codes.to_dense(self.n_features)
        return codes.float() @ self.decoder_directions + self.mean

    def config(self) -> dict[str, Any]:
        return {"d_in": self.d_in}

    def state_tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "scale": self.scale}


def site_sample(store, site: str, tokens: int = 16384, seed: int = 0, block: int = 65536) -> Tensor:
    """A seeded random sample of the site's raw activations (N, d)."""
    total = store.num_tokens(site)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(total, generator=generator)[: min(tokens, total)].sort().values
    parts = []
    for start in range(0, total, block):
        inside = index[(index >= start) & (index < start + block)]
        if inside.numel():
            x, _ = store.read(site, start, min(start + block, total))
            parts.append(x.float()[inside - start])
    return torch.cat(parts)


def random_init_twin(dictionary: Dictionary, sample: Tensor, seed: int = 0, l0: float | None = None) -> Dictionary:
    """An untrained dictionary of ``dictionary``'s architecture and width (see the module docstring)."""
    from diffdict.dictionaries import SparseAutoencoder

    if isinstance(dictionary, SparseAutoencoder):
        config = dictionary.config()
        twin = SparseAutoencoder(config["d_in"], config["n_features"], mechanism=config["mechanism"],
                                 mechanism_options=config["mechanism_options"],
                                 normalization=config["normalization"], seed=seed + 1)
    else:
        k = max(1, int(round(l0 if l0 is not None else getattr(dictionary, "k", None) or 10)))
        twin = SparseAutoencoder(dictionary.d_in, dictionary.n_features, mechanism="topk",
                                 mechanism_options={"k": min(k, dictionary.n_features)}, normalization="standardise",
                                 seed=seed + 1)
    twin.initialize(sample)
    return twin


def raw_basis(sample: Tensor) -> RawBasis:
    return RawBasis(sample.mean(0), sample.std(0))


__all__ = ["RawBasis", "random_init_twin", "raw_basis", "site_sample"]
