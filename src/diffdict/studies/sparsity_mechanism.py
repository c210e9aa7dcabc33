"""Sparsity mechanism: TopK against soft-threshold, ReLU + L1, plain ReLU, BatchTopK,
JumpReLU and Matryoshka BatchTopK, at matched L0 where the mechanism has a knob for it.

TopK, BatchTopK and Matryoshka BatchTopK take k directly. ReLU + L1 (``l1``), soft-threshold (a fixed
threshold θ = ``soft_theta`` with an L1 penalty ``l1``: the proximal form of L1; a fixed
threshold large enough to reach L0 = k alone leaves every feature below it at
initialisation, so none ever fires) and JumpReLU (its initial threshold ``theta``; it is
learned from there, but a short training moves it little, while its L0 coefficient barely
changes L0) are trained over a grid of their knob on the first seed; the knob value
whose L0 on the held-out tokens is closest to k (in log scale) is then the only one
trained for the other seeds. Plain ReLU has no knob. The table's L0 column is the L0 each
row reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffdict.options import option
from diffdict.studies.base import StudyContext
from diffdict.studies.dictionary_study import DictionaryStudy, DictionaryStudyConfig
from diffdict.studies.stages import Member

DEFAULT_MECHANISMS = ("topk", "soft-threshold", "relu-l1", "relu", "batchtopk", "jumprelu", "matryoshka-batchtopk")


def _mechanisms() -> list[str]:
    from diffdict.dictionaries import MECHANISMS

    return sorted(MECHANISMS)


@dataclass
class SparsityMechanismConfig(DictionaryStudyConfig):
    mechanisms: tuple[str, ...] = option(DEFAULT_MECHANISMS, "sparsity mechanisms (comma-separated)",
                                         choices=_mechanisms)
    l1_grid: tuple[float, ...] = option((0.03, 0.045, 0.06), "relu-l1: L1 coefficients tried", quick=(0.01, 0.05),
                                        minimum=0.0)
    soft_theta: float = option(2.0, "soft-threshold: the fixed threshold", minimum=0.0)
    soft_l1_grid: tuple[float, ...] = option((0.015, 0.025, 0.035), "soft-threshold: L1 coefficients tried",
                                             quick=(0.01, 0.03), minimum=0.0)
    jumprelu_theta_grid: tuple[float, ...] = option((1.0, 2.0, 4.0), "jumprelu: initial thresholds tried",
                                                    quick=(0.5, 2.0), minimum=0.0)
    jumprelu_l0_coef: float = option(0.01, "jumprelu: L0 penalty coefficient", minimum=0.0)


KNOBS = {"relu-l1": ("l1", "l1_grid"), "soft-threshold": ("l1", "soft_l1_grid"),
         "jumprelu": ("theta", "jumprelu_theta_grid")}


class SparsityMechanism(DictionaryStudy):
    name = "sparsity-mechanism"
    title = "Sparsity mechanism at matched L0"
    question = "Is TopK the best way to make an SAE sparse, for reconstruction, interpretability and causality?"
    Config = SparsityMechanismConfig
    reference = "topk"

    def __init__(self):
        self.matched: dict[str, dict[str, Member]] = {}  # site -> label -> the member matched on the first seed

    def members(self, config: SparsityMechanismConfig) -> list[Member]:
        members = []
        for mechanism in config.mechanisms:
            if mechanism in ("topk", "batchtopk", "matryoshka-batchtopk"):
                members.append(Member.of(mechanism, mechanism, k=config.k, auxk=True))
            elif mechanism in KNOBS:
                knob, grid = KNOBS[mechanism]
                extra = {"jumprelu": {"l0_coef": config.jumprelu_l0_coef},
                         "soft-threshold": {"theta": config.soft_theta}}.get(mechanism, {})
                members += [Member.of(mechanism, mechanism, **{knob: value}, **extra) for value in getattr(config, grid)]
            else:
                members.append(Member.of(mechanism, mechanism))
        return members

    def site_members(self, ctx: StudyContext, site: str) -> list[Member]:
        return list(self.matched[site].values()) if site in self.matched else self.members(ctx.config)

    def select(self, ctx: StudyContext, site: str, seed: int, results: dict) -> list[tuple[str, Member]]:
        if site in self.matched:
            return list(self.matched[site].items())
        target = math.log(ctx.config.k)
        self.matched[site] = {label: min((m for m in results if m.label == label),  # the first of equals
                                         key=lambda m: abs(math.log(max(results[m]["l0"], 1e-6)) - target))
                              for label in dict.fromkeys(m.label for m in results)}
        for label, member in self.matched[site].items():
            knob = KNOBS.get(member.arch, (None,))[0]
            if knob is not None:
                tried = ", ".join(f"{m.option(knob):g} (L0 {results[m]['l0']:.1f})" for m in results if m.label == label)
                ctx.note(f"{label} ({site}): {knob} = {tried} on seed {seed}; {knob} = {member.option(knob):g}, "
                         f"closest to L0 {ctx.config.k}, is used for every seed")
        return list(self.matched[site].items())
