"""Sparsity mechanisms: the function from pre-activations to codes, and its penalty.

Each mechanism is a small ``nn.Module`` registered in ``MECHANISMS`` under its name (one
class plus one ``@register`` line). Conventions shared by all mechanisms:

* ``forward(pre)`` uses training semantics when ``self.training`` and inference
  semantics otherwise (only BatchTopK differs: a batch-wide top-k while training, a
  learned threshold at inference).
* ``penalty(pre, codes, decoder_norms)`` is the per-token mean of the sparsity loss
  term; ``reconstruction_penalty(codes, W_dec, b_dec, x_n)`` the squared error of any
  further reconstruction the mechanism trains (Matryoshka's prefixes, ``matryoshka.py``).
* ``options()`` is the JSON-able configuration; ``tensors()`` the state saved next to the
  SAE weights under SAE Lens names (``threshold``); ``load_tensors`` takes it back.
* ``topk`` is set on mechanisms that keep exactly k codes per token, which lets the
  SAE use the fused sparse encoder (``fused.py``).
* ``flags`` declares constructor options that ``diffdict train`` offers as flags and
  :class:`~diffdict.train.TrainSettings` carries in ``mechanism_options``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from diffdict.dictionaries.base import copy_tensors
from diffdict.errors import DiffdictError, require_int

MECHANISMS: dict[str, type["Mechanism"]] = {}


def register(cls: type["Mechanism"]) -> type["Mechanism"]:
    MECHANISMS[cls.name] = cls
    return cls


def make_mechanism(name: str, n_features: int, **options: Any) -> "Mechanism":
    if name not in MECHANISMS:
        raise DiffdictError(f"unknown sparsity mechanism {name!r}; expected one of {', '.join(sorted(MECHANISMS))}")
    return MECHANISMS[name](n_features, **options)


def _k_within(k: Any, n_features: int) -> int:
    k = require_int(k, "k")
    if k > n_features:
        raise DiffdictError(f"k = {k} is larger than the dictionary width {n_features}")
    return k


def _non_negative(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DiffdictError(f"{name} must be a number, got {value!r}") from None
    if not value >= 0:
        raise DiffdictError(f"{name} must be >= 0, got {value}")
    return value


@dataclass(frozen=True)
class MechanismFlag:
    """A constructor option offered by ``diffdict train`` as ``--<name>``: ``parse`` turns
    one value's text into the value (raising ValueError on bad text). With ``grid``
    comma-separated values are alternatives (``--k 5,10``); without, the text is one value."""

    parse: Callable[[str], Any]
    help: str
    grid: bool = True


def float_list(text: str) -> list[float]:
    """Comma-separated numbers, one value (a ``MechanismFlag`` parser)."""
    return [float(part) for part in text.split(",") if part.strip()]


class Mechanism(nn.Module):
    name: ClassVar[str]
    supports_auxk: ClassVar[bool] = False
    flags: ClassVar[dict[str, MechanismFlag]] = {}  # options that get a `train` flag (see the module doc)
    topk: int | None = None

    def __init__(self, n_features: int):
        super().__init__()
        self.n_features = n_features

    def options(self) -> dict[str, Any]:
        return {}

    def penalty(self, pre: Tensor, codes: Tensor, decoder_norms: Tensor) -> Tensor:
        return codes.new_zeros(())

    def reconstruction_penalty(self, codes: Tensor, W_dec: Tensor, b_dec: Tensor, x_n: Tensor) -> Tensor:
        """Σ squared error of further reconstructions besides the full one (not called on the
        fused ``topk`` path); the SAE normalises it like the main reconstruction error."""
        return codes.new_zeros(())

    def tensors(self) -> dict[str, Tensor]:
        """The mechanism's ``threshold`` (buffer or parameter) when it has one."""
        return {"threshold": self.threshold} if hasattr(self, "threshold") else {}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        copy_tensors(self.tensors(), tensors, self.name)

    @torch.no_grad()
    def after_step(self) -> None:
        """Project parameters back into their domain after an optimiser step."""


@register
class TopK(Mechanism):
    """z = ReLU(TopK_k(pre)) per token (Gao et al. 2024)."""

    name = "topk"
    supports_auxk = True

    def __init__(self, n_features: int, k: int = 32):
        super().__init__(n_features)
        self.topk = _k_within(k, n_features)

    def options(self) -> dict[str, Any]:
        return {"k": self.topk}

    def forward(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.topk, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def _batch_cutoff(acts: Tensor, count: int) -> Tensor:
    """The count-th largest of acts: under torch.distributed, of every rank's acts
    together (count per rank), so that data-parallel training keeps the top k·B of the
    global batch as one process would. Every rank holds an equal share of the batch (the
    trainer splits it evenly), so every rank's candidates have the same size."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    top = acts.topk(min(count * world, acts.numel()), sorted=False).values
    if world > 1:
        parts = [torch.empty_like(top) for _ in range(world)]
        dist.all_gather(parts, top)
        top = torch.cat(parts)
    return top.topk(min(count * world, top.numel()), sorted=False).values.min()


@register
class BatchTopK(Mechanism):
    """Training: keep the k·B largest ReLU(pre) of the whole batch (Bussmann et al. 2024).

    Inference: z = ReLU(pre) · H(pre − θ), θ an exponential moving average of the
    smallest activation kept in each training batch (a JumpReLU with one threshold).
    Ties at the cutoff are all kept.
    """

    name = "batchtopk"
    supports_auxk = True

    def __init__(self, n_features: int, k: int = 32, threshold_decay: float = 0.99):
        super().__init__(n_features)
        self.k = _k_within(k, n_features)
        self.threshold_decay = float(threshold_decay)
        # Negative until the first training batch sets it.
        self.register_buffer("threshold", torch.full((1,), -1.0))

    def options(self) -> dict[str, Any]:
        return {"k": self.k, "threshold_decay": self.threshold_decay}

    def forward(self, pre: Tensor) -> Tensor:
        acts = pre.relu()
        if not self.training:
            return acts * (pre > self.threshold.clamp_min(0))
        with torch.no_grad():
            cutoff = _batch_cutoff(acts.detach().flatten(), self.k * pre.shape[0])
            if cutoff > 0:
                if self.threshold.item() < 0:
                    self.threshold.fill_(cutoff)
                else:
                    self.threshold.mul_(self.threshold_decay).add_((1 - self.threshold_decay) * cutoff)
        return acts * (acts >= cutoff)


@register
class ReLUL1(Mechanism):
    """z = ReLU(pre); penalty λ Σ_i z_i ‖W_dec,i‖ (Bricken et al. 2023, norm-weighted)."""

    name = "relu-l1"

    def __init__(self, n_features: int, l1: float = 1e-3):
        super().__init__(n_features)
        self.l1 = _non_negative("l1", l1)

    def options(self) -> dict[str, Any]:
        return {"l1": self.l1}

    def forward(self, pre: Tensor) -> Tensor:
        return pre.relu()

    def penalty(self, pre: Tensor, codes: Tensor, decoder_norms: Tensor) -> Tensor:
        if self.l1 == 0:
            return codes.new_zeros(())
        return self.l1 * (codes * decoder_norms).sum(-1).mean()


@register
class ReLU(ReLUL1):
    """z = ReLU(pre) with no penalty: the control."""

    name = "relu"

    def __init__(self, n_features: int):
        super().__init__(n_features, l1=0.0)

    def options(self) -> dict[str, Any]:
        return {}


@register
class SoftThreshold(ReLUL1):
    """z = ReLU(pre − θ), θ ≥ 0 per feature, learned or fixed (shrinkage); optional L1."""

    name = "soft-threshold"

    def __init__(self, n_features: int, theta: float = 0.1, learn_theta: bool = False, l1: float = 0.0):
        super().__init__(n_features, l1=l1)
        self.learn_theta = bool(learn_theta)
        self.theta = _non_negative("theta", theta)
        initial = torch.full((n_features,), self.theta)
        if self.learn_theta:
            self.threshold = nn.Parameter(initial)
        else:
            self.register_buffer("threshold", initial)

    def options(self) -> dict[str, Any]:
        return {"theta": self.theta, "learn_theta": self.learn_theta, "l1": self.l1}

    def forward(self, pre: Tensor) -> Tensor:
        return (pre - self.threshold).relu()

    @torch.no_grad()
    def after_step(self) -> None:
        if self.learn_theta:
            self.threshold.clamp_(min=0)


class _JumpFunction(torch.autograd.Function):
    """JumpReLU pre · H(pre − θ): ∂/∂pre = H(pre − θ), ∂/∂θ = −(θ/ε) K((pre − θ)/ε)
    (rectangle K); with ``step`` the step H(pre − θ): ∂/∂pre = 0, ∂/∂θ = −(1/ε) K(...)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float, step: bool) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.step = bandwidth, step
        return (pre > threshold).to(pre.dtype) if step else pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = None if ctx.step else grad * (pre > threshold)
        scale = 1.0 / eps if ctx.step else threshold / eps
        u = (pre - threshold) / eps
        grad_threshold = -scale * ((u > -0.5) & (u < 0.5)).to(u.dtype) * grad  # rectangle kernel K(u)
        return grad_pre, grad_threshold.sum(0), None, None


@register
class JumpReLU(Mechanism):
    """z = pre · H(pre − θ), θ learned per feature through straight-through
    pseudo-derivatives (rectangle kernel, bandwidth ε); L0 penalty λ Σ_i H(pre_i − θ_i)
    (Rajamanoharan et al. 2024)."""

    name = "jumprelu"

    def __init__(self, n_features: int, l0_coef: float = 1e-3, theta: float = 1e-3, bandwidth: float = 1e-3):
        super().__init__(n_features)
        self.l0_coef = _non_negative("l0_coef", l0_coef)
        self.bandwidth = _non_negative("bandwidth", bandwidth)
        if self.bandwidth == 0:
            raise DiffdictError("bandwidth must be > 0")
        self.theta = _non_negative("theta", theta)
        self.threshold = nn.Parameter(torch.full((n_features,), self.theta))

    def options(self) -> dict[str, Any]:
        return {"l0_coef": self.l0_coef, "theta": self.theta, "bandwidth": self.bandwidth}

    def forward(self, pre: Tensor) -> Tensor:
        return _JumpFunction.apply(pre, self.threshold, self.bandwidth, False)

    def penalty(self, pre: Tensor, codes: Tensor, decoder_norms: Tensor) -> Tensor:
        if self.l0_coef == 0:
            return pre.new_zeros(())
        return self.l0_coef * _JumpFunction.apply(pre, self.threshold, self.bandwidth, True).sum(-1).mean()

    @torch.no_grad()
    def after_step(self) -> None:
        self.threshold.clamp_(min=0)
