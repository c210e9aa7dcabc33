"""The members of a grid: one SAE and its optimiser, or one ITDA build, each with the
same interface to the loop (forward and backward on a batch, an optimiser step, the
dead-feature counters, and the state a checkpoint holds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffdict.adam import Adam
from diffdict.dictionaries.data import Batch
from diffdict.dictionaries.itda import ITDA
from diffdict.dictionaries.sae import SparseAutoencoder
from diffdict.train.distributed import _Distributed
from diffdict.train.settings import MemberSpec, TrainSettings, _mechanism_option_names, default_lr, lr_at


@dataclass
class StepResult:
    """What a member's forward and backward on one local batch hands to the loop: its
    sums over the batch's tokens (0-d tensors, so that they add up over steps and ranks
    without a host sync)."""

    finite: torch.Tensor  # () bool: the loss is finite
    fired: torch.Tensor  # (n,) bool: features that coded some token (empty for ITDA)
    sq_error: torch.Tensor  # Σ‖x − x̂‖² in input units
    aux_loss: torch.Tensor | float = 0.0  # AuxK loss × tokens
    penalty: torch.Tensor | float = 0.0  # sparsity penalty × tokens
    l0: torch.Tensor | float = 0.0  # codes per token × tokens
    seconds: float = 0.0

    def sums(self) -> torch.Tensor:
        """The sums in the order of the loop's metrics table."""
        return torch.stack([torch.as_tensor(value, dtype=torch.float64, device=self.finite.device)
                            for value in (self.sq_error, self.aux_loss, self.penalty, self.l0)])


class SAEMember:
    logs_idle_intervals = True
    def __init__(self, spec: MemberSpec, settings: TrainSettings, d: int, device: torch.device):
        self.spec, self.settings = spec, settings
        options = spec.options
        mechanism_options = {name: options[name] for name in _mechanism_option_names(spec.arch) if name in options}
        self.model = SparseAutoencoder(d, options.get("width"), expansion=options.get("expansion"), mechanism=spec.arch,
                                       mechanism_options=mechanism_options, normalization=options["normalization"],
                                       bf16=settings.bf16, seed=settings.seed).to(device).train()
        self.auxk = bool(options.get("auxk", False))
        self.lr = options["lr"] if "lr" in options else default_lr(self.model.n_features)
        self.optimizer = Adam(self.model.parameters(), lr=self.lr, fused=device.type in ("cpu", "cuda"))
        self.tokens_since_fired = torch.zeros(self.model.n_features, dtype=torch.long, device=device)
        self.variance = 1.0

    def initialize(self, sample: torch.Tensor) -> None:
        self.variance = self.model.initialize(sample, self.settings.b_dec_init)

    def forward_backward(self, batch: Batch, comm: _Distributed, normalized: dict[str, torch.Tensor]) -> StepResult:
        model = self.model
        # Members with the same input normalisation share its statistics (all are set from
        # the same sample), so the batch is normalised once for them all.
        x_n = normalized.get(model.normalization)
        if x_n is None:
            x_n = normalized[model.normalization] = model.normalize(batch.x)
        dead = self.tokens_since_fired >= self.settings.dead_window if self.auxk else None
        out = model.training_forward(x_n, self.variance, dead, self.settings.auxk_coef, self.settings.k_aux,
                                     sum_over_ranks=comm.sum_ if comm.active else None)
        self.optimizer.zero_grad()
        # A non-finite loss gives non-finite gradients, harmless: the step is refused
        # before the optimiser runs. Checking first would cost a host sync per member.
        out.loss.backward()
        tokens = x_n.shape[0]
        return StepResult(torch.isfinite(out.loss.detach()), out.fired, out.sq_error, aux_loss=out.aux_loss * tokens,
                          penalty=out.penalty * tokens, l0=out.l0 * tokens)

    def gradients(self) -> list[torch.Tensor]:
        for p in self.model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.model.parameters()]

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.lr, self.settings)

    def step(self, step: int, fired: torch.Tensor, tokens: int) -> None:
        self.model.remove_parallel_decoder_grad()
        self.optimizer.lr = self.lr_at(step)
        self.optimizer.step()
        self.model.after_step()
        self.tokens_since_fired.add_(tokens).masked_fill_(fired, 0)

    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired >= self.settings.dead_window).float().mean())

    def log_extras(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "tokens_since_fired": self.tokens_since_fired, "variance": self.variance}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.variance = float(state["variance"])


class ITDAMember:
    logs_idle_intervals = False  # its build ends before the run does: no rows after that
    def __init__(self, spec: MemberSpec, settings: TrainSettings, d: int, device: torch.device):
        self.spec, self.settings = spec, settings
        self.model = ITDA(d, l0=spec.options["l0"], tau=spec.options["tau"], pursuit=settings.pursuit,
                          chunk_tokens=settings.itda_chunk, max_atoms=settings.max_atoms).to(device)
        self.budget = settings.itda_tokens or settings.tokens
        self.tokens_built = 0

    def initialize(self, sample: torch.Tensor) -> None:
        pass

    @property
    def building(self) -> bool:
        return self.tokens_built < self.budget

    def forward_backward(self, batch: Batch, comm: _Distributed, normalized: dict[str, torch.Tensor]) -> StepResult:
        n = batch.x.shape[0]
        nothing_fired = torch.zeros(0, dtype=torch.bool)
        if not self.building:
            return StepResult(torch.tensor(True), nothing_fired, torch.zeros(()))
        x = comm.gather(batch.x)
        labels = {name: comm.gather(value) for name, value in batch.labels.items()}
        recon = self.model.build_step(x, labels)
        local = slice(comm.rank * n, (comm.rank + 1) * n)
        sq_error = (recon[local] - batch.x).pow(2).sum()
        return StepResult(torch.isfinite(sq_error), nothing_fired, sq_error, l0=float(self.model.l0 * n))

    def gradients(self) -> list[torch.Tensor]:
        return []

    def lr_at(self, step: int) -> None:
        return None  # built, not trained by gradient

    def step(self, step: int, fired: torch.Tensor, tokens: int) -> None:
        if self.building:
            self.tokens_built += tokens

    def dead_fraction(self) -> float | None:
        return None

    def log_extras(self) -> dict[str, Any]:
        return {"atoms": self.model.n_features}

    def state(self) -> dict[str, Any]:
        return {"atoms": self.model.atoms, "labels": dict(self.model.labels), "tokens_built": self.tokens_built}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.atoms = state["atoms"].clone()
        self.model.labels = {k: v.clone() for k, v in state["labels"].items()}
        self.model._gram = None
        self.tokens_built = int(state["tokens_built"])
