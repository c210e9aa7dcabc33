"""Adam for the trainer, without ``torch.optim``.

``torch.optim.Optimizer`` imports ``torch._dynamo`` the first time one is built: 3 s of
a process that trains a toy-scale dictionary for a few seconds. This is the same
algorithm (Kingma & Ba, PyTorch's defaults: no weight decay, bias-corrected moments, eps
added after the square root), run by PyTorch's fused kernel where it exists, with a
``state_dict`` laid out like ``torch.optim.Adam``'s, so checkpoints written by either
load into the other.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

_FUSED = getattr(torch, "_fused_adam_", None)


class Adam:
    def __init__(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, fused: bool = True):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, tuple(betas), eps
        self.fused = fused and _FUSED is not None
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # per parameter, as float tensors (what the fused kernel reads); a parameter
        # without a gradient is skipped and its count does not move, as in torch.optim
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        beta1, beta2 = self.betas
        if self.fused:
            steps = [self.steps[i] for i in live]
            torch._foreach_add_(steps, 1)
            _FUSED([self.params[i] for i in live], [self.params[i].grad for i in live],
                   [self.exp_avg[i] for i in live], [self.exp_avg_sq[i] for i in live], [], steps,
                   lr=self.lr, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                   maximize=False)
            return
        for i in live:
            p, grad, m, v = self.params[i], self.params[i].grad, self.exp_avg[i], self.exp_avg_sq[i]
            self.steps[i] += 1
            t = float(self.steps[i])
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(self.eps)
            p.addcdiv_(m, denominator, value=-self.lr / (1 - beta1 ** t))

    def state_dict(self) -> dict[str, Any]:
        state = {i: {"step": self.steps[i], "exp_avg": self.exp_avg[i], "exp_avg_sq": self.exp_avg_sq[i]}
                 for i in range(len(self.params)) if float(self.steps[i]) > 0}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0, "amsgrad": False,
                 "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.lr = state_dict["param_groups"][0]["lr"]
        for i, own in enumerate(zip(self.steps, self.exp_avg, self.exp_avg_sq)):
            saved = state_dict["state"].get(i)
            for name, tensor in zip(("step", "exp_avg", "exp_avg_sq"), own):
                if saved is None:
                    tensor.zero_()
                else:
                    tensor.copy_(saved[name])
