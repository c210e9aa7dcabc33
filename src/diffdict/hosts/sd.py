"""The UNet pipeline hosts: Stable Diffusion 1.x (diffusers ``StableDiffusionPipeline``),
SDXL base and SDXL Turbo (``StableDiffusionXLPipeline``).

Sites (:func:`diffdict.hosts.unet.unet_sites`): every UNet ``Transformer2DModel``
(``down.i.j``, ``mid.0``, ``up.i.j``) and its MLP neurons (``NAME.mlp``). SDXL Turbo's
paper uses ``down.2.1``, ``mid.0``, ``up.0.0``, ``up.0.1`` (16x16, d=1280 at 512x512).
SD 1.5 at 512x512 has transformer blocks at every resolution (``down.0.0`` .. ``down.2.1``
at 64..16 latent cells, ``mid.0`` at 8x8, ``up.1.0`` .. ``up.3.2``); it is the model
SAeUron and UnlearnCanvas use. SDXL Turbo: 1 step, guidance 0 (no CFG). SD and SDXL base:
classifier-free guidance as a batch [unconditional; conditional]; hooks read and edit the
conditional half.
"""

from __future__ import annotations

from typing import Sequence

from diffdict.hosts.base import SiteInfo
from diffdict.hosts.diffusers_host import PipelineHost
from diffdict.hosts.unet import unet_sites


class UNetPipelineHost(PipelineHost):
    """A diffusers pipeline whose denoiser is a ``UNet2DConditionModel``."""

    def sites(self) -> dict[str, SiteInfo]:
        scale = int(self.pipe.vae_scale_factor)
        return unet_sites(self.pipe.unet, (self._size[0] // scale, self._size[1] // scale))

    def size_multiple(self) -> int:
        # the latent must survive every down-sampling of the UNet
        downs = sum(1 for b in self.pipe.unet.down_blocks if getattr(b, "downsamplers", None))
        return int(self.pipe.vae_scale_factor) * 2**downs

    def uses_cfg(self, guidance: float) -> bool:
        # the pipelines' do_classifier_free_guidance
        return guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def check_prompts(self, prompts: Sequence[str]) -> None:
        super().check_prompts(prompts)
        for tokenizer in (getattr(self.pipe, "tokenizer", None), getattr(self.pipe, "tokenizer_2", None)):
            if tokenizer is not None:
                self._check_token_length(prompts, tokenizer, int(tokenizer.model_max_length), "CLIP")
                break  # both SDXL tokenizers split text the same way


class SDHost(UNetPipelineHost):
    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    default_image_size = 512
    default_steps = 50
    default_guidance = 7.5
    quantize_components = ["unet"]


class SDXLHost(UNetPipelineHost):
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    default_model = "stabilityai/stable-diffusion-xl-base-1.0"
    default_image_size = 1024
    default_steps = 50
    default_guidance = 5.0
    quantize_components = ["unet", "text_encoder_2"]


class SDXLTurboHost(SDXLHost):
    name = "sdxl-turbo"
    default_model = "stabilityai/sdxl-turbo"
    default_image_size = 512
    default_steps = 1
    default_guidance = 0.0
