"""Sparsity mechanism: TopK against soft-threshold, ReLU + L1, plain ReLU, BatchTopK and
JumpReLU, at matched L0 where the mechanism has a knob for it.

TopK and BatchTopK take k directly. ReLU + L1 (``l1``), soft-threshold (``theta``) and
JumpReLU (``l0_coef``) are trained over a grid of their knob in the same pass, and the
member whose L0 on the held-out tokens is closest to k (in log scale) is the one
reported; plain ReLU has no knob. The table's L0 column is the L0 each row reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffdict.studies.base import StudyContext, option
from diffdict.studies.dictionary_study import DictionaryStudy, DictionaryStudyConfig
from diffdict.studies.pipeline import Member

DEFAULT_MECHANISMS = ("topk", "soft-threshold", "relu-l1", "relu", "batchtopk", "jumprelu")


def _mechanisms() -> list[str]:
    from diffdict.dictionaries import MECHANISMS

    return sorted(MECHANISMS)


@dataclass
class SparsityMechanismConfig(DictionaryStudyConfig):
    mechanisms: tuple[str, ...] = option(DEFAULT_MECHANISMS, "sparsity mechanisms (comma-separated)",
                                         choices=_mechanisms)
    l1_grid: tuple[float, ...] = option((1e-3, 3e-3, 1e-2, 3e-2, 0.1), "relu-l1: L1 coefficients tried",
                                        quick=(3e-3, 3e-2), minimum=0.0)
    theta_grid: tuple[float, ...] = option((0.3, 1.0, 2.0, 4.0), "soft-threshold: thresholds tried",
                                           quick=(1.0, 3.0), minimum=0.0)
    l0_coef_grid: tuple[float, ...] = option((1e-3, 3e-3, 1e-2, 3e-2), "jumprelu: L0 coefficients tried",
                                             quick=(3e-3, 3e-2), minimum=0.0)
    jumprelu_theta: float = option(0.5, "jumprelu: initial threshold (learned from there)", minimum=0.0)


KNOBS = {"relu-l1": ("l1", "l1_grid"), "soft-threshold": ("theta", "theta_grid"), "jumprelu": ("l0_coef", "l0_coef_grid")}


class SparsityMechanism(DictionaryStudy):
    name = "sparsity-mechanism"
    title = "Sparsity mechanism at matched L0"
    question = "Is TopK the best way to make an SAE sparse, for reconstruction, interpretability and causality?"
    Config = SparsityMechanismConfig

    def members(self, config: SparsityMechanismConfig) -> list[Member]:
        members = []
        for mechanism in config.mechanisms:
            if mechanism in ("topk", "batchtopk"):
                members.append(Member.of(mechanism, mechanism, k=config.k, auxk=True))
            elif mechanism in KNOBS:
                knob, grid = KNOBS[mechanism]
                extra = {"theta": config.jumprelu_theta} if mechanism == "jumprelu" else {}
                members += [Member.of(mechanism, mechanism, **{knob: value}, **extra) for value in getattr(config, grid)]
            else:
                members.append(Member.of(mechanism, mechanism))
        return members

    def select(self, ctx: StudyContext, results: dict, seed: int) -> list[tuple[str, Member]]:
        target = math.log(ctx.config.k)
        best: dict[str, tuple[float, Member]] = {}
        for member, result in results.items():
            distance = abs(math.log(max(result["l0"], 1e-6)) - target)
            if member.label not in best or distance < best[member.label][0]:
                best[member.label] = (distance, member)
        chosen = []
        for label, (_, member) in best.items():
            knob = KNOBS.get(member.arch, (None,))[0]
            if knob is not None:
                ctx.note(f"seed {seed}, {label}: {knob} = " + ", ".join(
                    f"{m.option(knob):g} (L0 {results[m]['l0']:.1f})" for m in results if m.label == label)
                    + f"; the member closest to L0 {ctx.config.k} is reported")
            chosen.append((label, member))
        return chosen
