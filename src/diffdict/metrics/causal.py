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

# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise DiffdictError("a t interval needs at least 2 values")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054  # Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5), < 1e-4 off for df > 30
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def mean_interval(values: Any, method: str = "t", level: float = 0.95, seed: int = 0,
                  resamples: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high): a ``level`` confidence interval of the mean of ``values``.

    ``t``: Student t (level 0.95 only); ``bootstrap``: percentile bootstrap with a seeded
    generator (same seed -> same interval). One value gives (v, nan, nan)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan")
    if method == "t":
        if abs(level - 0.95) > 1e-12:
            raise DiffdictError(f"the t interval is available at level 0.95 only (got {level}); use the bootstrap")
        half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
        return mean, mean - half, mean + half
    if method == "bootstrap":
        if not 0 < level < 1:
            raise DiffdictError(f"confidence level must lie in (0, 1), got {level}")
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

    def per_prompt(self) -> list[dict[str, float]]:
        return [{"p_original": float(o), "p_edited": float(e), "p_control": float(c)}
                for o, e, c in zip(self.original, self.edited, self.control)]


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


def causal_strength(
    host: "HostModel",
    intervention: "Intervention",
    target: str,
    prompts: Sequence[str],
    seed: int = 0,
    control_seed: int | None = None,
    backbone: "str | Backbone | None" = None,
    num_steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
    interval: str = "t",
    original: Any = None,
    edited: Any = None,
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
    control_images = generate(host, prompts, [RandomDirection(intervention, seed if control_seed is None else control_seed)],
                              **kwargs)
    model = load_backbone(backbone)
    result = CausalStrength(
        target,
        read_target(original, target, model),
        read_target(edited, target, model),
        read_target(control_images, target, model),
        interval=interval,
        seed=seed,
    )
    return result, {"original": np.asarray(original), "edited": np.asarray(edited), "control": control_images}


__all__ = ["CausalStrength", "causal_strength", "mean_interval", "read_target", "summarize", "t_quantile_975"]
