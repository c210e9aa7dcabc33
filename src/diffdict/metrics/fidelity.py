"""Spliced fidelity: how much of the image survives replacing a site by its reconstruction.

Images generated with the site's value replaced by the dictionary's reconstruction
(:class:`~diffdict.interventions.Splice`) against the originals from the same noise:
pixel distances, the perceptual distance, and the drop of the CLIP score between each
image and its prompt (read by the backbone; shapes-clip offline).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from diffdict.capture import capture_mode_of
from diffdict.errors import DiffdictError
from diffdict.hosts import host_for_store, is_real_host
from diffdict.metrics.backbones import Backbone, load_backbone, resolve_backbone
from diffdict.metrics.causal import mean_interval
from diffdict.metrics.image import clip_score, perceptual_distance, pixel_mae, pixel_mse

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.dictionaries import Dictionary
    from diffdict.hosts import HostModel


def spliced_fidelity(host: "HostModel", dictionary: "Dictionary", site: str, prompts: Sequence[str], seed: int = 0,
                     capture: str | None = None, steps: Any = None, num_steps: int | None = None,
                     guidance: float | None = None, backbone: "str | Backbone | None" = "shapes-clip",
                     batch_size: int = 16, detail: bool = False, return_images: bool = False) -> dict[str, Any]:
    """Fidelity of generating with ``site`` spliced by ``dictionary``.

    Returns flat means (floats, ready to merge into reconstruction metrics):
    ``spliced_pixel_mae``, ``spliced_pixel_mse`` and, with a backbone (None skips them),
    ``spliced_perceptual``, ``clip_score_original``, ``clip_score_spliced`` and
    ``clip_score_drop`` (original − spliced CLIP score of each image with its prompt),
    plus ``fidelity_prompts``. ``detail`` adds ``intervals`` (95% t interval per metric)
    and ``per_image``; ``return_images`` adds the ``original`` and ``spliced`` arrays."""
    from diffdict.interventions import Splice, generate

    prompts = list(prompts)
    if not prompts:
        raise DiffdictError("spliced fidelity needs at least one prompt")
    splice = Splice(site, dictionary, capture=capture, steps=steps)
    splice.bind(host, num_steps if num_steps is not None else host.default_steps)  # fail before generating
    kwargs = dict(seed=seed, num_steps=num_steps, guidance=guidance, batch_size=batch_size)
    original = generate(host, prompts, [], **kwargs)
    spliced = generate(host, prompts, [splice], **kwargs)
    return fidelity_metrics(original, spliced, prompts, backbone, detail, return_images)


def fidelity_metrics(original: np.ndarray, spliced: np.ndarray, prompts: Sequence[str],
                     backbone: "str | Backbone | None" = "shapes-clip", detail: bool = False,
                     return_images: bool = False) -> dict[str, Any]:
    """The metrics of :func:`spliced_fidelity` for images already generated."""
    per: dict[str, np.ndarray] = {"spliced_pixel_mae": pixel_mae(original, spliced),
                                  "spliced_pixel_mse": pixel_mse(original, spliced)}
    if backbone is not None:
        model = load_backbone(backbone)
        per["spliced_perceptual"] = perceptual_distance(original, spliced, model)
        per["clip_score_original"] = before = clip_score(original, list(prompts), model)
        per["clip_score_spliced"] = after = clip_score(spliced, list(prompts), model)
        per["clip_score_drop"] = before - after
    out: dict[str, Any] = {name: float(values.mean()) for name, values in per.items()}
    out["fidelity_prompts"] = len(prompts)
    if detail:
        out["intervals"] = {name: dict(zip(("mean", "low", "high"), mean_interval(values)))
                            for name, values in per.items()}
        out["per_image"] = [{name: float(values[i]) for name, values in per.items()} for i in range(len(prompts))]
    if return_images:
        out["original"], out["spliced"] = original, spliced
    return out


def store_fidelity(store: Any, site: str, prompts: int | Sequence[str] = 16, seed: int = 0,
                   backbone: "str | Backbone | None" = "auto", host: "HostModel | None" = None,
                   model_path: str | None = None, batch_size: int = 16) -> Callable[["Dictionary"], dict[str, Any]]:
    """A ``dictionary -> metrics`` function (``diffdict.evaluate``'s ``fidelity``) for
    dictionaries trained on ``site`` of ``store``: generates as the store was made (model,
    denoising steps, guidance, capture mode), splicing at the captured steps, on
    ``prompts`` (a count: test-split prompts of the shapes world for the toy model, a
    seeded sample of the store's own prompts for a real one). ``backbone`` ``auto``:
    shapes-clip on the toy model, the CLIP backbone on real ones when installed (else
    pixel metrics only). The originals are generated once and shared by every dictionary."""
    from diffdict.interventions import Splice, generate
    from diffdict.store import open_store

    if isinstance(store, (str, Path)):
        store = open_store(store)
    settings = store.settings or {}
    generation = settings.get("generation") or {}
    capture_settings = settings.get("capture") or {}
    host = host if host is not None else host_for_store(store, model_path)
    backbone = resolve_backbone(backbone, host.name, what="spliced fidelity's CLIP score")
    if isinstance(prompts, int):
        if prompts < 1:
            raise DiffdictError(f"spliced fidelity needs at least one prompt, got {prompts}")
        own = store.prompts if is_real_host(host.name) else []
        if own:  # a real model's own prompts, not shapes-world captions
            chosen = np.random.default_rng(seed).choice(len(own), size=min(prompts, len(own)), replace=False)
            prompts = [own[int(i)] for i in sorted(chosen)]
        else:
            from diffdict.world import sample_prompts

            prompts = sample_prompts(prompts, seed=seed, split="test")
    prompts = list(prompts)
    capture = capture_mode_of(capture_settings)
    steps = capture_settings.get("steps")
    num_steps, guidance = generation.get("num_steps"), generation.get("guidance")
    kwargs = dict(seed=seed, num_steps=num_steps, guidance=guidance, batch_size=batch_size)
    cache: dict[str, np.ndarray] = {}

    def fidelity(dictionary: "Dictionary") -> dict[str, Any]:
        splice = Splice(site, dictionary, capture=capture if capture != "mlp" else None, steps=steps)
        splice.bind(host, num_steps if num_steps is not None else host.default_steps)
        if "original" not in cache:
            cache["original"] = generate(host, prompts, [], **kwargs)
        spliced = generate(host, prompts, [splice], **kwargs)
        return fidelity_metrics(cache["original"], spliced, prompts, backbone)

    return fidelity


__all__ = ["fidelity_metrics", "spliced_fidelity", "store_fidelity"]
