"""Tiny randomly initialised pipelines of the real diffusers classes (SD 1.x, SDXL, FLUX)
with tiny text encoders built from configs and word-level tokenizers written here; shared
by the host and CLI tests. Building them takes a second; no weights are downloaded."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

WORDS = ("a an the red green blue yellow circle square triangle on at of big small left right top "
         "photo dog cat car").split()
SIZE = 16


def word_tokenizer(max_length: int, bos: bool = True) -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<bos> $A <eos>" if bos else "$A <eos>"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, pad_token="<pad>",
                                   bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def clip_config() -> CLIPTextConfig:
    return CLIPTextConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=16, intermediate_size=32,
                          num_attention_heads=2, num_hidden_layers=2, vocab_size=64, max_position_embeddings=16,
                          projection_dim=16, hidden_act="gelu")


def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=4, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 4 + 16, cross_attention_dim=32, norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), unet=unet, scheduler=scheduler,
        text_encoder=CLIPTextModel(clip_config()), text_encoder_2=CLIPTextModelWithProjection(clip_config()),
        tokenizer=word_tokenizer(16), tokenizer_2=word_tokenizer(16),
    )


def tiny_flux_pipeline() -> FluxPipeline:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=16, axes_dims_rope=[2, 2, 4],
    )
    vae = AutoencoderKL(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=2))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=CLIPTextModel(clip_config()), tokenizer=word_tokenizer(16),
        text_encoder_2=t5, tokenizer_2=word_tokenizer(24, bos=False),
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, sample_size=SIZE)


def tiny_sd_pipeline() -> StableDiffusionPipeline:
    """SD 1.x layout: one CLIP text encoder (hidden 16 = the UNet's cross-attention width)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return StableDiffusionPipeline(vae=tiny_vae(), unet=unet, scheduler=scheduler, text_encoder=CLIPTextModel(clip_config()),
                                   tokenizer=word_tokenizer(16), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)



def save_tiny_clip(folder) -> None:
    """A random transformers CLIPModel (32 px images) and its word tokenizer, saved as a folder."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=64,
                max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    word_tokenizer(16).save_pretrained(folder)
