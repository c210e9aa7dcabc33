"""Causal strength: does an edit make its target concept appear, more than a random edit?

Over many prompts, each image is generated three ways from the same noise: unedited, with
the edit, and with a *random-direction control* — at every token where the edit changes
the site by a vector of norm r, the control changes it by r along a random unit direction
(seeded per prompt, :class:`~diffdict.interventions.RandomDirection`). A backbone reads
the probability p of the target (a shapes-world concept ``color:red``, or an explanation
text) in each image. Per prompt:

    effect  = p(edited) − p(original)       control = p(control) − p(original)
    strength = p(edited) − p(control)

reported as means with a 95% interval (Student t, or a seeded bootstrap), plus the share
of prompts where the edit beat the control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from diffdict.errors import DiffdictError
from diffdict.metrics.backbones import Backbone, as_uint8, load_backbone

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.hosts import HostModel
    from diffdict.interventions import Intervention


def mean_interval(values: Any, method: str = "t", level: float = 0.95, seed: int = 0,
                  resamples: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high): a ``level`` confidence interval of the mean of the finite
    ``values`` (NaN and infinite ones are left out).

    ``t``: Student t (quantile from ``scipy.stats.t``); ``bootstrap``: percentile
    bootstrap with a seeded generator (same seed -> same interval). One value gives
    (v, nan, nan), none (nan, nan, nan)."""
    if not 0 < level < 1:
        raise DiffdictError(f"confidence level must lie in (0, 1), got {level}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    if method == "t":
        from scipy.stats import t

        half = float(t.ppf((1 + level) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
        return mean, mean - half, mean + half
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, x.size, size=(int(resamples), x.size))].mean(1)
        low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return mean, float(low), float(high)
    raise DiffdictError(f"unknown interval method {method!r}; expected t or bootstrap")


@dataclass
class CausalStrength:
    """Per-prompt readings and the summary of a causal-strength measurement."""

    target: str
    original: np.ndarray
    edited: np.ndarray
    control: np.ndarray
    interval: str = "t"
    seed: int = 0
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.summary = summarize(self.original, self.edited, self.control, self.interval, self.seed)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, **self.summary}


def summarize(original: Any, edited: Any, control: Any, interval: str = "t", seed: int = 0) -> dict[str, Any]:
    """Means and intervals of the effect, the control's effect and the strength."""
    o, e, c = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (original, edited, control))
    if not (o.shape == e.shape == c.shape):
        raise DiffdictError(f"readings differ in length: {o.size}, {e.size}, {c.size}")
    out: dict[str, Any] = {"n": int(o.size), "interval": interval}
    for name, values in (("effect", e - o), ("control_effect", c - o), ("strength", e - c)):
        mean, low, high = mean_interval(values, interval, seed=seed)
        out[name] = {"mean": mean, "low": low, "high": high}
    out["win_rate"] = float((e > c).mean()) if o.size else float("nan")
    out["p_original"], out["p_edited"], out["p_control"] = float(o.mean()), float(e.mean()), float(c.mean())
    return out


@torch.no_grad()
def read_target(images: Any, target: str, backbone: "str | Backbone | None" = None, batch_size: int = 64) -> np.ndarray:
    """(N,) the backbone's reading (probability, or CLIP score) of ``target`` in each image."""
    if not isinstance(target, str) or not target.strip():
        raise DiffdictError("a causal-strength target must be a concept like color:red or an explanation text")
    model = load_backbone(backbone)
    images = as_uint8(images)
    parts = [model.read(images[i:i + batch_size], target).reshape(-1).double().cpu()
             for i in range(0, images.shape[0], batch_size)]
    return torch.cat(parts).numpy()


def causal_strength(host: "HostModel", intervention: "Intervention", target: str, prompts: Sequence[str], seed: int = 0,
                    control_seed: int | None = None, backbone: "str | Backbone | None" = None,
                    num_steps: int | None = None, guidance: float | None = None, batch_size: int = 16,
                    interval: str = "t", original: Any = None, edited: Any = None
                    ) -> tuple[CausalStrength, dict[str, np.ndarray]]:
    """Measure how much ``intervention`` raises ``target`` over a random control.

    Returns the result and the images (``original``, ``edited``, ``control``); images
    already generated with the same prompts, seed and settings may be passed in.
    ``control_seed`` (default ``seed``) seeds the random directions."""
    from diffdict.interventions import RandomDirection, generate

    if len(prompts) < 1:
        raise DiffdictError("causal strength needs at least one prompt")
    kwargs = dict(seed=seed, num_steps=num_steps, guidance=guidance, batch_size=batch_size)
    if original is None:
        original = generate(host, prompts, [], **kwargs)
    if edited is None:
        edited = generate(host, prompts, [intervention], **kwargs)
    control = RandomDirection(intervention, seed if control_seed is None else control_seed)
    control_images = generate(host, prompts, [control], **kwargs)
    model = load_backbone(backbone)
    result = CausalStrength(target, read_target(original, target, model), read_target(edited, target, model),
                            read_target(control_images, target, model), interval=interval, seed=seed)
    return result, {"original": np.asarray(original), "edited": np.asarray(edited), "control": control_images}


__all__ = ["CausalStrength", "causal_strength", "mean_interval", "read_target", "summarize"]
