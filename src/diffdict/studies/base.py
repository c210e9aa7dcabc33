"""What a study is: a typed config, a runner that records per-seed results, and a table.

A :class:`Study` has a ``Config`` dataclass (fields declared with :func:`diffdict.options.option`,
validated once at the edge by :func:`diffdict.options.resolve`, so a runner can trust it), the
``metrics`` of its table, ``labels(config)`` (the variants: a row each per site) or ``rows(ctx)``,
and ``run(ctx)``, which calls ``ctx.record(row, seed, metric=value, ...)``; the cache, the table
with error bars, plots and ``config.json`` are shared.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from diffdict.options import option


def _host_names() -> list[str]:
    from diffdict.hosts import HOSTS

    return list(HOSTS)


JUDGES = ("auto", "shapes-clip", "open-clip")


@dataclass
class StudyConfig:
    """Options every study takes."""

    model: str = option("toy", "host model", choices=_host_names)
    model_path: str | None = option(None, "toy: a model folder (default: the shipped weights); real models: a hub id or folder")
    sites: tuple[str, ...] = option((), "sites to study, comma-separated (default: the model's study sites)")
    prompts_file: str | None = option(None, "a text file, one prompt a line, to draw every prompt set from "
                                            "(default: shapes-world captions)")
    seeds: int = option(3, "number of seeds (mean, std and 95% interval over them)", quick=2, minimum=1)
    seed: int = option(0, "first seed; seed i is SEED + i", minimum=0)
    capture: str | None = option(None, "capture mode read and edited at a block site: update or output "
                                       "(default: update; output for FLUX)",
                                 choices=("update", "output"), aliases=("what",))
    judge: str = option("auto", "image-text backbone for the image metrics: auto = shapes-clip on the toy model, "
                        "open-clip on real models", choices=JUDGES)
    judge_path: str | None = option(None, "shapes-clip: a weights folder (default: the shipped weights)")
    device: str | None = option(None, "cpu, cuda, cuda:1 (default: cuda when available)")
    model_dtype: str | None = option(None, "compute dtype of a real model", choices=("float16", "bfloat16", "float32"))
    quantize: str | None = option(None, "real models: load 4-bit NF4 weights (bitsandbytes)", choices=("nf4",))
    image_size: int | None = option(None, "real models: image size (default: the model's)", minimum=16)
    denoise_steps: int | None = option(None, "denoising steps per generation (default: the model's study setting: 6 "
                                              "for the toy model, else its default)", quick=2, minimum=1)
    guidance: float | None = option(None, "guidance scale (default: the model's)", minimum=0.0)
    batch_size: int = option(32, "prompts per generation batch", minimum=1)
    threads: int | None = option(None, "CPU threads for torch (default: torch's, one per core; the command "
                                       "makes idle threads wait passively, so a busy machine costs no more "
                                       "than one thread would)", minimum=1)
    jobs: int | None = option(None, "processes sharing the work through the cache (default: 2 on a CPU with two "
                                    "cores or more, else 1); the tables do not depend on it", minimum=1)
    quick: bool = option(False, "a much smaller smoke version", cli=False)

    def check(self) -> None:
        """Cross-field checks (subclasses extend)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]


@dataclass(frozen=True)
class Metric:
    """A table column: ``lo``/``hi`` bound any correct value; ``better`` says which way is good."""

    name: str
    label: str
    lo: float = -math.inf
    hi: float = math.inf
    better: str | None = None  # "higher" | "lower" | None
    help: str = ""

    def check(self, value: float) -> bool:
        return math.isnan(value) or self.lo - 1e-9 <= value <= self.hi + 1e-9


@dataclass
class Record:
    """One seed's values of one row; ``items`` holds, for metrics that are means over
    paired units (concepts, steering trials), the per-unit values the mean is over."""

    row: str
    seed: int
    values: dict[str, float]
    items: dict[str, list[float]] = field(default_factory=dict)


class Study:
    name: ClassVar[str]
    title: ClassVar[str]
    question: ClassVar[str]  # what the study answers, one sentence
    Config: ClassVar[type[StudyConfig]] = StudyConfig
    metrics: ClassVar[tuple[Metric, ...]]
    #: the row every other row is compared with (the paper's choice), or None
    reference: ClassVar[str | None] = None

    def row_name(self, ctx: "StudyContext", row: str, site: str) -> str:
        return row if len(ctx.sites) == 1 else f"{row} @ {site}"

    def reference_row(self, ctx: "StudyContext", row: str) -> str | None:
        """The row ``row`` is compared with: the reference at the same site."""
        return None if self.reference is None else self.row_name(ctx, self.reference, row.partition(" @ ")[2])

    def labels(self, config: StudyConfig) -> list[str]:
        """The variants compared at each site."""
        raise NotImplementedError

    def rows(self, ctx: "StudyContext") -> list[str]:
        """The rows of the table, in order: each variant at each site."""
        return [self.row_name(ctx, label, site) for site in ctx.sites for label in self.labels(ctx.config)]

    def sites(self, ctx: "StudyContext") -> list[str]:
        return ctx.sites

    def run(self, ctx: "StudyContext") -> None:
        raise NotImplementedError

    def plot(self, ctx: "StudyContext", table, out: Path) -> list[Path]:
        from diffdict.studies.plots import metric_bars

        return [metric_bars(table, self.metrics, out / "metrics.png", title=self.title)]



class StudyContext:
    """A study run: config, output folder, cache, host and judge (built on first use, or
    injected), and what it has recorded."""

    def __init__(self, study: Study, config: StudyConfig, out: Path, cache, host=None, judge=None,
                 log: Callable[[str], None] | None = None):
        self.study, self.config, self.out, self.cache = study, config, out, cache
        self._host, self._judge = host, judge
        self.records: list[Record] = []
        self.curves: dict[str, dict[str, list[list[float]]]] = {}
        self.notes: list[str] = []
        self.extras: dict[str, Any] = {}
        self.trained = 0  # dictionaries trained by this run (0 when everything came from the cache)
        self.helper = False  # a helper process of ``--jobs``: it only fills the cache (see studies.parallel)
        self.started = time.monotonic()
        self._log = log if log is not None else (lambda message: print(message, file=sys.stderr, flush=True))

    @property
    def host(self):
        if self._host is None:
            from diffdict.studies.stages import load_study_host

            self._host = load_study_host(self.config)
        return self._host

    @property
    def judge(self):
        if self._judge is None:
            from diffdict.studies.stages import load_judge

            self._judge = load_judge(self.config)
        return self._judge

    @property
    def sites(self) -> list[str]:
        from diffdict.studies.stages import study_sites

        return study_sites(self.host, self.config.sites)

    def order(self, items: Iterable) -> list:
        """``items`` in the order this process works through them: a helper process goes
        backwards, so that it and the main process meet in the middle of a loop."""
        items = list(items)
        return items[::-1] if self.helper else items

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self._log(f"[{self.study.name} {elapsed:6.1f}s] {message}")

    def record(self, row: str, seed: int, items: dict[str, list[float]] | None = None, **values: float) -> None:
        known = {m.name for m in self.study.metrics}
        for name in [*values, *(items or {})]:
            if name not in known:
                raise KeyError(f"study {self.study.name} has no metric {name!r}")  # a study bug, not user input
        self.records.append(Record(row, seed, {k: float(v) for k, v in values.items()},
                                   {k: [float(x) for x in v] for k, v in (items or {}).items()}))

    def curve(self, name: str, row: str, points: Iterable[tuple[float, float]]) -> None:
        """A curve (x, y) of ``row`` (e.g. dead fraction over training tokens); one per seed."""
        self.curves.setdefault(name, {}).setdefault(row, []).append([list(map(float, p)) for p in points])

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


__all__ = ["JUDGES", "Metric", "Record", "Study", "StudyConfig", "StudyContext"]
