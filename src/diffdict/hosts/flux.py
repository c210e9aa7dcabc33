"""FLUX.1 schnell (diffusers ``FluxPipeline``) as a host.

Sites (residual stream after a block, image tokens only, 16x16 at 256x256):

- ``double.N``: the image stream output of ``transformer.transformer_blocks[N]``
  (the Flux paper's main site is ``double.18``, d = 3072);
- ``single.N``: ``transformer.single_transformer_blocks[N]``, image tokens only (the
  text tokens come first in the joint sequence and are dropped);
- ``double.N.mlp``: the GELU units of the image stream's MLP, ``ff.net[0]`` (12,288);
- ``single.N.mlp``: the GELU units of the single block's MLP branch (``proj_mlp`` then
  ``act_mlp``), image tokens only.

Schnell is guidance-distilled: no CFG batch, guidance is ignored (default 0); 1 step at
256x256 as in the Flux paper. ``quantize='nf4'`` loads the transformer and T5 in 4-bit
NormalFloat through diffusers' bitsandbytes support (extra ``diffdict[real]``).
"""

from __future__ import annotations

from typing import Sequence

from diffdict.hosts.base import SiteInfo
from diffdict.hosts.diffusers_host import PipelineHost


class FluxSchnellHost(PipelineHost):
    name = "flux-schnell"
    pipeline_class = "FluxPipeline"
    denoiser = "transformer"
    default_model = "black-forest-labs/FLUX.1-schnell"
    default_image_size = 256
    default_steps = 1
    default_guidance = 0.0
    quantize_components = ["transformer", "text_encoder_2"]
    cuda_dtype = "bfloat16"  # FLUX overflows in float16

    def __init__(self, *args, max_sequence_length: int = 256, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_sequence_length = int(max_sequence_length)

    def size_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor) * 2  # VAE downsampling, then 2x2 patches

    def sites(self) -> dict[str, SiteInfo]:
        transformer = self.pipe.transformer
        cell = self.size_multiple()
        grid = (self._size[0] // cell, self._size[1] // cell)
        d = int(transformer.inner_dim)
        sites: dict[str, SiteInfo] = {}
        for kind, attr in (("double", "transformer_blocks"), ("single", "single_transformer_blocks")):
            for n in range(len(getattr(transformer, attr))):
                sites[f"{kind}.{n}"] = SiteInfo(f"{kind}.{n}", d, grid, f"transformer.{attr}.{n}", "dit-block")
        for n, block in enumerate(transformer.transformer_blocks):
            sites[f"double.{n}.mlp"] = SiteInfo(f"double.{n}.mlp", int(block.ff.net[0].proj.out_features), grid,
                                                f"transformer.transformer_blocks.{n}.ff.net.0", "mlp")
        for n, block in enumerate(transformer.single_transformer_blocks):
            sites[f"single.{n}.mlp"] = SiteInfo(f"single.{n}.mlp", int(block.mlp_hidden_dim), grid,
                                                f"transformer.single_transformer_blocks.{n}.act_mlp", "mlp")
        return sites

    def uses_cfg(self, guidance: float) -> bool:
        return False  # no true-CFG pass is run (no negative prompt)

    def check_prompts(self, prompts: Sequence[str]) -> None:
        super().check_prompts(prompts)
        tokenizer = self.pipe.tokenizer_2
        if tokenizer is not None:
            self._check_token_length(prompts, tokenizer, self.max_sequence_length, "T5")

    def describe(self) -> dict:
        return {**super().describe(), "max_sequence_length": self.max_sequence_length}

    def pipeline_kwargs(self, steps: int, guidance: float) -> dict:
        return {**super().pipeline_kwargs(steps, guidance), "max_sequence_length": self.max_sequence_length}
