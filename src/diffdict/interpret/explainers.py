"""Explainers: a feature's visualisations -> one short explanation.

- ``concept-oracle`` (shapes world): the ground-truth concept whose token-level mask best
  matches the feature's activations (highest AUROC on half of the images; see
  :mod:`diffdict.interpret.groundtruth`), phrased in the world's words.
- ``vlm``: a vision-language model behind any OpenAI-compatible endpoint is shown ~5 top
  images, each as original | heatmap overlay, and asked for the common concept (the Flux
  paper's explainer, §5.2).
"""

from __future__ import annotations

from diffdict.errors import DiffdictError
from diffdict.interpret.base import Explainer, Explanation, FeatureView, InterpretContext, register_explainer
from diffdict.interpret.groundtruth import oracle_results
from diffdict.interpret.visualize import example_pair
from diffdict.interpret.vlm import VlmClient, parse_explanation, user_message

EXPLAINER_PROMPT = (
    "We are studying a feature inside a text-to-image diffusion model. Below are {n} images on which the "
    "feature is most active. Each is shown twice, side by side: the generated image on the left, and on the "
    "right the same image with a heatmap of the feature's activation laid over it (bright yellow = strongly "
    "active, dark or no colour = inactive). Look at what the highlighted regions have in common across the "
    "images: an object, a colour, a shape, a texture, a position, a style. Reply with one short phrase "
    "(at most 10 words) naming that concept, and nothing else."
)


@register_explainer
class ConceptOracleExplainer(Explainer):
    name = "concept-oracle"

    def prepare(self, context: InterpretContext, features: list[int]) -> None:
        oracle_results(context, features)

    def explain(self, view: FeatureView) -> Explanation:
        result = oracle_results(view.context, [view.feature])[view.feature]
        return Explanation(result["phrase"], self.name, {"concept": result["concept"],
                                                         "auroc_explain_half": result["auroc_explain_half"],
                                                         "runners_up": result["runners_up"]})


@register_explainer
class VlmExplainer(Explainer):
    name = "vlm"

    def __init__(self, client: VlmClient | None = None, n_images: int = 5):
        self.client = client if client is not None else VlmClient()
        self.n_images = n_images

    def explain(self, view: FeatureView) -> Explanation:
        shown = [e for e in view.examples if e.image is not None][: self.n_images]
        if not shown:
            raise DiffdictError(f"feature {view.feature} has no top images to show the VLM")
        pairs = [example_pair(e.image, e.map, view.vmax) for e in shown]
        text = self.client.chat([user_message(EXPLAINER_PROMPT.format(n=len(pairs)), pairs)], parse=parse_explanation)
        return Explanation(text, self.name, {"images_shown": [e.prompt_id for e in shown],
                                             "model": self.client.config.model})
