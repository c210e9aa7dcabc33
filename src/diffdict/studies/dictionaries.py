"""SAE against ITDA against the block's MLP neurons, at equal L0.

The SAE is a TopK SAE (k = L0); ITDA builds its dictionary from real activations and
encodes with L0 pursuit steps; the neurons are the block's MLP hidden units with their
top-L0 activations as codes and the MLP's output projection as decoder. SAE and ITDA
reconstruct the block's update; the neurons reconstruct the MLP's output (from the top
L0 neurons against all of them). Steering is activation addition (``add``) in each
dictionary's own space. Build time: the SAE's training and ITDA's build on the same
tokens (the neurons cost nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffdict.options import option
from diffdict.studies.base import Metric, StudyContext
from diffdict.studies.dictionary_study import DictionaryStudy, DictionaryStudyConfig, Trained
from diffdict.studies.stages import Member, activation_store, build_seconds, neuron_dictionary

KINDS = ("sae", "itda", "neurons")
LABELS = {"sae": "SAE (TopK)", "itda": "ITDA", "neurons": "MLP neurons"}


@dataclass
class DictionariesConfig(DictionaryStudyConfig):
    kinds: tuple[str, ...] = option(KINDS, "dictionaries compared (comma-separated)", choices=KINDS)
    tau: float = option(0.4, "ITDA: normalised error above which an activation becomes an atom",
                        minimum=0.0, maximum=1.0)


class Dictionaries(DictionaryStudy):
    name = "dictionaries"
    title = "SAE vs ITDA vs MLP neurons at equal L0"
    question = "Do SAEs beat ITDA and MLP neurons on reconstruction, interpretability and steering, and at what cost?"
    Config = DictionariesConfig
    reference = LABELS["sae"]
    metrics = DictionaryStudy.metrics + (
        Metric("n_features", "features", 0, float("inf"), None, "dictionary size"),
        Metric("build_seconds", "build time (s)", 0, float("inf"), "lower", "training / building wall time"),
    )

    def members(self, config: DictionariesConfig) -> list[Member]:
        members = {"sae": Member.of("topk", LABELS["sae"], k=config.k, auxk=True),
                   "itda": Member.of("itda", LABELS["itda"], l0=config.k, tau=config.tau)}
        return [members[kind] for kind in ("sae", "itda") if kind in config.kinds]

    def labels(self, config: DictionariesConfig) -> list[str]:
        return [LABELS[kind] for kind in config.kinds]

    def build(self, ctx: StudyContext, site: str, seed: int, train_store, eval_store) -> list[Trained]:
        trained = super().build(ctx, site, seed, train_store, eval_store)
        if "neurons" in ctx.config.kinds:
            k = ctx.config.k
            mlp_store = activation_store(ctx, "eval", ctx.config.eval_prompts, [site], capture="mlp")
            mlp_site = f"{site}.mlp"
            key = {"neurons": mlp_site, "host": ctx.host.describe(), "k": k}
            trained.append(Trained(Member.of("neurons", LABELS["neurons"], k=k), key,
                                   lambda: neuron_dictionary(ctx.host, site, k), mlp_store, mlp_site, mlp_site))
        return trained

    def extra_metrics(self, ctx: StudyContext, t: Trained, result: dict) -> dict[str, float]:
        if t.folder is None:  # the neurons: nothing to build
            return {"n_features": float(t.load().n_features), "build_seconds": 0.0}
        from diffdict.io import read_json

        return {"n_features": float(read_json(t.folder / "config.json")["n_features"]),
                "build_seconds": build_seconds(t.folder)}
