"""The auxiliary loss (AuxK): TopK SAEs trained with and without it on the same data.

Besides the usual metrics, the dead fraction over training (a feature is dead once it has
not fired for ``dead_window`` tokens) is a curve, and its final value a column.
"""

from __future__ import annotations

import math
from pathlib import Path

from diffdict.studies.base import Metric, StudyContext
from diffdict.studies.dictionary_study import DictionaryStudy, Trained
from diffdict.studies.stages import Member, read_training_log

WITH, WITHOUT = "with AuxK", "without AuxK"


class AuxK(DictionaryStudy):
    name = "auxk"
    title = "Auxiliary loss (AuxK) for dead features"
    question = "Does the AuxK loss keep features alive, and does that buy interpretability or causality?"
    reference = WITH
    metrics = DictionaryStudy.metrics + (
        Metric("train_dead_fraction", "dead in training", 0, 1, "lower",
               "share of features dead (no firing in the dead window) at the end of training"),
    )

    def members(self, config) -> list[Member]:
        return [Member.of("topk", WITH, k=config.k, auxk=True), Member.of("topk", WITHOUT, k=config.k, auxk=False)]

    def extra_metrics(self, ctx: StudyContext, t: Trained, result: dict) -> dict[str, float]:
        log = read_training_log(t.folder)
        return {"train_dead_fraction": log[-1]["dead_fraction"] if log else math.nan}

    def after_seed(self, ctx: StudyContext, site: str, seed: int, trained: dict, results: dict) -> None:
        for member, t in trained.items():
            points = [(row["tokens"], row["dead_fraction"]) for row in read_training_log(t.folder)]
            ctx.curve("dead_fraction", self.row_name(ctx, member.label, site), points)

    def plot(self, ctx: StudyContext, table, out: Path) -> list[Path]:
        from diffdict.studies.plots import curves

        paths = super().plot(ctx, table, out)
        if "dead_fraction" in ctx.curves:
            paths.append(curves(ctx.curves["dead_fraction"], out / "dead_fraction.png",
                                "Dead features over training", "training tokens", "dead fraction"))
        return paths
