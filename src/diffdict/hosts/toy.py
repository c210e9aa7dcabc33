"""The toy shapes-world model (:mod:`diffdict.models.toy`) as a host.

Sites as for SDXL (``down.1.0``, ``down.2.0``, ``mid.0``, ``up.0.0``, ``up.0.1``,
``up.1.0``, ``up.1.1`` with the default config, each also with ``.mlp``); CFG as a batch
[unconditional; conditional], so hooks see the conditional half.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from diffdict.errors import DiffdictError
from diffdict.hosts.base import HostModel, SiteInfo, check_device, parse_dtype
from diffdict.hosts.unet import unet_sites
from diffdict.io import weights_fingerprint
from diffdict.world import encode_prompts


class ToyHost(HostModel):
    name = "toy"
    default_steps = 10
    # shapes-clip reads the 6-step images as well as the 10-step ones (README, "Quality of
    # the shipped models"), and the studies spend most of their time generating
    study_steps = 6
    default_guidance = 3.0
    shapes_world = True
    default_judge = "shapes-clip"

    def __init__(self, model=None, path: str | Path | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, image_size: int | None = None):
        """``model``: a ``ToyDiffusion`` or a saved ToyDiffusion folder (``path`` is an
        alias), as for the real hosts; default: the shipped weights."""
        super().__init__()
        from diffdict.models.toy import ToyDiffusion

        if isinstance(model, (str, os.PathLike)):
            model, path = None, model
        device = check_device(device)
        self.source = str(path) if path is not None else ("shipped" if model is None else "in-memory")
        if model is None:
            model = ToyDiffusion.from_pretrained(path)
        elif not isinstance(model, ToyDiffusion):
            raise DiffdictError(f"toy host expects a ToyDiffusion model, got {type(model).__name__}")
        if parse_dtype(dtype or "float32", device) != torch.float32:
            raise DiffdictError(f"the toy model runs in float32, not {dtype}")
        self.model = model.to(device=device).eval()
        if image_size is not None:
            self.model.check_image_size(int(image_size))
        self._fingerprint: str | None = None
        self._sites = unet_sites(self.model.unet, self.image_size)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.config.image_size
        return (size, size)

    @property
    def current_step(self) -> int | None:
        return self.model.current_step

    def sites(self) -> dict[str, SiteInfo]:
        return dict(self._sites)

    def components(self) -> dict[str, nn.Module]:
        return {"unet": self.model.unet, "text_encoder": self.model.text_encoder}

    def uses_cfg(self, guidance: float) -> bool:
        return guidance != 1.0

    def check_prompts(self, prompts: Sequence[str]) -> None:
        super().check_prompts(prompts)
        encode_prompts(list(prompts), self.model.config.text.context_length)

    def describe(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model.state_dict())
        # the weights' fingerprint, not the folder they came from, so a moved folder resumes
        return {"host": self.name, "weights": self._fingerprint,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "image_size": list(self.image_size)}

    def _generate(self, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                  on_step: Callable[[int], None] | None) -> np.ndarray:
        return self.model.generate(prompts, seeds=seeds, steps=steps, guidance=guidance, on_step=on_step)
