"""A small transformer text encoder over the shapes world's closed vocabulary.

Used by the toy diffusion model (its hidden states feed cross-attention, as CLIP's do
in SDXL) and by shapes-clip (mean-pooled into one embedding). Also what both shipped
models share: their configs' dict form and their folders (``config.json`` +
``model.safetensors``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from diffdict.errors import DiffdictError
from diffdict.io import load_tensors, read_json, save_tensors, write_json
from diffdict.world import CONTEXT_LENGTH, VOCAB, encode_prompts


@dataclass
class TextEncoderConfig:
    vocab_size: int = len(VOCAB)
    context_length: int = CONTEXT_LENGTH
    width: int = 128
    layers: int = 2
    heads: int = 4


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


class ModelConfig:
    """A shipped model's config (a dataclass with a ``text`` encoder config); tuples are
    lists in its dict form."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict):
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**{**data, "text": TextEncoderConfig(**data.get("text", {}))})


class ShippedModel(nn.Module):
    """Saving and loading of a shipped model; subclasses name their folder and config."""

    weights_folder: str  # in diffdict.models.weights
    config_class: type
    label: str  # as in "LABEL weights not found"
    the_label: str  # as in "do not match THE_LABEL"
    train_command: str

    def save_pretrained(self, folder: str | Path, dtype: torch.dtype = torch.float16) -> None:
        folder = Path(folder)
        write_json(folder / "config.json", self.config.to_dict())
        save_tensors(folder / "model.safetensors", {k: v.to(dtype) for k, v in self.state_dict().items()})

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None):
        """Load from a folder (``config.json`` + ``model.safetensors``); no argument loads
        the weights shipped inside the package."""
        if folder is None:
            folder = Path(str(resources.files("diffdict.models.weights").joinpath(cls.weights_folder)))
        folder = Path(folder)
        if not (folder / "model.safetensors").exists():
            raise DiffdictError(f"{cls.label} weights not found in {folder}; "
                                f"train them with 'diffdict world {cls.train_command}'")
        model = cls(cls.config_class.from_dict(read_json(folder / "config.json")))
        state = load_tensors(folder / "model.safetensors")
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise DiffdictError(f"weights in {folder} do not match {cls.the_label}: {first}") from None
        return model.eval()
