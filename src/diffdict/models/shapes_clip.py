"""shapes-clip: a small image-text model of the shapes world, the offline judge.

An image CNN and the world's text encoder trained with a sigmoid contrastive loss on
"text j is true of image i" (captions, partial captions and concept phrases), plus
attribute heads. It gives the offline CLIP score, features for Fréchet and perceptual
(LPIPS-style) distances, and each concept family's probabilities for any image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffdict.errors import DiffdictError
from diffdict.models.text_encoder import ModelConfig, ShippedModel, TextEncoder, TextEncoderConfig
from diffdict.world import DEFAULT_SIZE, FAMILIES, encode_prompts
from diffdict.world.concepts import OBJECT_FAMILIES

# object families are multi-label (two objects may differ); scene families single-label
HEADS: dict[str, int] = {**{f: len(v) for f, v in FAMILIES.items()}, "n_objects": 2}


@dataclass
class ShapesClipConfig(ModelConfig):
    image_size: int = DEFAULT_SIZE
    channels: tuple[int, ...] = (32, 64, 128, 256)
    feature_dim: int = 256
    embed_dim: int = 128
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
    )


class ShapesClip(ShippedModel):
    weights_folder = "shapes-clip"
    config_class = ShapesClipConfig
    label = the_label = "shapes-clip"
    train_command = "train-clip"

    def __init__(self, config: ShapesClipConfig | None = None):
        super().__init__()
        self.config = config = config or ShapesClipConfig()
        chans = config.channels
        self.stages = nn.ModuleList(
            [_block(3, chans[0], 1)] + [_block(chans[i - 1], chans[i], 2) for i in range(1, len(chans))]
        )
        final = config.image_size // 2 ** (len(chans) - 1)
        # flatten (not pool) the last map so that position survives into the features
        self.image_head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * final * final, config.feature_dim), nn.SiLU(),
                                        nn.Linear(config.feature_dim, config.feature_dim))
        self.image_projection = nn.Linear(config.feature_dim, config.embed_dim)
        self.text_encoder = TextEncoder(config.text)
        self.text_projection = nn.Linear(config.text.width, config.embed_dim)
        self.attribute_heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, n) for name, n in HEADS.items()})
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))

    # -- encoders ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def to_pixels(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float (N, 3, H, W) in [-1, 1] -> float (N, 3, H, W)."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.dtype == torch.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise DiffdictError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return images.to(self.device)

    def _stage_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        maps, h = [], pixels
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_head(self._stage_maps(pixels)[-1])

    def image_embeddings(self, images) -> torch.Tensor:
        """Unit-norm image embeddings (N, embed_dim)."""
        return F.normalize(self.image_projection(self.image_features(self.to_pixels(images))), dim=-1)

    def fid_features(self, images) -> torch.Tensor:
        """Penultimate image features (N, feature_dim), used for Fréchet distances."""
        return self.image_features(self.to_pixels(images))

    def feature_maps(self, images) -> list[torch.Tensor]:
        """Per-stage feature maps (for the perceptual distance)."""
        return self._stage_maps(self.to_pixels(images))

    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        ids = torch.from_numpy(encode_prompts(texts, self.config.text.context_length)).to(self.device)
        hidden = self.text_encoder(ids)
        mask = (ids != 0).float().unsqueeze(-1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(self.text_projection(pooled), dim=-1)

    # -- readings ---------------------------------------------------------------------
    def pair_logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return image_emb @ text_emb.T * self.logit_scale.exp() + self.logit_bias

    @torch.no_grad()
    def similarity(self, images, texts: list[str]) -> torch.Tensor:
        """Cosine similarity (N_images, N_texts): the offline CLIP score."""
        return self.image_embeddings(images) @ self.text_embeddings(texts).T

    @torch.no_grad()
    def text_probability(self, images, texts: list[str]) -> torch.Tensor:
        """Probability (N_images, N_texts) that each text is true of each image."""
        return torch.sigmoid(self.pair_logits(self.image_embeddings(images), self.text_embeddings(texts)))

    @torch.no_grad()
    def read_concepts(self, images) -> dict[str, torch.Tensor]:
        """Per family, probabilities (N, n_values): sigmoid for object families (several
        objects may be present), softmax for the background families."""
        features = self.image_features(self.to_pixels(images))
        logits = {name: head(features) for name, head in self.attribute_heads.items()}
        return {family: torch.sigmoid(value) if family in OBJECT_FAMILIES else torch.softmax(value, -1)
                for family, value in logits.items()}

    @torch.no_grad()
    def read_labels(self, images) -> list[dict[str, str]]:
        """The most likely value of each family per image (for one-object images)."""
        probs = self.read_concepts(images)
        return [{f: FAMILIES[f][int(probs[f][i].argmax())] for f in FAMILIES}
                for i in range(next(iter(probs.values())).shape[0])]

    def concept_probability(self, images, concept: str) -> torch.Tensor:
        """Probability (N,) of one concept ``family:value`` (e.g. ``color:red``)."""
        family, _, value = concept.partition(":")
        value = value.replace("_", " ")
        if family not in FAMILIES or value not in FAMILIES[family]:
            raise DiffdictError(f"unknown concept {concept!r}; expected family:value with family in {', '.join(FAMILIES)}")
        return self.read_concepts(images)[family][:, FAMILIES[family].index(value)]

