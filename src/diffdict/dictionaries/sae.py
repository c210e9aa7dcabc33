"""One sparse autoencoder with pluggable sparsity (see ``sparsity.py``).

    x_n = (x − input_mean) / input_scale                 input normalisation (buffers)
    pre = (x_n − b_dec) W_enc + b_enc                     b_dec subtracted unless
                                                          apply_b_dec_to_input is off
    z   = mechanism(pre)
    x̂   = (z W_dec + b_dec) · input_scale + input_mean

Saved tensors carry SAE Lens names and shapes: W_enc (d_in, n), b_enc (n,), W_dec
(n, d_in), b_dec (d_in,), plus ``threshold`` where the mechanism has one and
``input_mean`` / ``input_scale``. In memory the encoder parameter is ``W_enc_t`` (n, d_in),
one contiguous row per feature, which the sparse TopK backward reads and writes row by
row; ``W_enc`` is its (d_in, n) transposed view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffdict.dictionaries.base import Dictionary, SparseCodes, copy_tensors, register_kind
from diffdict.dictionaries.fused import sparse_decode, topk_encode
from diffdict.dictionaries.sparsity import make_mechanism
from diffdict.errors import DiffdictError, require_int

NORMALIZATIONS = ("none", "standardise", "scalar")
B_DEC_INITS = ("geometric-median", "mean", "zeros")


def normalization_name(name: str) -> str:
    name = {"standardize": "standardise"}.get(name, name)
    if name not in NORMALIZATIONS:
        raise DiffdictError(f"unknown input normalisation {name!r}; expected one of {', '.join(NORMALIZATIONS)}")
    return name


def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm, started at the mean. points: (N, d) -> (d,)."""
    points = points.double()
    median = points.mean(0)
    # ‖p − m‖² = ‖p‖² − 2 p·m + ‖m‖²: two matrix-vector products an iteration instead of
    # materialising p − m (in float64 the cancellation is far below the tolerance)
    squared_norms = points.pow(2).sum(1)
    for _ in range(iterations):
        squared = (squared_norms - 2 * (points @ median) + median.dot(median)).clamp_min(0)
        weights = 1.0 / squared.sqrt().clamp_min(1e-12)
        updated = (weights @ points) / weights.sum()
        shift = (updated - median).norm()
        median = updated
        if shift <= tol * median.norm().clamp_min(1e-12):
            break
    return median.float()


@dataclass
class TrainingOutput:
    """One training forward: the loss and what the metrics need (all per local batch)."""

    loss: Tensor  # reconstruction + penalty + AuxK, scalar with grad
    sq_error: Tensor  # Σ‖x − x̂‖² over the batch in the activations' own space, detached
    aux_loss: Tensor  # the AuxK term before its coefficient, detached (0 when off)
    penalty: Tensor  # the mechanism's penalty, detached
    l0: Tensor  # mean non-zero codes per token
    fired: Tensor  # (n,) bool: features non-zero on some token


@register_kind
class SparseAutoencoder(Dictionary):
    kind = "sae"

    def __init__(self, d_in: int, n_features: int | None = None, *, expansion: float | None = None,
                 mechanism: str = "topk", mechanism_options: dict[str, Any] | None = None,
                 normalization: str = "none", apply_b_dec_to_input: bool = True, normalize_decoder: bool = True,
                 bf16: bool = False, seed: int = 0):
        super().__init__()
        require_int(d_in, "d_in")
        if n_features is None:
            if expansion is None or not expansion > 0:
                raise DiffdictError(f"give the width or a positive expansion factor, got expansion={expansion!r}")
            n_features = int(round(expansion * d_in))
        require_int(n_features, "width")
        self.d_in, self.n_features = d_in, n_features
        self.mechanism = make_mechanism(mechanism, n_features, **(mechanism_options or {}))
        self.normalization = normalization_name(normalization)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_decoder = bool(normalize_decoder)
        self.bf16 = bool(bf16)

        generator = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(n_features, d_in, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        # W_enc = W_decᵀ / √3: rows of norm 1/√3, the norm of a Kaiming-uniform row (as
        # sparsify starts). Unit rows make the first reconstructions overshoot and train
        # slower: held-out FVU 0.845 against 0.820 after 100 steps of the throughput
        # benchmark (d = 1280, 4x, k = 10).
        self.W_enc_t = nn.Parameter(W_dec / math.sqrt(3))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(d_in))
        self.eval()

    @property
    def W_enc(self) -> Tensor:
        """The encoder, (d_in, n) (a view of ``W_enc_t``)."""
        return self.W_enc_t.t()

    @property
    def decoder_directions(self) -> Tensor:
        return self.W_dec.detach() * self.input_scale

    def config(self) -> dict[str, Any]:
        return {"d_in": self.d_in, "n_features": self.n_features, "mechanism": self.mechanism.name,
                "mechanism_options": self.mechanism.options(), "normalization": self.normalization,
                "apply_b_dec_to_input": self.apply_b_dec_to_input, "normalize_decoder": self.normalize_decoder,
                "bf16": self.bf16}

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec,
                   "input_mean": self.input_mean, "input_scale": self.input_scale, **self.mechanism.tensors()}
        return {name: t.detach() for name, t in tensors.items()}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "SparseAutoencoder":
        # fields an older config omits take the constructor's defaults
        options = ("mechanism_options", "normalization", "apply_b_dec_to_input", "normalize_decoder", "bf16")
        sae = cls(config["d_in"], config["n_features"], mechanism=config["mechanism"],
                  **{name: config[name] for name in options if name in config})
        sae.load_state_tensors(tensors)
        return sae

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        own = {"W_enc": self.W_enc_t.t(), "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec,
               "input_mean": self.input_mean, "input_scale": self.input_scale}
        copy_tensors(own, tensors, "SAE", optional=("input_mean", "input_scale"))
        self.mechanism.load_tensors(tensors)

    def normalize(self, x: Tensor) -> Tensor:
        if self.normalization == "none":
            return x
        return (x - self.input_mean) / self.input_scale

    def denormalize(self, x_n: Tensor) -> Tensor:
        if self.normalization == "none":
            return x_n
        return x_n * self.input_scale + self.input_mean

    def pre_activations(self, x_n: Tensor) -> Tensor:
        return self._centered(x_n) @ self.W_enc + self.b_enc

    def _centered(self, x_n: Tensor) -> Tensor:
        return x_n - self.b_dec if self.apply_b_dec_to_input else x_n

    @property
    def uses_fused_topk(self) -> bool:
        return self.mechanism.topk is not None

    def encode(self, x: Tensor) -> Tensor:
        if self.uses_fused_topk:
            return self.encode_sparse(x).to_dense(self.n_features)
        self.check_input(x)
        return self.mechanism(self.pre_activations(self.normalize(x)))

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        if not self.uses_fused_topk:
            return super().encode_sparse(x)
        self.check_input(x)
        return SparseCodes(*self._topk_encode(self.normalize(x)))

    def _topk_encode(self, x_n: Tensor) -> tuple[Tensor, Tensor]:
        return topk_encode(x_n, self.b_dec if self.apply_b_dec_to_input else None, self.W_enc_t, self.b_enc,
                           self.mechanism.topk, self.bf16)

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        return self.denormalize(self._decode_rows(codes, self.W_dec) + self.b_dec)

    @torch.no_grad()
    def initialize(self, sample: Tensor, b_dec_init: str = "geometric-median") -> float:
        """Set the input normalisation and b_dec from a sample of raw activations (N, d);
        return the variance per token of the normalised sample, E‖x_n − mean‖², which
        the trainer divides the squared error by."""
        self.check_input(sample, "the initialisation sample")
        sample = sample.float()
        if self.normalization == "standardise":
            self.input_mean.copy_(sample.mean(0))
            self.input_scale.copy_(sample.std(0).clamp_min(1e-6))
        elif self.normalization == "scalar":
            self.input_mean.zero_()
            self.input_scale.fill_(float(sample.pow(2).sum(1).mean().div(self.d_in).sqrt().clamp_min(1e-6)))
        x_n = self.normalize(sample)
        if b_dec_init == "geometric-median":
            self.b_dec.copy_(geometric_median(x_n))
        elif b_dec_init == "mean":
            self.b_dec.copy_(x_n.mean(0))
        elif b_dec_init == "zeros":
            self.b_dec.zero_()
        else:
            raise DiffdictError(f"unknown b_dec initialisation {b_dec_init!r}; expected one of {', '.join(B_DEC_INITS)}")
        return float((x_n - x_n.mean(0)).pow(2).sum(1).mean().clamp_min(1e-12))

    def training_forward(self, x_n: Tensor, variance: float, dead_mask: Tensor | None = None,
                         auxk_coef: float = 1 / 32, k_aux: int | None = None,
                         sum_over_ranks: Callable[[Tensor], Tensor] | None = None) -> TrainingOutput:
        """Loss on normalised activations x_n (B, d): Σ‖x_n − x̂_n‖² / (B · variance)
        + penalty + auxk_coef · AuxK, the AuxK term (for mechanisms that support it)
        only when ``dead_mask`` (n,) marks some features dead. Under data parallelism
        ``sum_over_ranks`` sums a tensor over the ranks, so that AuxK is normalised by the
        whole batch's residual variance and N ranks train exactly like one process."""
        B = x_n.shape[0]
        if self.uses_fused_topk:
            values, indices = self._topk_encode(x_n)
            recon = sparse_decode(values, indices, self.W_dec) + self.b_dec
            active = (values > 0).float()
            fired = torch.bincount(indices.reshape(-1), weights=active.reshape(-1), minlength=self.n_features) > 0
            l0 = active.sum(1).mean()
            penalty = recon.new_zeros(())
        else:
            pre = self.pre_activations(x_n)
            codes = self.mechanism(pre)
            recon = codes @ self.W_dec + self.b_dec
            active = codes != 0
            fired = active.any(0)
            l0 = active.sum(1).float().mean()
            penalty = (self.mechanism.penalty(pre, codes, self.W_dec.norm(dim=1))
                       + self.mechanism.reconstruction_penalty(codes, self.W_dec, self.b_dec, x_n) / (B * variance))
        sq_error = F.mse_loss(recon, x_n, reduction="sum")  # one fused pass each way
        loss = sq_error / (B * variance) + penalty
        with torch.no_grad():
            if self.normalization == "standardise":
                sq_error_raw = ((recon - x_n).pow(2).sum(0) * self.input_scale.pow(2)).sum()
            else:
                sq_error_raw = sq_error * self.input_scale[0] ** 2

        aux_loss = recon.new_zeros(())
        if dead_mask is not None and self.mechanism.supports_auxk and auxk_coef > 0:
            dead = dead_mask.nonzero().squeeze(1)
            if dead.numel():
                error = (recon - x_n).detach()
                aux_loss = self._auxk_loss(x_n, error, dead, k_aux or self.d_in // 2, sum_over_ranks)
                loss = loss + auxk_coef * aux_loss
        return TrainingOutput(loss=loss, sq_error=sq_error_raw, aux_loss=aux_loss.detach(), penalty=penalty.detach(),
                              l0=l0.detach(), fired=fired)

    def _auxk_loss(self, x_n: Tensor, error: Tensor, dead: Tensor, k_aux: int,
                   sum_over_ranks: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Σ‖ê − e‖² / Σ‖e − ē‖², ê the reconstruction of the residual e = x − x̂ by the
        top-k_aux dead features (without b_dec). Normalised by the residual's own variance
        (as OpenAI and sparsify do), not the input's: the residual shrinks as training
        goes on, and a loss in input units would fade to nothing just when features die.
        The residual target and the encoder input are detached: AuxK moves the dead
        features' encoder and decoder rows only."""
        n_dead = dead.numel()
        k = min(k_aux, n_dead)
        x_c = self._centered(x_n).detach()
        pre_dead = x_c @ self.W_enc_t[dead].t() + self.b_enc[dead]  # (B, n_dead)
        values, indices = pre_dead.topk(k, dim=-1, sorted=False)
        values = values.relu()
        W_dead = self.W_dec[dead]  # (n_dead, d)
        if 16 * k >= n_dead:  # dense (B, n_dead) product beats gathering k rows per token
            aux_recon = torch.zeros_like(pre_dead).scatter(-1, indices, values) @ W_dead
        else:
            aux_recon = sparse_decode(values, indices, W_dead)
        # The whole batch's residual variance from its sums; each rank's term is scaled by
        # (all tokens / its tokens) so that the mean over ranks is the whole batch's ratio.
        B = error.shape[0]
        sums = torch.cat([error.sum(0), error.pow(2).sum().view(1), error.new_tensor([B])])
        if sum_over_ranks is not None:
            sums = sum_over_ranks(sums)
        total = sums[-1]
        residual_variance = (sums[-2] - sums[:-2].pow(2).sum() / total).clamp_min(1e-12)
        # ``error`` is x̂ − x, so the dead features should reconstruct −error.
        return (aux_recon + error).pow(2).sum() / residual_variance * (total / B)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the component of each decoder row's gradient along the (unit) row."""
        if self.normalize_decoder and self.W_dec.grad is not None:
            grad = self.W_dec.grad
            along = (grad * self.W_dec).sum(1, keepdim=True)  # (n, 1)
            grad.addcmul_(self.W_dec, along, value=-1)

    @torch.no_grad()
    def after_step(self) -> None:
        if self.normalize_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.mechanism.after_step()
