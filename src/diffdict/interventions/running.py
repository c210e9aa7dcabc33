"""Running interventions: their hooks installed on a host for a block, generation under
them, and a feature's icon."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from diffdict.capture import EditHook
from diffdict.errors import DiffdictError, noise_seeds, require_int
from diffdict.feature_stats import FeatureStats
from diffdict.interventions.edits import Icon, Intervention

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.dictionaries import Dictionary
    from diffdict.hosts import HostModel


@contextmanager
def intervene(host: "HostModel", interventions: Sequence[Intervention], num_steps: int | None = None) -> Iterator[None]:
    """Install the interventions' hooks on ``host`` for the block (checked against a
    generation of ``num_steps`` denoising steps; default the host's)."""
    hooks: list[EditHook] = []
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise DiffdictError(f"expected an intervention, got {type(intervention).__name__}")
        hooks.extend(intervention.bind(host, num_steps if num_steps is not None else host.default_steps))
    with host.hooks(hooks):
        yield


def generate(host: "HostModel", prompts: Sequence[str], interventions: Sequence[Intervention] = (), seed: int = 0,
             seeds: Sequence[int] | None = None, num_steps: int | None = None, guidance: float | None = None,
             batch_size: int = 16) -> np.ndarray:
    """uint8 images (N, H, W, 3) of ``prompts`` under ``interventions`` (none: the
    originals). Image i starts from the noise of seed ``seed + i`` (or ``seeds[i]``)."""
    prompts = list(prompts)
    seeds = noise_seeds(prompts, seed, seeds)
    require_int(batch_size, "batch size")
    num_steps = host.default_steps if num_steps is None else int(num_steps)
    out = []
    with intervene(host, interventions, num_steps):
        for start in range(0, len(prompts), batch_size):
            rows = range(start, min(start + batch_size, len(prompts)))
            for intervention in interventions:
                intervention.set_batch(rows)
            try:
                out.append(host.generate(prompts[rows.start:rows.stop], seeds=seeds[rows.start:rows.stop],
                                         steps=num_steps, guidance=guidance))
            finally:
                for intervention in interventions:
                    intervention.set_batch(None)
    return np.concatenate(out)


def feature_icon(host: "HostModel", site: str, dictionary: "Dictionary", feature: int, strength: float = 1.0,
                 activation: float | None = None, stats: FeatureStats | None = None, count: int = 1, seed: int = 0,
                 num_steps: int | None = None, guidance: float | None = None, steps: Any = None,
                 capture: str | None = None) -> np.ndarray:
    """The feature's visualisation: ``count`` images of the empty prompt with the site's
    value replaced by the feature direction at its typical magnitude."""
    icon = Icon(site, dictionary, feature, strength, activation=activation, stats=stats, steps=steps, capture=capture)
    return generate(host, [""] * count, [icon], seed=seed, num_steps=num_steps, guidance=guidance)
