"""Sparsity level: TopK SAEs at several k (5, 10, 20 by default; any list)."""

from __future__ import annotations

from dataclasses import dataclass

from diffdict.options import option
from diffdict.studies.dictionary_study import DictionaryStudy, DictionaryStudyConfig
from diffdict.studies.stages import Member


@dataclass
class SparsityLevelConfig(DictionaryStudyConfig):
    ks: tuple[int, ...] = option((5, 10, 20), "values of k (comma-separated)", minimum=1)


class SparsityLevel(DictionaryStudy):
    name = "sparsity-level"
    title = "Sparsity level (TopK k)"
    question = "How do reconstruction, interpretability and causal strength trade off as k grows?"
    Config = SparsityLevelConfig

    def reference_row(self, ctx, row: str) -> str | None:
        """k = the config's k (the paper's 10 by default)."""
        return self.row_name(ctx, f"k={ctx.config.k}", row.partition(" @ ")[2])

    def members(self, config: SparsityLevelConfig) -> list[Member]:
        return [Member.of("topk", f"k={k}", k=k, auxk=True) for k in config.ks]
