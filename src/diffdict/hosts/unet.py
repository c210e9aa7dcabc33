"""Sites of a diffusers ``UNet2DConditionModel`` (the toy model, SDXL Turbo, SDXL).

Every ``Transformer2DModel`` is a site, named by where it sits: ``down.i.j`` is
``down_blocks[i].attentions[j]``, ``mid.j`` is ``mid_block.attentions[j]``, ``up.i.j`` is
``up_blocks[i].attentions[j]`` (the SDXL Turbo paper's ``down.2.1``, ``mid.0``,
``up.0.0``, ``up.0.1``). ``NAME.mlp`` is the feed-forward hidden layer (the GEGLU
output) of that block's last transformer layer (SDXL stacks up to 10 per block; the exact
module is in ``SiteInfo.module``).
"""

from __future__ import annotations

from torch import nn

from diffdict.hosts.base import SiteInfo


def _mlp_width(net0: nn.Module) -> int | None:
    """The width of a feed-forward hidden layer (None: a module of unknown kind)."""
    proj = getattr(net0, "proj", None)
    if proj is None or not hasattr(proj, "out_features"):
        return None
    gated = type(net0).__name__ in ("GEGLU", "SwiGLU")  # gated: proj gives [hidden, gate]
    return int(proj.out_features) // 2 if gated else int(proj.out_features)


def unet_sites(unet: nn.Module, latent_hw: tuple[int, int], prefix: str = "unet") -> dict[str, SiteInfo]:
    """Sites of ``unet`` when its input is ``latent_hw`` (rows, cols)."""
    sites: dict[str, SiteInfo] = {}
    h, w = latent_hw

    def add(name: str, path: str, attn: nn.Module, hw: tuple[int, int]) -> None:
        d = int(attn.config.in_channels)
        sites[name] = SiteInfo(name, d, hw, f"{prefix}.{path}", "unet-block")
        blocks = getattr(attn, "transformer_blocks", None)
        if blocks and hasattr(blocks[-1], "ff") and blocks[-1].ff is not None:
            width = _mlp_width(blocks[-1].ff.net[0])
            if width is not None:
                module = f"{prefix}.{path}.transformer_blocks.{len(blocks) - 1}.ff.net.0"
                sites[f"{name}.mlp"] = SiteInfo(f"{name}.mlp", width, hw, module, "mlp")

    for i, block in enumerate(unet.down_blocks):
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            add(f"down.{i}.{j}", f"down_blocks.{i}.attentions.{j}", attn, (h, w))
        if getattr(block, "downsamplers", None):
            h, w = (h + 1) // 2, (w + 1) // 2
    for j, attn in enumerate(getattr(unet.mid_block, "attentions", None) or []):
        add(f"mid.{j}", f"mid_block.attentions.{j}", attn, (h, w))
    for i, block in enumerate(unet.up_blocks):
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            add(f"up.{i}.{j}", f"up_blocks.{i}.attentions.{j}", attn, (h, w))
        if getattr(block, "upsamplers", None):
            h, w = h * 2, w * 2
    return sites
