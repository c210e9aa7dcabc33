"""The studies' plots: matplotlib with the Agg backend, written as PNG files."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffdict.io import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def metric_bars(table, metrics, path: Path, title: str = "") -> Path:
    """One bar chart per metric: a bar per row at the mean, the 95% interval as error bar
    (the std when there is no interval), and the per-seed values as dots."""
    shown = [m for m in metrics if m.name in table.columns()]
    columns = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    width = max(3.2, 0.55 * len(table.rows) + 1.5)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 2.9 * rows), squeeze=False)
    x = np.arange(len(table.rows))
    for ax, metric in zip(axes.flat, shown):
        cells = [table.cell(row, metric.name) for row in table.rows]
        means = np.array([c.mean for c in cells])
        errors = np.array([(c.high - c.mean) if not math.isnan(c.high) else (c.std if not math.isnan(c.std) else 0.0)
                           for c in cells])
        ax.bar(x, np.nan_to_num(means), yerr=np.nan_to_num(errors), capsize=3, color="#6b8fc7", alpha=0.85)
        for i, row in enumerate(table.rows):
            values = [r[metric.name] for r in table.per_seed if r["row"] == row and metric.name in r]
            ax.scatter(np.full(len(values), i), values, s=9, color="#1a1a1a", zorder=3)
        arrow = {"higher": " ↑", "lower": " ↓"}.get(metric.better or "", "")
        ax.set_title(metric.label + arrow, fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(table.rows, rotation=35, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def curves(series: dict[str, list[list[list[float]]]], path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """Curves per row (several seeds each: the mean as a line, the range shaded)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for row, runs in series.items():
        runs = [np.asarray(r, dtype=float) for r in runs if len(r)]
        if not runs:
            continue
        length = min(len(r) for r in runs)
        stacked = np.stack([r[:length] for r in runs])
        xs, ys = stacked[0, :, 0], stacked[:, :, 1]
        line, = ax.plot(xs, ys.mean(0), label=row)
        if len(runs) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], path: Path, title: str,
            label: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(0.8 * len(columns) + 2.5, 0.45 * len(rows) + 1.6))
    image = ax.imshow(np.nan_to_num(matrix), cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not math.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["curves", "heatmap", "metric_bars"]
