"""A block's MLP neurons as a dictionary: the baseline the SAEs and ITDA are compared to.

For an MLP ``out = W_out act(W_in h + b_in) + b_out`` the codes are the k largest neuron
activations of each token (all when k is None), the decoder directions W_outᵀ (n_neurons, d),
the reconstruction Σ_top-k a_i W_out[:, i] + b_out. ``encode(h)`` needs the input projection;
``encode_activations(a)`` takes neuron activations captured elsewhere (``capture``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffdict.dictionaries.base import Dictionary, SparseCodes, register_kind
from diffdict.errors import DiffdictError, require_int

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu-tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@register_kind
class NeuronDictionary(Dictionary):
    kind = "neurons"

    def __init__(self, W_out: Tensor, b_out: Tensor | None = None, *, k: int | None = None, W_in: Tensor | None = None,
                 b_in: Tensor | None = None, activation: str = "gelu-tanh"):
        """W_out: the output projection's weight (d, n_neurons) as in ``nn.Linear``;
        W_in: the input projection's weight (n_neurons, d_mlp_in)."""
        super().__init__()
        if W_out.ndim != 2:
            raise DiffdictError(f"W_out must be (d, n_neurons), got shape {tuple(W_out.shape)}")
        d, n = W_out.shape
        if k is not None:
            require_int(k, "k", 1, n, " (the number of neurons)")
        if activation not in ACTIVATIONS:
            raise DiffdictError(f"unknown MLP activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        if W_in is not None and W_in.shape[0] != n:
            raise DiffdictError(f"W_in has {W_in.shape[0]} rows but W_out has {n} neurons")
        self.k, self.activation = k, activation
        self.register_buffer("W_dec", W_out.detach().float().t().contiguous())  # (n, d)
        self.register_buffer("b_dec", torch.zeros(d) if b_out is None else b_out.detach().float().clone())
        self.register_buffer("W_in", None if W_in is None else W_in.detach().float().clone())
        self.register_buffer("b_in", None if W_in is None else (
            torch.zeros(n) if b_in is None else b_in.detach().float().clone()))
        self.eval()

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    @property
    def n_features(self) -> int:
        return self.W_dec.shape[0]

    @property
    def decoder_directions(self) -> Tensor:
        return self.W_dec

    def config(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "n_features": self.n_features, "k": self.k, "activation": self.activation,
                "has_encoder": self.W_in is not None}

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {"W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.W_in is not None:
            tensors.update(W_in=self.W_in, b_in=self.b_in)
        return tensors

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "NeuronDictionary":
        return cls(tensors["W_dec"].t(), tensors["b_dec"], k=config.get("k"), W_in=tensors.get("W_in"),
                   b_in=tensors.get("b_in"), activation=config.get("activation", "gelu-tanh"))

    def neuron_activations(self, h: Tensor) -> Tensor:
        if self.W_in is None:
            raise DiffdictError("this neuron dictionary has no input projection; pass captured neuron "
                                "activations to encode_activations instead")
        if h.ndim != 2 or h.shape[1] != self.W_in.shape[1]:
            raise DiffdictError(f"MLP inputs have shape {tuple(h.shape)}, expected (tokens, {self.W_in.shape[1]})")
        return ACTIVATIONS[self.activation](F.linear(h.float(), self.W_in, self.b_in))

    def encode_activations(self, activations: Tensor) -> SparseCodes:
        """Top-k of neuron activations (B, n_neurons)."""
        if activations.ndim != 2 or activations.shape[1] != self.n_features:
            raise DiffdictError(
                f"neuron activations have shape {tuple(activations.shape)}, expected (tokens, {self.n_features})"
            )
        k = self.k or self.n_features
        values, indices = activations.float().topk(k, dim=-1, sorted=False)
        return SparseCodes(values, indices)

    def encode_sparse(self, h: Tensor) -> SparseCodes:
        return self.encode_activations(self.neuron_activations(h))

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        return self._decode_rows(codes, self.W_dec) + self.b_dec
