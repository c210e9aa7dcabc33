"""A small transformer text encoder over the shapes world's closed vocabulary.

Used by the toy diffusion model (its hidden states feed cross-attention, as CLIP's do
in SDXL) and by shapes-clip (mean-pooled into one embedding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from diffdict.world import CONTEXT_LENGTH, VOCAB, encode_prompts


@dataclass
class TextEncoderConfig:
    vocab_size: int = len(VOCAB)
    context_length: int = CONTEXT_LENGTH
    width: int = 128
    layers: int = 2
    heads: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


class TextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.randn(config.context_length, config.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            config.width, config.heads, dim_feedforward=4 * config.width, dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(config.width)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, width) hidden states."""
        hidden = self.token_embedding(token_ids) + self.position_embedding[: token_ids.shape[1]]
        return self.final_norm(self.transformer(hidden))

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.from_numpy(encode_prompts(prompts, self.config.context_length))
        return self(ids.to(self.position_embedding.device))
