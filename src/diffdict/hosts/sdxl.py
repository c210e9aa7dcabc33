"""SDXL Turbo and SDXL base (diffusers ``StableDiffusionXLPipeline``) as hosts.

Sites: every UNet ``Transformer2DModel`` (``down.i.j``, ``mid.0``, ``up.i.j``; the SDXL
Turbo paper's ``down.2.1``, ``mid.0``, ``up.0.0``, ``up.0.1``; 16x16, d=1280 at 512x512)
and their MLP neurons (``NAME.mlp``). SDXL Turbo: 1 step, guidance 0 (no CFG). SDXL base:
classifier-free guidance as a batch [unconditional; conditional]; hooks read and edit the
conditional half.
"""

from __future__ import annotations

from diffdict.hosts.sd import UNetPipelineHost


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
