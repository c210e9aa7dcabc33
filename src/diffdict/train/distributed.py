"""The process group under torchrun (gloo on CPU, NCCL on GPU), or a single process:
sums, maxima and gathers over the ranks, and the members' gradients averaged in one
collective."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class _Distributed:
    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started_here = False
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.started_here = True

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (equal-sized) tensor along dim 0, in rank order."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.started_here:
            dist.destroy_process_group()


def _all_reduce_gradients(members: list, comm: _Distributed) -> None:
    """Average every member's gradients over the ranks, in one collective."""
    grads = [g for m in members for g in m.gradients()] if comm.active else []
    if not grads:
        return
    flat = comm.sum_(torch.cat([g.reshape(-1) for g in grads]))
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view(g.shape)).div_(comm.world_size)
