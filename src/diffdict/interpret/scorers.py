"""Scorers: an explanation + the feature's examples -> scores (``"score"`` is the primary one).

- ``concept-oracle``: the ground-truth interpretability score in the shapes world: AUROC
  (and F1 at the threshold chosen on the other half) of the feature's token activations
  against the mask of the oracle's concept, on the held-out half of the images. When the
  explanation came from another explainer and names a concept of the world (e.g. "red"),
  that concept's mask is used instead.
- ``vlm``: the Flux paper's detection judge: 5 images that activate the feature (not the
  ones shown to the explainer when there are enough) and 5 top images of other features,
  each scored 0-1 by the VLM against the explanation; score = the balanced mean,
  (mean s_activating + mean (1 - s_other)) / 2.
- ``clip``: the SDXL Turbo paper's score: CLIP similarity between the explanation and the
  feature's visualisations (its top images, and its icon when there is one), with the
  offline shapes-clip backbone; ``contrast`` subtracts the similarity to other features'
  top images. shapes-clip reads only the world's vocabulary: other words are dropped.
"""

from __future__ import annotations

import math

import numpy as np

from diffdict.interpret.base import Explanation, FeatureView, InterpretContext, Scorer, register_scorer
from diffdict.interpret.groundtruth import CONCEPTS, concept_phrase, oracle_results
from diffdict.interpret.vlm import VlmClient, parse_score, user_message
from diffdict.world.captions import PAD, WORD_TO_ID

JUDGE_PROMPT = (
    "We are testing an explanation of a feature inside a text-to-image diffusion model. The explanation is: "
    "\"{explanation}\". Look at the image below. How clearly does it contain what the explanation describes? "
    "Reply with a single number between 0 and 1 (0 = not at all, 1 = clearly), and nothing else."
)


def _concept_from_text(text: str) -> str | None:
    wanted = " ".join(text.lower().split())
    return next((concept for concept in CONCEPTS if concept_phrase(concept) == wanted), None)


@register_scorer
class ConceptOracleScorer(Scorer):
    name = "concept-oracle"

    def prepare(self, context: InterpretContext, features: list[int]) -> None:
        oracle_results(context, features)

    def score(self, explanation: Explanation, view: FeatureView) -> dict:
        result = oracle_results(view.context, [view.feature])[view.feature]
        concept = explanation.details.get("concept") if explanation.source == "concept-oracle" else None
        concept = concept or _concept_from_text(explanation.text)
        out = {"score": result["auroc"], "auroc": result["auroc"], "f1": result["f1"], "concept": result["concept"],
               "held_out": result["held_out"]}
        if concept is not None and concept != result["concept"]:
            out["note"] = f"the explanation names {concept}; the best matching concept is {result['concept']}"
            out["score"] = out["auroc"] = None
            for r in result["runners_up"]:
                if r["concept"] == concept:
                    out["score"] = out["auroc"] = r["auroc"]
        elif concept is None and explanation.source != "concept-oracle":
            out["note"] = "the explanation names no concept of the shapes world; scores are the best concept's"
        return out


@register_scorer
class VlmDetectionScorer(Scorer):
    name = "vlm"

    def __init__(self, client: VlmClient | None = None, n_activating: int = 5, n_other: int = 5, n_shown: int = 5,
                 scale: int = 4):
        self.client = client if client is not None else VlmClient()
        self.n_activating, self.n_other, self.n_shown, self.scale = n_activating, n_other, n_shown, scale

    def _judge(self, text: str, image: np.ndarray) -> float:
        big = np.asarray(image).repeat(self.scale, 0).repeat(self.scale, 1)
        return self.client.chat([user_message(JUDGE_PROMPT.format(explanation=text), [big])], parse=parse_score)

    def score(self, explanation: Explanation, view: FeatureView) -> dict:
        examples = [e for e in view.examples if e.image is not None]
        shown = set(explanation.details.get("images_shown", []))
        fresh = [e for e in examples if e.prompt_id not in shown]
        activating = (fresh if len(fresh) >= self.n_activating else examples)[: self.n_activating]
        others = view.context.other_examples(view.feature, self.n_other, {e.prompt_id for e in activating})
        s_act = [self._judge(explanation.text, e.image) for e in activating]
        s_other = [self._judge(explanation.text, e.image) for e in others]
        score = (float(np.mean([float(np.mean(s_act)), float(np.mean([1 - s for s in s_other]))]))
                 if s_act and s_other else None)
        return {"score": score, "activating": s_act, "other": s_other,
                "activating_ids": [e.prompt_id for e in activating], "other_ids": [e.prompt_id for e in others]}


def in_vocabulary(text: str) -> str:
    """The words of ``text`` that shapes-clip's text encoder knows, in order."""
    words = [w.strip(".,;:!?\"'()") for w in text.lower().split()]
    return " ".join(w for w in words if w in WORD_TO_ID and w != PAD)


@register_scorer
class ClipScorer(Scorer):
    name = "clip"

    def __init__(self, n_other: int = 8):
        self.n_other = n_other

    def score(self, explanation: Explanation, view: FeatureView) -> dict:
        text = in_vocabulary(explanation.text)
        if not text:
            return {"score": None, "note": f"no word of {explanation.text!r} is in shapes-clip's vocabulary"}
        clip = view.context.shapes_clip()
        images = [e.image for e in view.examples if e.image is not None]
        if view.icon is not None:
            images.append(view.icon)
        if not images:
            return {"score": None, "note": "no visualisations"}
        own = clip.similarity(np.stack(images), [text])[:, 0].float()
        others = view.context.other_examples(view.feature, self.n_other)
        out = {"score": float(own.mean()), "similarity": float(own.mean()), "text": text}
        if others:
            other = clip.similarity(np.stack([e.image for e in others]), [text])[:, 0].float()
            out["contrast"] = float(own.mean() - other.mean())
        return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in out.items()}
