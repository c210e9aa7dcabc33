"""ITDA (Leask et al. 2025): a dictionary of real, normalised activations.

Build: activations arrive in chunks of as many tokens as the dictionary has atoms (1, 2,
4, ... up to ``chunk_tokens``, so the first, most typical activations seed it without a
burst of near-duplicates); each chunk is encoded with ``l0`` pursuit steps on the current
dictionary, and every activation whose normalised error ‖x − x̂‖² / ‖x‖² exceeds τ is added,
divided by its norm, as a new atom labelled with its source (token index, or prompt id /
denoising step / row / col when the caller knows them).

Encode: ``mp`` — signed matching pursuit: ``l0`` times pick the atom with the largest
|⟨r, D_j⟩|, add ⟨r, D_j⟩ to its code (an atom picked twice adds up) and subtract it from the
residual r; ``gp`` — non-negative gradient pursuit (the Flux paper's variant): pick the atom
with the largest positive correlation, take an exact line-search gradient step on all chosen
codes and clip them at zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from diffdict.dictionaries.base import Dictionary, SparseCodes, register_kind
from diffdict.errors import DiffdictError, require_int

PURSUITS = ("mp", "gp")
# Above this many atoms matching pursuit recomputes correlations instead of keeping the
# (m, m) Gram matrix (16k atoms: 1 GiB).
GRAM_LIMIT = 16384


def _zero_codes(x: Tensor, l0: int) -> SparseCodes:
    return SparseCodes(x.new_zeros(x.shape[0], l0), torch.zeros(x.shape[0], l0, dtype=torch.long, device=x.device))


def matching_pursuit(x: Tensor, atoms: Tensor, l0: int, gram: Tensor | None = None) -> SparseCodes:
    """Signed matching pursuit of x (B, d) on unit-norm atoms (m, d): codes (B, l0).

    With the Gram matrix atoms atomsᵀ the correlations are updated in place
    (c ← c − a · G[j]) instead of recomputed: one (B, d) × (d, m) product in all.
    """
    values, indices = codes = _zero_codes(x, l0)
    if atoms.shape[0] == 0:
        return codes
    rows = torch.arange(x.shape[0], device=x.device)
    residual = None if gram is not None else x.clone()
    corr = x @ atoms.t()  # (B, m)
    for step in range(l0):
        best = corr.abs().argmax(1)  # (B,)
        coef = corr[rows, best]
        values[:, step], indices[:, step] = coef, best
        if gram is not None:
            corr -= coef.unsqueeze(1) * gram[best]
        else:
            residual -= coef.unsqueeze(1) * atoms[best]
            corr = residual @ atoms.t()
    return codes


def gradient_pursuit(x: Tensor, atoms: Tensor, l0: int) -> SparseCodes:
    """Non-negative gradient pursuit of x (B, d) on unit-norm atoms (m, d): codes (B, l0)."""
    values, indices = codes = _zero_codes(x, l0)
    if atoms.shape[0] == 0:
        return codes
    residual = x.clone()
    for step in range(l0):
        corr = residual @ atoms.t()
        indices[:, step] = corr.argmax(1)
        chosen = atoms[indices[:, : step + 1]]  # (B, s, d)
        grad = torch.bmm(chosen, residual.unsqueeze(2)).squeeze(2)  # (B, s) = −∂½‖r‖²/∂codes
        along = torch.bmm(grad.unsqueeze(1), chosen).squeeze(1)  # (B, d)
        step_size = grad.pow(2).sum(1) / along.pow(2).sum(1).clamp_min(1e-30)
        values[:, : step + 1] += step_size.unsqueeze(1) * grad
        values.clamp_(min=0)
        residual = x - torch.bmm(values[:, : step + 1].unsqueeze(1), chosen).squeeze(1)
    return codes


@register_kind
class ITDA(Dictionary):
    kind = "itda"

    def __init__(self, d_in: int, *, l0: int = 10, tau: float = 0.3, pursuit: str = "mp", chunk_tokens: int = 256,
                 max_atoms: int | None = None, atoms: Tensor | None = None, labels: dict[str, Tensor] | None = None):
        super().__init__()
        require_int(d_in, "d_in")
        require_int(l0, "ITDA l0")
        if not 0 <= tau <= 1:
            raise DiffdictError(f"ITDA tau is a normalised error and must lie in [0, 1], got {tau}")
        if pursuit not in PURSUITS:
            raise DiffdictError(f"unknown ITDA pursuit {pursuit!r}; expected one of {', '.join(PURSUITS)}")
        if max_atoms is not None and max_atoms < 1:
            raise DiffdictError(f"max_atoms must be positive, got {max_atoms}")
        self.d_in = d_in
        self.l0, self.tau, self.pursuit = l0, float(tau), pursuit
        self.chunk_tokens = int(chunk_tokens)
        self.max_atoms = max_atoms
        self.register_buffer("atoms", torch.zeros(0, d_in) if atoms is None else atoms.float().clone())
        self.labels: dict[str, Tensor] = {k: v.long().clone() for k, v in (labels or {}).items()}
        self._gram: Tensor | None = None
        self.eval()

    @property
    def n_features(self) -> int:
        return self.atoms.shape[0]

    @property
    def decoder_directions(self) -> Tensor:
        return self.atoms

    def config(self) -> dict[str, Any]:
        return {
            "d_in": self.d_in, "n_features": self.n_features, "l0": self.l0, "tau": self.tau,
            "pursuit": self.pursuit, "chunk_tokens": self.chunk_tokens, "max_atoms": self.max_atoms,
            "labels": sorted(self.labels),
        }

    def state_tensors(self) -> dict[str, Tensor]:
        return {"atoms": self.atoms, **{f"labels.{name}": value for name, value in self.labels.items()}}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "ITDA":
        atoms = tensors["atoms"]
        if atoms.ndim != 2 or atoms.shape[1] != config["d_in"]:
            raise DiffdictError(f"ITDA atoms have shape {tuple(atoms.shape)}, expected (n, {config['d_in']})")
        labels = {name: tensors[f"labels.{name}"] for name in config.get("labels", [])}
        return cls(config["d_in"], l0=config["l0"], tau=config["tau"], pursuit=config["pursuit"],
                   chunk_tokens=config.get("chunk_tokens", 256), max_atoms=config.get("max_atoms"),
                   atoms=atoms, labels=labels)

    def _gram_matrix(self) -> Tensor | None:
        if self.n_features > GRAM_LIMIT:
            return None
        if self._gram is None or self._gram.shape[0] != self.n_features:
            self._gram = self.atoms @ self.atoms.t()
        return self._gram

    @torch.no_grad()
    def encode_sparse(self, x: Tensor) -> SparseCodes:
        self.check_input(x)
        x = x.float()
        if self.pursuit == "mp":
            return matching_pursuit(x, self.atoms, self.l0, self._gram_matrix())
        return gradient_pursuit(x, self.atoms, self.l0)

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        if isinstance(codes, SparseCodes) and self.n_features == 0:
            return codes.values.new_zeros(codes.values.shape[0], self.d_in)
        return self._decode_rows(codes, self.atoms)

    @torch.no_grad()
    def add_atoms(self, vectors: Tensor, labels: dict[str, Tensor] | None = None) -> int:
        """Append the given activations (m, d), normalised, with their labels; return m."""
        norms = vectors.norm(dim=1, keepdim=True)
        keep = norms.squeeze(1) > 0
        if self.max_atoms is not None:
            room = max(0, self.max_atoms - self.n_features)
            keep &= keep.cumsum(0) <= room
        new = vectors[keep] / norms[keep]
        if not new.shape[0]:
            return 0
        labels = {name: value[keep] for name, value in (labels or {}).items()}
        count = self.n_features
        for name in set(self.labels) | set(labels):
            old = self.labels.get(name, torch.full((count,), -1, dtype=torch.long))
            added = labels.get(name, torch.full((new.shape[0],), -1, dtype=torch.long))
            self.labels[name] = torch.cat([old, added.long().to(old.device)])
        gram = self._gram if self._gram is not None and self._gram.shape[0] == count else None
        self.atoms = torch.cat([self.atoms, new])
        if gram is not None and self.n_features <= GRAM_LIMIT:
            cross = new @ self.atoms.t()  # (m_new, m_total)
            self._gram = torch.cat([torch.cat([gram, cross[:, :count].t()], 1), cross])
        else:
            self._gram = None
        return new.shape[0]

    @torch.no_grad()
    def build_step(self, x: Tensor, labels: dict[str, Tensor] | None = None) -> Tensor:
        """Grow the dictionary from a batch x (B, d); labels name → (B,) ints.

        Returns each token's reconstruction (B, d) by the dictionary as it was just
        before the token's chunk was added (an online estimate of the error)."""
        self.check_input(x)
        x = x.float()
        recon = torch.zeros_like(x)
        start = 0
        while start < x.shape[0]:
            stop = start + max(1, min(self.chunk_tokens, self.n_features))
            chunk = x[start:stop]
            recon[start:stop] = chunk_recon = self.decode(self.encode_sparse(chunk))
            if self.max_atoms is None or self.n_features < self.max_atoms:
                error = (chunk - chunk_recon).pow(2).sum(1) / chunk.pow(2).sum(1).clamp_min(1e-30)
                candidates = error > self.tau
                if candidates.any():
                    self.add_atoms(chunk[candidates], {k: v[start:stop][candidates] for k, v in (labels or {}).items()})
            start = stop
        return recon
