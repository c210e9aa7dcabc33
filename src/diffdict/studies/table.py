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
from diffdict.metrics.causal import mean_interval


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
        mean, low, high = mean_interval(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, low, high, n)

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

    def __init__(self, rows: list[str], metrics, cells: dict[tuple[str, str], Cell], per_seed: list[dict],
                 differences: dict[tuple[str, str], Cell], references: dict[str, str]):
        self.rows, self.metrics, self.cells, self.per_seed = rows, list(metrics), cells, per_seed
        self.differences, self.references = differences, references

    @classmethod
    def from_records(cls, records, rows: Sequence[str], metrics, reference_of=None) -> "Table":
        """``reference_of(row)``: the row to compare ``row`` with (None: no comparison)."""
        rows = list(rows) + list(dict.fromkeys(r.row for r in records if r.row not in rows))
        cells = {(row, m.name): Cell.of([r.values[m.name] for r in records if r.row == row and m.name in r.values])
                 for row in rows for m in metrics}
        per_seed = [{"row": r.row, "seed": r.seed, **r.values} for r in records]
        references = {row: ref for row in rows if reference_of is not None
                      and (ref := reference_of(row)) is not None and ref != row and ref in rows}
        differences = {(row, m.name): paired_difference(records, row, ref, m.name)
                       for row, ref in references.items() for m in metrics}
        return cls(rows, metrics, cells, per_seed, differences, references)

    def cell(self, row: str, metric: str) -> Cell:
        return self.cells[(row, metric)]

    def columns(self) -> list[str]:
        """Metrics with at least one value (a column that is n/a everywhere is dropped from
        the markdown table; it stays in the CSV and JSON)."""
        return [m.name for m in self.metrics if any(self.cells[(r, m.name)].n for r in self.rows)]

    def markdown(self, title: str | None = None) -> str:
        shown = [m for m in self.metrics if m.name in self.columns()]
        lines = [f"### {title}", ""] if title else []
        lines += _markdown_table(["variant"] + [m.label + {"higher": " ↑", "lower": " ↓"}.get(m.better or "", "")
                                                for m in shown],
                                 [[row] + [self._text(self.cell(row, m.name)) for m in shown] for row in self.rows])
        n = max((c.n for c in self.cells.values()), default=0)
        lines += ["", f"mean ± std over {n} seed(s) [95% t-interval of the mean]; ↑/↓: higher/lower is better."]
        differing = [m for m in shown if any(self.differences[(r, m.name)].n >= 2 for r in self.references)]
        if differing:
            references = ", ".join(sorted(set(self.references.values())))
            lines += ["", f"Difference from the reference (row minus {references}), "
                          "paired over seeds and, where a metric is a mean over concepts or steering trials, over "
                          "those [95% t-interval]; **bold**: the interval excludes 0 (n: pairs).", ""]
            lines += _markdown_table(["variant"] + [m.label for m in differing],
                                     [[row] + [self._difference_text(row, m.name) for m in differing]
                                      for row in self.references])
        return "\n".join(lines) + "\n"

    @staticmethod
    def _text(c: Cell) -> str:
        if c.n < 2:
            return fmt(c.mean) if c.n else "n/a"
        return f"{fmt(c.mean)} ± {fmt(c.std)} [{fmt(c.low)}, {fmt(c.high)}]"

    def _difference_text(self, row: str, metric: str) -> str:
        d = self.differences[(row, metric)]
        if d.n < 2:
            return "n/a"
        text = f"{d.mean:+.3g} [{d.low:+.3g}, {d.high:+.3g}] (n {d.n})"
        return f"**{text}**" if self.excludes_zero(row, metric) else text

    def excludes_zero(self, row: str, metric: str) -> bool:
        d = self.differences.get((row, metric))
        return d is not None and d.n >= 2 and (d.low > 0 or d.high < 0)

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["variant"] + [f"{m.name}_{stat}" for m in self.metrics
                                       for stat in ("mean", "std", "ci95_low", "ci95_high", "n")])
        for row in self.rows:
            cells = [self.cell(row, m.name) for m in self.metrics]
            writer.writerow([row] + [v for c in cells for v in (*map(repr, (c.mean, c.std, c.low, c.high)), c.n)])
        return buffer.getvalue()

    def summary(self) -> dict:
        return {row: {m.name: self.cell(row, m.name).to_dict() for m in self.metrics} for row in self.rows}

    def differences_summary(self) -> dict:
        """Per compared row and metric: the paired difference from the reference."""
        return {row: {"reference": ref, **{m.name: {**self.differences[(row, m.name)].to_dict(),
                                                  "excludes_zero": self.excludes_zero(row, m.name)}
                                         for m in self.metrics}}
                for row, ref in self.references.items()}

    def write(self, out: Path, title: str | None = None, notes: Sequence[str] = ()) -> None:
        text = self.markdown(title)
        if notes:
            text += "\n" + "\n".join(f"- {note}" for note in notes) + "\n"
        atomic_write_text(out / "table.md", text)
        atomic_write_text(out / "table.csv", self.csv())


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def paired_difference(records, row: str, reference: str, metric: str) -> Cell:
    """``row`` minus ``reference`` over the seeds both have: per-unit values (``items``)
    pair up unit by unit when both have the same number, else the seed means pair up."""
    mine = {r.seed: r for r in records if r.row == row and metric in r.values}
    theirs = {r.seed: r for r in records if r.row == reference and metric in r.values}
    diffs: list[float] = []
    for seed in sorted(set(mine) & set(theirs)):
        a, b = mine[seed].items.get(metric), theirs[seed].items.get(metric)
        if a is not None and b is not None and len(a) == len(b):
            diffs += [x - y for x, y in zip(a, b)]
        else:
            diffs.append(mine[seed].values[metric] - theirs[seed].values[metric])
    return Cell.of(diffs)


__all__ = ["Cell", "Table", "fmt", "paired_difference"]
