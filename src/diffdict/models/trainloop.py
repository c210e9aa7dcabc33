"""A small resumable training loop shared by the shipped models' training commands.

Every step's data and noise are derived from (seed, step), and the checkpoint holds
the weights, the EMA weights, the optimiser and the step, so a run killed at any moment
and started again continues exactly where its last checkpoint left off.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from diffdict.errors import DiffdictError
from diffdict.io import load_checkpoint, read_json, save_checkpoint, write_json


@dataclass
class LoopConfig:
    steps: int
    lr: float
    seed: int = 0
    warmup: int = 100
    final_lr_fraction: float = 0.05
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    weight_decay: float = 0.0
    bf16: bool = True
    threads: int | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise DiffdictError(f"--steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise DiffdictError(f"--lr must be positive, got {self.lr}")


def lr_at(step: int, cfg: LoopConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * cosine)


def run_training(model: nn.Module, loss_fn: Callable[[nn.Module, int, torch.Generator], torch.Tensor], cfg: LoopConfig,
                 out: str | Path, batch_size: int, export_to: str | Path | None = None, log_every: int = 25,
                 extend: bool = False) -> nn.Module:
    """Train ``model`` (a shipped model) with ``loss_fn(model, step, generator)``;
    checkpoint to ``out/checkpoint.safetensors``; save the EMA model to ``out/model`` (and
    ``export_to``) at every checkpoint and at the end. The settings are stored and must
    match when resuming; with ``extend`` only ``steps`` may differ (a longer schedule
    continued from the last checkpoint)."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    settings = {"model": model.config.to_dict(), "batch_size": batch_size, "lr": cfg.lr, "seed": cfg.seed,
                "steps": cfg.steps}
    out.mkdir(parents=True, exist_ok=True)
    settings_path, checkpoint_path = out / "settings.json", out / "checkpoint.safetensors"
    previous = read_json(settings_path) if settings_path.exists() else None
    if extend and previous is not None:
        previous = {**previous, "steps": settings["steps"]}
    if previous is not None and previous != settings:
        raise DiffdictError(
            f"{out} holds a run with different settings; use a new --out folder or the same settings to resume"
        )
    write_json(settings_path, settings)

    torch.manual_seed(cfg.seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    model.train()

    def export() -> None:
        ema.save_pretrained(out / "model")
        if export_to is not None:
            ema.save_pretrained(export_to)

    def save(step: int) -> None:
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step,
        })
        export()

    log_path = out / "log.jsonl"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", dynamic_ncols=True)
    running, started = None, time.time()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = loss_fn(model, step, generator)
        if not torch.isfinite(loss):
            raise DiffdictError(f"loss became {loss.item()} at step {step}; the last good checkpoint is {checkpoint_path}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr_at(step, cfg):.2e}")
        if (step + 1) % log_every == 0:
            with open(log_path, "a") as handle:
                handle.write(f'{{"step": {step + 1}, "loss": {running:.6f}, "elapsed_s": {time.time() - started:.1f}}}\n')
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
    if start >= cfg.steps:
        export()
    return ema
