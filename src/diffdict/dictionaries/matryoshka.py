"""Matryoshka BatchTopK (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries in one.

The features are ordered, and every prefix of them (widths w_1 < w_2 < … < n) is trained
to reconstruct the input on its own: besides the full reconstruction the loss has, for
each inner width w,

    ‖x_n − (z[:, :w] W_dec[:w] + b_dec)‖²

normalised like the main reconstruction error. The early features must then carry the
general concepts, which counters feature absorption (SAEBench's leader on
disentanglement). Codes come from BatchTopK: a batch-wide top k·B while training, the
learned threshold θ at inference (a JumpReLU with one threshold), so it exports to SAE
Lens as a JumpReLU exactly as BatchTopK does.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from diffdict.dictionaries.sparsity import BatchTopK, MechanismFlag, float_list, register
from diffdict.errors import DiffdictError

DEFAULT_PREFIX_FRACTIONS = (0.0625, 0.25)


def prefix_widths(n_features: int, fractions: Any) -> tuple[int, ...]:
    """The inner prefix widths round(f · n), checked to rise strictly within 1..n−1."""
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise DiffdictError(f"prefix_fractions must be a list of numbers in (0, 1), got {fractions!r}") from None
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise DiffdictError(f"prefix_fractions must be one or more numbers in (0, 1), got {list(fractions)}")
    widths = tuple(round(f * n_features) for f in fractions)
    if widths[0] < 1 or any(b <= a for a, b in zip(widths, widths[1:])) or widths[-1] >= n_features:
        raise DiffdictError(
            f"prefix_fractions {list(fractions)} give the prefix widths {list(widths)} of {n_features} features; "
            f"they must rise strictly between 1 and {n_features - 1}"
        )
    return widths


@register
class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK codes; each inner prefix of the dictionary adds its own reconstruction loss."""

    name = "matryoshka-batchtopk"
    flags = {"prefix_fractions": MechanismFlag(
        float_list, "matryoshka-batchtopk: inner prefix widths as fractions of the width, one list "
                    "(default: 0.0625,0.25)", grid=False)}

    def __init__(self, n_features: int, k: int = 32, threshold_decay: float = 0.99,
                 prefix_fractions: Any = DEFAULT_PREFIX_FRACTIONS):
        super().__init__(n_features, k=k, threshold_decay=threshold_decay)
        self.widths = prefix_widths(n_features, prefix_fractions)
        self.prefix_fractions = tuple(float(f) for f in prefix_fractions)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "prefix_fractions": list(self.prefix_fractions)}

    def reconstruction_penalty(self, codes: Tensor, W_dec: Tensor, b_dec: Tensor, x_n: Tensor) -> Tensor:
        # Each prefix's reconstruction is the previous one plus its new block of features.
        recon = b_dec.expand_as(x_n)
        total = codes.new_zeros(())
        start = 0
        for width in self.widths:
            recon = recon + codes[:, start:width] @ W_dec[start:width]
            total = total + (recon - x_n).pow(2).sum()
            start = width
        return total
