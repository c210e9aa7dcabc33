"""The benchmark's table (markdown) and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from diffdict.bench.data import BENCH_CONCEPTS
from diffdict.bench.runner import writer_f1

#: (summary key, column title) of the headline table
COLUMNS = (
    ("token_f1", "detection F1 (token)"), ("image_f1", "detection F1 (image)"), ("coverage", "coverage"),
    ("token_purity", "purity (token)"), ("image_purity", "purity (image)"), ("token_pure_share", "pure ≥ 0.9"),
    ("token_top_precision", "top precision (token)"),
    ("concept_purity", "concept purity"), ("pure_coverage", "pure coverage"),
    ("detectors_per_concept", "detectors / concept"), ("absorption", "absorption"),
    ("steer_feature", "steering success"), ("steer_random", "random dir."), ("steer_supervised", "supervised dir."),
    ("steer_retain", "retain"), ("erase_feature", "erasure"), ("erase_random", "erasure (random)"),
    ("erase_retain", "erase retain"), ("fidelity_lpips", "splice LPIPS"), ("fidelity_judge_accuracy", "splice judge acc."),
    ("stability", "stability"),
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell(value: Any) -> str:
    if isinstance(value, dict):
        mean, low, high = value.get("mean"), value.get("low"), value.get("high")
        if _missing(mean):
            return "—"
        return f"{mean:.3f}" if _missing(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    if _missing(value):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_value(result: dict, key: str) -> Any:
    if key == "stability":
        stability = result.get("stability")
        return None if stability is None else stability["mean_cosine"]
    return result["summary"].get(key)


def markdown(results: dict[str, Any]) -> str:
    rows = {"dictionary": results["dictionary"], **results["baselines"]}
    columns = [(k, t) for k, t in COLUMNS if any(summary_value(r, k) is not None for r in rows.values())]
    lines = [f"Site `{results['site']}`, {results['prompts']} prompts (half select, half test); "
             f"mean [95% interval].", "",
             "| | " + " | ".join(t for _, t in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, result in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(summary_value(result, k)) for k, _ in columns) + " |")
    for name, diffs in results["differences"].items():
        lines += ["", f"Dictionary minus {name} (95% interval; **bold**: the interval excludes 0):", "",
                  "| score | difference |", "|---|---:|"]
        for key, value in diffs.items():
            text = cell(value)
            excludes = value["low"] > 0 or value["high"] < 0 if not math.isnan(value.get("low", math.nan)) else False
            lines.append(f"| {key} | {'**' + text + '**' if excludes else text} |")
    concepts = results["dictionary"]["concepts"]
    steering = results["dictionary"].get("steering", {})
    lines += ["", "Per concept (dictionary): the feature detection chose (the reader) and its test-half F1 / AUROC; "
                  "the feature steered (the writer: closest to the concept's direction, or with --steer-feature both "
                  "the largest cosine x F1), the cosine of its direction with the concept's, its F1 (token or image, "
                  "the better); the feature steered (the writer, or the reader with --steer-feature reader), "
                  "its F1 and steering success [random direction]:", "",
              "| concept | reader | F1 token | AUROC token | F1 image | detectors | absorption | writer | writer cos. | "
              "writer F1 | steered | steered F1 | steering | random | steers |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for concept in BENCH_CONCEPTS:
        c, s = concepts[concept], steering.get(concept) or {}
        lines.append(f"| {concept} | {c['token_feature']} | {cell(c['token_f1'])} | {cell(c['token_auroc'])} | "
                     f"{cell(c['image_f1'])} | {c['detectors']} | {cell(c['absorption'])} | "
                     f"{c.get('writer_feature', '—')} | {cell(c.get('writer_cosine'))} | {cell(writer_f1(c))} | "
                     f"{s.get('feature', '—')} | {cell(s.get('writer_f1'))} | {cell(s.get('success'))} | "
                     f"{cell(s.get('random'))} | {('yes' if s.get('steers') else 'no') if s else '—'} |")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"dictionary": results["dictionary"], **results["baselines"]}
    made = []
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(rows)
    x = np.arange(len(BENCH_CONCEPTS))
    for i, (name, result) in enumerate(rows.items()):
        values = [result["concepts"][c]["token_f1"] or 0.0 for c in BENCH_CONCEPTS]
        ax.bar(x + i * width, values, width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, BENCH_CONCEPTS, rotation=75, fontsize=7)
    ax.set_ylabel("detection F1 (token, test half)")
    ax.axhline(0.8, color="gray", lw=0.5, ls="--")
    ax.legend(fontsize=8)
    made.append(_save(fig, folder / "detection.png"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    edges = np.linspace(0, 1, 21)
    for ax, key, title in ((axes[0], "token_purity", "purity over the activation range (token)"),
                           (axes[1], "token_top_precision", "top precision (token)")):
        for name, result in rows.items():
            values = np.array(result["features"].get(key, []), dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                ax.hist(values, edges, histtype="step", density=True, label=name)
        ax.set_xlabel(title)
    axes[0].set_ylabel("live features (density)")
    axes[0].legend(fontsize=7)
    made.append(_save(fig, folder / "purity.png"))
    steering = results["dictionary"].get("steering")
    if steering:
        concepts = list(steering)
        fig, ax = plt.subplots(figsize=(10, 4))
        x = np.arange(len(concepts))
        series = [("dictionary", steering, "feature_success"), ("random direction", steering, "random_success"),
                  ("supervised direction", steering, "supervised_success")]
        series += [(name, r["steering"], "feature_success") for name, r in results["baselines"].items() if "steering" in r]
        width = 0.8 / len(series)
        for i, (name, data, key) in enumerate(series):
            ax.bar(x + i * width, [np.mean(data[c][key]) if data[c][key] else 0.0 for c in concepts], width, label=name)
        ax.set_xticks(x + 0.4 - width / 2, concepts, rotation=60, fontsize=8)
        ax.set_ylabel("steering success")
        ax.legend(fontsize=7)
        made.append(_save(fig, folder / "steering.png"))
    return made


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from diffdict.io import atomic_target

    fig.tight_layout()
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


__all__ = ["markdown", "plots"]
