"""Interpretation: feature statistics in one streaming pass, top examples with heatmaps,
explainers and scorers (concept oracle, VLM, CLIP), and the ``interpret`` pipeline."""

from diffdict.interpret.base import (EXPLAINERS, SCORERS, Explainer, Explanation, FeatureView, InterpretContext, Scorer,
                                     make_explainer, make_scorer, register_explainer, register_scorer)
from diffdict.interpret.groundtruth import CONCEPTS, concept_phrase, oracle_results, pixel_concepts, token_concepts
from diffdict.interpret.run import interpret, load_for_store, load_interpretation
from diffdict.interpret.stats import Example, ActivationStats, activation_maps, compute_activation_stats
from diffdict.interpret.visualize import overlay_heatmap, top_images_grid
from diffdict.interpret.vlm import VlmClient, VlmConfig

import diffdict.interpret.explainers  # noqa: E402,F401  (registers the built-in explainers)
import diffdict.interpret.scorers  # noqa: E402,F401

__all__ = [
    "CONCEPTS", "EXPLAINERS", "SCORERS", "Example", "Explainer", "Explanation", "ActivationStats", "FeatureView",
    "InterpretContext", "Scorer", "VlmClient", "VlmConfig", "activation_maps", "compute_activation_stats",
    "concept_phrase", "interpret", "load_for_store", "load_interpretation", "make_explainer", "make_scorer",
    "oracle_results", "overlay_heatmap", "pixel_concepts", "register_explainer", "register_scorer", "token_concepts",
    "top_images_grid",
]
