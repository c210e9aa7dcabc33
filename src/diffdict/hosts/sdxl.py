"""SDXL Turbo and SDXL base (diffusers ``StableDiffusionXLPipeline``) as hosts.

Sites: every UNet ``Transformer2DModel`` (``down.i.j``, ``mid.0``, ``up.i.j``; the SDXL
Turbo paper's ``down.2.1``, ``mid.0``, ``up.0.0``, ``up.0.1``; 16x16, d=1280 at 512x512)
and their MLP neurons (``NAME.mlp``). SDXL Turbo: 1 step, guidance 0 (no CFG). SDXL base:
classifier-free guidance as a batch [unconditional; conditional]; hooks read and edit the
conditional half.
"""

from __future__ import annotations

from typing import Sequence

from diffdict.hosts.base import SiteInfo
from diffdict.hosts.pipeline import PipelineHost
from diffdict.hosts.unet import unet_sites


class SDXLHost(PipelineHost):
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    denoiser = "unet"
    default_model = "stabilityai/stable-diffusion-xl-base-1.0"
    default_image_size = 1024
    default_steps = 50
    default_guidance = 5.0
    quantize_components = ["unet", "text_encoder_2"]

    def sites(self) -> dict[str, SiteInfo]:
        scale = int(self.pipe.vae_scale_factor)
        return unet_sites(self.pipe.unet, (self._size[0] // scale, self._size[1] // scale))

    def size_multiple(self) -> int:
        # the latent must survive every down-sampling of the UNet
        downs = sum(1 for b in self.pipe.unet.down_blocks if getattr(b, "downsamplers", None))
        return int(self.pipe.vae_scale_factor) * 2**downs

    def uses_cfg(self, guidance: float) -> bool:
        # StableDiffusionXLPipeline.do_classifier_free_guidance
        return guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def check_prompts(self, prompts: Sequence[str]) -> None:
        super().check_prompts(prompts)
        for tokenizer in (self.pipe.tokenizer, self.pipe.tokenizer_2):
            if tokenizer is not None:
                self._check_token_length(prompts, tokenizer, int(tokenizer.model_max_length), "CLIP")
                break  # both SDXL tokenizers split text the same way


class SDXLTurboHost(SDXLHost):
    name = "sdxl-turbo"
    default_model = "stabilityai/sdxl-turbo"
    default_image_size = 512
    default_steps = 1
    default_guidance = 0.0
