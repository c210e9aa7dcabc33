"""Intervention experiments: generate with and without an edit, measure what changed
(:func:`run_intervention`, with 95% intervals), or remove each site's update in turn
(:func:`block_ablation`). The ``diffdict intervene`` and ``ablate-block`` commands are
thin layers over these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from diffdict.errors import DiffdictError
from diffdict.interventions.edits import Ablate, Intervention
from diffdict.interventions.running import generate
from diffdict.io import write_json
from diffdict.metrics.backbones import Backbone, load_backbone, resolve_backbone
from diffdict.metrics.causal import causal_strength, mean_interval, read_target
from diffdict.metrics.image import clip_score, perceptual_distance, pixel_mae
from diffdict.metrics.locality import change_map, manhattan_locality
from diffdict.world import FAMILIES
from diffdict.world.phrases import concept_text

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.hosts import HostModel


def _finite(value: Any) -> Any:
    """JSON-safe: NaN / inf become None, numpy scalars plain floats."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _aggregate(per: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {name: dict(zip(("mean", "low", "high"), mean_interval(values))) for name, values in per.items()}


@dataclass
class InterventionReport:
    prompts: list[str]
    seed: int
    intervention: dict[str, Any]
    original: np.ndarray
    edited: np.ndarray
    mask_grid: np.ndarray  # (rows, cols) token weights (ones without a mask)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    aggregate: dict[str, Any] = field(default_factory=dict)
    causal: dict[str, Any] | None = None
    control: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        rows = [{"prompt": prompt, "seed": self.seed + i, **{k: values[i] for k, values in self.per_image.items()}}
                for i, prompt in enumerate(self.prompts)]
        return _finite({"intervention": self.intervention, "settings": self.settings, "per_image": rows,
                        "aggregate": self.aggregate, "causal_strength": self.causal})


def run_intervention(host: "HostModel", intervention: Intervention, prompts: Sequence[str], seed: int = 0,
                     num_steps: int | None = None, guidance: float | None = None, target: str | None = None,
                     backbone: "str | Backbone | None" = "shapes-clip", control: bool = True,
                     control_seed: int | None = None, batch_size: int = 16,
                     locality_threshold: float = 0.0) -> InterventionReport:
    """Generate ``prompts`` with and without ``intervention`` and measure the difference.

    With a ``target`` (a concept ``color:red`` or an explanation text) and a backbone, adds
    its probability before / after, the CLIP similarity of the edited images with it, and
    (``control``) causal strength against a random direction of equal norm (seeded by
    ``control_seed``, default ``seed``). ``backbone=None`` keeps to pixel metrics."""
    prompts = list(prompts)
    if not prompts:
        raise DiffdictError("no prompts to intervene on")
    # every check before the first image: on a real model generation is the expensive part
    intervention.bind(host, num_steps if num_steps is not None else host.default_steps)
    if target is not None and backbone is None:
        raise DiffdictError("a target needs a backbone to read it")
    backbone = resolve_backbone(backbone, host.name, needed=target is not None)
    model = load_backbone(backbone) if backbone is not None else None
    if target is not None:
        blank = np.zeros((1, *host.image_size, 3), dtype=np.uint8)
        read_target(blank, target, model)  # an unknown concept or word fails here
        clip_score(blank, concept_text(target), model)
    kwargs = dict(seed=seed, num_steps=num_steps, guidance=guidance, batch_size=batch_size)
    original = generate(host, prompts, [], **kwargs)
    edited = generate(host, prompts, [intervention], **kwargs)
    info, weights = intervention.info, intervention.weights
    grid = np.ones(info.grid) if weights is None else weights.numpy().reshape(info.grid)
    locality = manhattan_locality(original, edited, grid, threshold=locality_threshold)
    per: dict[str, np.ndarray] = {"pixel_mae": pixel_mae(original, edited), "locality_distance": locality["distance"],
                                  "inside_share": locality["inside_share"], "total_change": locality["total_change"]}
    causal = control_images = None
    if model is not None:
        per["perceptual"] = perceptual_distance(original, edited, model)
        if target is not None:
            text = concept_text(target)
            per["clip_explanation_original"] = clip_score(original, text, model)
            per["clip_explanation_edited"] = clip_score(edited, text, model)
            if control:
                result, images = causal_strength(host, intervention, target, prompts, control_seed=control_seed,
                                                 backbone=model, original=original, edited=edited, **kwargs)
                per["p_target_original"], per["p_target_edited"] = result.original, result.edited
                per["p_target_control"] = result.control
                causal = result.to_json()
                control_images = images["control"]
            else:
                per["p_target_original"] = read_target(original, target, model)
                per["p_target_edited"] = read_target(edited, target, model)
    settings = {"seed": seed, "num_steps": num_steps if num_steps is not None else host.default_steps,
                "guidance": guidance if guidance is not None else host.default_guidance, "model": host.name,
                "target": target, "backbone": model.name if model is not None else None,
                "control_seed": (seed if control_seed is None else control_seed) if causal is not None else None,
                "locality_threshold": locality_threshold, "grid": list(info.grid), "site": info.name}
    return InterventionReport(prompts, seed, intervention.describe(), original, edited, grid, per, _aggregate(per),
                              causal, control_images, settings)


# -- pictures ---------------------------------------------------------------------------------
def heatmap(change: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """(N, H, W) change in [0, 1] -> uint8 (N, H, W, 3) heatmap (black → red → yellow → white)."""
    change = np.asarray(change, dtype=np.float64)
    top = vmax if vmax is not None else float(change.max()) if change.size else 0.0
    x = np.clip(change / top, 0.0, 1.0) if top > 0 else np.zeros_like(change)
    rgb = [np.clip(3 * x - channel, 0, 1) for channel in range(3)]  # red, then green, then blue rise
    return (np.stack(rgb, -1) * 255).round().astype(np.uint8)


def outline(images: np.ndarray, grid_mask: np.ndarray, color=(0, 200, 255)) -> np.ndarray:
    """Draw the border of the mask's tokens (weights > 0) on images (N, H, W, 3)."""
    images = np.array(images, copy=True)
    n, h, w, _ = images.shape
    rows, cols = grid_mask.shape
    inside = (grid_mask > 0)[(np.arange(h) * rows) // h][:, (np.arange(w) * cols) // w]
    if inside.all():
        return images
    pad = np.pad(inside, 1, constant_values=False)
    border = inside & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    images[:, border] = color
    return images


def triptych_rows(original: np.ndarray, edited: np.ndarray, grid_mask: np.ndarray | None = None,
                  vmax: float | None = None) -> np.ndarray:
    """(3N, H, W, 3): per prompt, original | edited | difference heatmap (mask outlined)."""
    heat = heatmap(change_map(original, edited), vmax)
    if grid_mask is not None:
        heat = outline(heat, grid_mask)
    return np.stack([original, edited, heat], 1).reshape(-1, *original.shape[1:])


def save_grids(out: Path, original: np.ndarray, edited: np.ndarray, grid_mask: np.ndarray | None,
               scale: int | None = None, rows_per_file: int = 16, prefix: str = "grid") -> list[str]:
    """Triptych pages; ``scale`` None: upscaled to about 128 px a tile (small images only)."""
    from diffdict.imaging import display_scale, image_grid, save_png

    if scale is None:
        scale = display_scale(max(original.shape[1:3]))
    change = change_map(original, edited)
    vmax = float(change.max()) if change.size else 0.0
    names = []
    for page, start in enumerate(range(0, len(original), rows_per_file)):
        sl = slice(start, start + rows_per_file)
        tiles = triptych_rows(original[sl], edited[sl], grid_mask, vmax or None)
        name = f"{prefix}_{page:02d}.png" if len(original) > rows_per_file else f"{prefix}.png"
        save_png(out / name, image_grid(tiles, columns=3, scale=scale))
        names.append(name)
    return names


def save_intervention_report(report: InterventionReport, out: str | Path, scale: int | None = None) -> Path:
    """Write ``out/grid.png`` (original | edited | difference; one row per prompt; pages of
    16 rows), ``out/control.png`` when a control ran, and ``out/metrics.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_json()
    data["grids"] = save_grids(out, report.original, report.edited, report.mask_grid, scale)
    if report.control is not None:
        data["control_grids"] = save_grids(out, report.original, report.control, report.mask_grid, scale,
                                           prefix="control")
    data["heatmap_max_change"] = float(change_map(report.original, report.edited).max())
    write_json(out / "metrics.json", data)
    return out / "metrics.json"


# -- block ablation ---------------------------------------------------------------------------
def block_ablation(host: "HostModel", sites: Sequence[str], prompts: Sequence[str], seed: int = 0, scale: float = 0.0,
                   steps: Any = None, num_steps: int | None = None, guidance: float | None = None,
                   backbone: "str | Backbone | None" = "shapes-clip", batch_size: int = 16,
                   top: int = 5) -> dict[str, Any]:
    """For each site: generate with its update removed (scaled by ``scale``) and report,
    with shapes-clip, per concept family (read by its attribute heads), the mean absolute change
    of the concept probabilities and the share of images whose most likely value changed,
    plus the ``top`` concepts that rose and fell most, and pixel / perceptual distances.
    Another backbone (a real model's CLIP) gives the distances only, ``none`` the pixel
    distance only. Also returns the images (``images``: original and per site)."""
    sites = list(sites)
    if not sites:
        raise DiffdictError("no sites to ablate")
    for site in sites:
        host.site(site)
    if len(set(sites)) != len(sites):
        raise DiffdictError("a site is given twice")
    backbone = resolve_backbone(backbone, host.name)
    model = load_backbone(backbone) if backbone is not None else None
    concepts = hasattr(model, "read_concepts")  # shapes-clip; other judges give the distances only
    kwargs = dict(seed=seed, num_steps=num_steps, guidance=guidance, batch_size=batch_size)
    original = generate(host, prompts, [], **kwargs)
    before = {k: v.double().cpu().numpy() for k, v in model.read_concepts(original).items()} if concepts else {}
    result: dict[str, Any] = {"sites": {}, "settings": {
        "seed": seed, "scale": float(scale), "steps": steps, "prompts": len(prompts), "model": host.name,
        "num_steps": num_steps if num_steps is not None else host.default_steps,
        "guidance": guidance if guidance is not None else host.default_guidance,
        "backbone": model.name if model is not None else None}}
    images = {"original": original}
    for site in sites:
        ablated = generate(host, prompts, [Ablate(site, scale, steps=steps)], **kwargs)
        images[site] = ablated
        distances = {"pixel_mae": pixel_mae(original, ablated)}
        if model is not None:
            distances["perceptual"] = perceptual_distance(original, ablated, model)
        entry: dict[str, Any] = dict(_aggregate(distances))
        if concepts:
            entry.update(_concept_changes(before, model.read_concepts(ablated), top))
        result["sites"][site] = entry
    result["images"] = images
    return result


def _concept_changes(before: dict, after_tensors: dict, top: int) -> dict[str, Any]:
    """Per concept family: mean |Δp| and the share of images whose most likely value changed;
    the ``top`` concepts that rose and fell most."""
    after = {k: v.double().cpu().numpy() for k, v in after_tensors.items()}
    families = {}
    changes = []
    for family, values in FAMILIES.items():
        delta = after[family] - before[family]
        flipped = (after[family].argmax(1) != before[family].argmax(1))
        families[family] = {"mean_abs_change": float(np.abs(delta).mean()), "label_change_rate": float(flipped.mean())}
        for j, value in enumerate(values):
            changes.append((f"{family}:{value.replace(' ', '_')}", float(delta[:, j].mean())))
    changes.sort(key=lambda kv: kv[1])
    return {
        "families": families,
        "most_changed_family": max(families, key=lambda f: families[f]["mean_abs_change"]),
        "rose": [{"concept": c, "mean_change": v} for c, v in reversed(changes[-top:]) if v > 0],
        "fell": [{"concept": c, "mean_change": v} for c, v in changes[:top] if v < 0],
    }


def ablation_table(result: dict[str, Any]) -> str:
    """A markdown table of :func:`block_ablation`: per site, each family's mean |Δp| and
    label change rate."""
    entries = result["sites"]
    if not all("families" in entry for entry in entries.values()):  # a real model: distances only
        lines = ["| site | pixel MAE | perceptual |", "|---|---|---|"]
        for site, entry in entries.items():
            perceptual = f"{entry['perceptual']['mean']:.4f}" if "perceptual" in entry else "–"
            lines.append(f"| {site} | {entry['pixel_mae']['mean']:.4f} | {perceptual} |")
        return "\n".join(lines) + "\n\nNo concept columns: concepts are read by shapes-clip, on the shapes world only.\n"
    head = "| site | pixel MAE | perceptual | " + " | ".join(FAMILIES) + " | most changed |"
    lines = [head, "|" + "---|" * (len(FAMILIES) + 4)]
    for site, entry in entries.items():
        cells = [f"{entry['families'][f]['mean_abs_change']:.3f} ({entry['families'][f]['label_change_rate']:.0%})"
                 for f in FAMILIES]
        lines.append(f"| {site} | {entry['pixel_mae']['mean']:.4f} | {entry['perceptual']['mean']:.4f} | "
                     + " | ".join(cells) + f" | {entry['most_changed_family']} |")
    return "\n".join(lines) + "\n\nCells: mean |Δ probability| over values and images (share of images whose most likely value changed).\n"


def save_block_ablation(result: dict[str, Any], out: str | Path, scale: int | None = None) -> Path:
    """Write ``out/metrics.json``, ``out/table.md`` and ``out/<site>.png`` grids."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = result["images"]
    data = {k: v for k, v in result.items() if k != "images"}
    data["grids"] = {site: save_grids(out, images["original"], images[site], None, scale, prefix=site.replace("/", "_"))
                     for site in result["sites"]}
    write_json(out / "metrics.json", _finite(data))
    (out / "table.md").write_text(ablation_table(result))
    return out / "metrics.json"


def format_summary(report: InterventionReport) -> str:
    """A few lines for the terminal."""
    agg = report.aggregate
    parts = [f"{len(report.prompts)} image(s): pixel MAE {agg['pixel_mae']['mean']:.4f}"]
    if "perceptual" in agg:
        parts.append(f"perceptual {agg['perceptual']['mean']:.4f}")
    parts.append(f"locality {agg['locality_distance']['mean']:.2f} tokens")
    share = agg["inside_share"]["mean"]
    if share == share:
        parts.append(f"in-mask share {share:.0%}")
    lines = [", ".join(parts)]
    if report.causal is not None:
        c = report.causal
        lines.append(f"causal strength on {c['target']}: {c['strength']['mean']:+.3f} "
                     f"[{c['strength']['low']:+.3f}, {c['strength']['high']:+.3f}] (edit {c['effect']['mean']:+.3f}, "
                     f"random {c['control_effect']['mean']:+.3f}, wins {c['win_rate']:.0%})")
    return "\n".join(lines)


__all__ = ["InterventionReport", "ablation_table", "block_ablation", "concept_text", "format_summary", "heatmap",
           "run_intervention", "save_block_ablation", "save_intervention_report", "triptych_rows"]
