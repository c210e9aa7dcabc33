"""A CLIP backbone from a transformers ``CLIPModel`` folder or hub id (``--backbone clip``).

transformers is a core dependency (diffusers' text encoders use it), so this judge works
offline from any ``save_pretrained`` CLIP folder or the Hugging Face cache, e.g.
``openai/clip-vit-large-patch14`` (the text encoder of SD 1.x). ``read`` is the CLIP score
(cosine similarity of image and text embeddings), as for ``open-clip``: CLIP gives no
calibrated probability. ``feature_maps`` are the vision transformer's patch tokens per
layer, for the LPIPS-style perceptual distance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffdict.errors import DiffdictError
from diffdict.metrics.backbones import Backbone, to_unit_range

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's preprocessing, when the folder has none
_STD = (0.26862954, 0.26130258, 0.27577711)


class TransformersClipBackbone(Backbone):
    name = "clip"

    def __init__(self, path: str = DEFAULT_CLIP, device: str | None = None):
        from transformers import AutoTokenizer, CLIPModel

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = CLIPModel.from_pretrained(str(path)).to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DiffdictError(f"cannot load the CLIP backbone from {str(path)!r}: {first}") from None
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = _preprocessing(Path(str(path)))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def _pixels(self, images: Any) -> Tensor:
        x = F.interpolate(to_unit_range(images), size=(self.size, self.size), mode="bicubic", antialias=True,
                          align_corners=False)
        return ((x.clamp(0, 1) - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def image_embeddings(self, images):
        pooled = self.model.vision_model(pixel_values=self._pixels(images)).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts):
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1).cpu()

    @torch.no_grad()
    def fid_features(self, images):
        return self.image_embeddings(images)

    @torch.no_grad()
    def feature_maps(self, images):
        hidden = self.model.vision_model(pixel_values=self._pixels(images), output_hidden_states=True).hidden_states
        side = self.size // int(self.model.config.vision_config.patch_size)
        # patch tokens (the class token first is dropped) as (N, C, side, side) maps, one per layer
        return [h[:, 1:].float().cpu().transpose(1, 2).reshape(h.shape[0], -1, side, side) for h in hidden[1:]]

    @torch.no_grad()
    def read(self, images, target):
        return (self.image_embeddings(images) @ self.text_embeddings([target]).T)[:, 0]


def _preprocessing(folder: Path) -> tuple[tuple, tuple]:
    config = folder / "preprocessor_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        return tuple(data.get("image_mean", _MEAN)), tuple(data.get("image_std", _STD))
    return _MEAN, _STD


__all__ = ["DEFAULT_CLIP", "TransformersClipBackbone"]
