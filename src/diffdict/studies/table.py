"""Tables with error bars: mean ± std over seeds and a 95% Student-t interval.

A table is built from per-seed records (row, seed, metric values) and written as
``table.md`` (for people and the README), ``table.csv`` (mean, std, interval bounds and
n per cell) and ``results.json`` (every per-seed value, the summary, curves, notes).
NaN values (a metric that does not apply, e.g. the concept oracle on a real model) are
left out of a cell's statistics; a cell with none left prints as "n/a".
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from diffdict.io import atomic_write_text
from diffdict.metrics.causal import t_quantile_975

@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Cell":
        values = [float(v) for v in values if not math.isnan(float(v))]
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, math.nan, 0)
        mean = sum(values) / n
        if n == 1:
            return cls(mean, math.nan, math.nan, math.nan, 1)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        return cls(mean, std, mean - half, mean + half, n)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "ci95": [self.low, self.high], "n": self.n}


def fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}" if magnitude < 10 else f"{value:.2f}"


class Table:
    """rows x metrics cells over the seeds; built by :meth:`from_records`."""

    def __init__(self, rows: list[str], metrics, cells: dict[tuple[str, str], Cell], per_seed: list[dict]):
        self.rows, self.metrics, self.cells, self.per_seed = rows, list(metrics), cells, per_seed

    @classmethod
    def from_records(cls, records, rows: Sequence[str], metrics) -> "Table":
        rows = list(rows)
        for record in records:
            if record.row not in rows:
                rows.append(record.row)
        cells = {}
        for row in rows:
            for metric in metrics:
                values = [r.values[metric.name] for r in records if r.row == row and metric.name in r.values]
                cells[(row, metric.name)] = Cell.of(values)
        per_seed = [{"row": r.row, "seed": r.seed, **r.values} for r in records]
        return cls(rows, metrics, cells, per_seed)

    def cell(self, row: str, metric: str) -> Cell:
        return self.cells[(row, metric)]

    def columns(self) -> list[str]:
        """Metrics with at least one value (a column that is n/a everywhere is dropped from
        the markdown table; it stays in the CSV and JSON)."""
        return [m.name for m in self.metrics if any(self.cells[(r, m.name)].n for r in self.rows)]

    def markdown(self, title: str | None = None) -> str:
        shown = [m for m in self.metrics if m.name in self.columns()]
        lines = []
        if title:
            lines += [f"### {title}", ""]
        header = ["variant"] + [m.label + {"higher": " ↑", "lower": " ↓"}.get(m.better or "", "") for m in shown]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(shown)) + "|")
        for row in self.rows:
            cells = []
            for metric in shown:
                c = self.cell(row, metric.name)
                if c.n == 0:
                    cells.append("n/a")
                elif c.n == 1:
                    cells.append(fmt(c.mean))
                else:
                    cells.append(f"{fmt(c.mean)} ± {fmt(c.std)} [{fmt(c.low)}, {fmt(c.high)}]")
            lines.append("| " + " | ".join([row] + cells) + " |")
        n = max((c.n for c in self.cells.values()), default=0)
        lines += ["", f"mean ± std over {n} seed(s) [95% t-interval of the mean]; ↑/↓: higher/lower is better."]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["variant"]
        for metric in self.metrics:
            header += [f"{metric.name}_mean", f"{metric.name}_std", f"{metric.name}_ci95_low",
                       f"{metric.name}_ci95_high", f"{metric.name}_n"]
        writer.writerow(header)
        for row in self.rows:
            line: list = [row]
            for metric in self.metrics:
                c = self.cell(row, metric.name)
                line += [repr(c.mean), repr(c.std), repr(c.low), repr(c.high), c.n]
            writer.writerow(line)
        return buffer.getvalue()

    def summary(self) -> dict:
        return {row: {m.name: self.cell(row, m.name).to_dict() for m in self.metrics} for row in self.rows}

    def write(self, out: Path, title: str | None = None, notes: Sequence[str] = ()) -> None:
        text = self.markdown(title)
        if notes:
            text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
        atomic_write_text(out / "table.md", text)
        atomic_write_text(out / "table.csv", self.csv())


__all__ = ["Cell", "Table", "fmt"]
