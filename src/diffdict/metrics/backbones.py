"""Image backbones that the image metrics read images with, behind one small interface.

``shapes-clip`` (the default) is the project's own offline model of the shapes world;
``open-clip``, ``lpips`` and ``inception`` (packages ``open_clip_torch``, ``lpips``,
``pytorch-fid``) come from the optional extra ``diffdict[metrics]`` and are imported only
when asked for, a missing one failing with one line naming the extra; ``clip`` is a
transformers CLIP folder or hub id. A backbone provides what it can of ``feature_maps``,
``perceptual_distance``, ``image_embeddings`` / ``text_embeddings``, ``fid_features`` and
``read(images, target)`` (the probability, or score, that a concept or text is true of
each image). Images are uint8 (N, H, W, 3) arrays or tensors.
"""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffdict.errors import DiffdictError
from diffdict.hosts import is_real_host

EXTRA = "metrics"
DEFAULT_BACKBONE = "shapes-clip"


def require(module: str, package: str, backbone: str) -> Any:
    """Import ``module`` or fail with one line naming the package and the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None)
        if missing and missing != module.split(".")[0] and not module.startswith(missing):
            raise DiffdictError(f"backbone {backbone!r}: importing {package!r} failed because {missing!r} is missing; "
                                f"pip install 'diffdict[{EXTRA}]'") from None
        raise DiffdictError(f"backbone {backbone!r} needs the package {package!r}, which is not installed: "
                            f"pip install 'diffdict[{EXTRA}]' (or pip install {package})") from None


def as_uint8(images: Any) -> Tensor:
    """uint8 (N, H, W, 3) tensor from an array or tensor of images."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise DiffdictError(f"expected uint8 images of shape (N, H, W, 3), got {shape}")
    return images


def to_unit_range(images: Any) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return as_uint8(images).permute(0, 3, 1, 2).float() / 255.0


def lpips_style(maps_a: Sequence[Tensor], maps_b: Sequence[Tensor], eps: float = 1e-10) -> Tensor:
    """(N,) Σ_layers mean_positions ‖n(a) − n(b)‖², n() unit-normalising over channels."""
    if len(maps_a) != len(maps_b) or not maps_a:
        raise DiffdictError("perceptual distance needs the same non-empty list of feature maps for both image sets")
    total = None
    for fa, fb in zip(maps_a, maps_b):
        if fa.shape != fb.shape or fa.ndim != 4:
            raise DiffdictError(f"feature maps differ or are not (N, C, H, W): {tuple(fa.shape)} and {tuple(fb.shape)}")
        na, nb = (f.double() / (f.double().pow(2).sum(1, keepdim=True).sqrt() + eps) for f in (fa, fb))
        layer = (na - nb).pow(2).sum(1).mean(dim=(1, 2))
        total = layer if total is None else total + layer
    return total


class Backbone:
    """Base class: subclasses override what they provide."""

    name = "base"

    def _unsupported(self, what: str) -> DiffdictError:
        return DiffdictError(f"backbone {self.name!r} does not provide {what}")

    def feature_maps(self, images: Any) -> list[Tensor]:
        raise self._unsupported("feature maps (for the perceptual distance)")

    def perceptual_distance(self, a: Any, b: Any) -> Tensor:
        """(N,) LPIPS-style distance from :meth:`feature_maps` (see ``image.lpips_style``)."""
        return lpips_style(self.feature_maps(a), self.feature_maps(b))

    def image_embeddings(self, images: Any) -> Tensor:
        raise self._unsupported("image embeddings (for the CLIP score)")

    def text_embeddings(self, texts: list[str]) -> Tensor:
        raise self._unsupported("text embeddings (for the CLIP score)")

    def fid_features(self, images: Any) -> Tensor:
        raise self._unsupported("features for Fréchet distances")

    def read(self, images: Any, target: str) -> Tensor:
        raise self._unsupported("concept or text readings (for causal strength)")


class ShapesClipBackbone(Backbone):
    """The shapes world's own judge. ``read``: the probability of a concept
    (``family:value``, e.g. ``color:red``, from the attribute heads) or of a text."""

    name = "shapes-clip"

    def __init__(self, model: Any = None, path: str | None = None):
        from diffdict.models.shapes_clip import ShapesClip

        self.model = model if model is not None else ShapesClip.from_pretrained(path)
        self.model.eval()

    @torch.no_grad()
    def feature_maps(self, images):
        return self.model.feature_maps(as_uint8(images))

    @torch.no_grad()
    def image_embeddings(self, images):
        return self.model.image_embeddings(as_uint8(images))

    @torch.no_grad()
    def text_embeddings(self, texts):
        return self.model.text_embeddings(list(texts))

    @torch.no_grad()
    def fid_features(self, images):
        return self.model.fid_features(as_uint8(images))

    @torch.no_grad()
    def read(self, images, target):
        images = as_uint8(images)
        if is_concept(target):
            return self.model.concept_probability(images, target)
        return self.model.text_probability(images, [target])[:, 0]

    @torch.no_grad()
    def read_concepts(self, images) -> dict[str, Tensor]:
        return self.model.read_concepts(as_uint8(images))


def is_concept(target: str) -> bool:
    """Whether ``target`` names a shapes-world concept (``family:value``)."""
    from diffdict.world import FAMILIES

    family, sep, value = target.partition(":")
    return bool(sep) and family in FAMILIES and value.replace("_", " ") in FAMILIES[family]


_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's preprocessing, when the model has none
_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class _ClipLike(Backbone):
    """What the CLIP backbones share: pixels resized to ``size`` and normalised by
    ``mean`` / ``std``; Fréchet features are the image embeddings; ``read`` is the CLIP
    score (cosine similarity) of the target text, CLIP giving no calibrated probability."""

    def _pixels(self, images: Any) -> Tensor:
        x = F.interpolate(to_unit_range(images), size=self.size, mode="bicubic", antialias=True, align_corners=False)
        return ((x.clamp(0, 1) - self.mean) / self.std).to(self.device)

    @torch.no_grad()
    def fid_features(self, images):
        return self.image_embeddings(images)

    @torch.no_grad()
    def read(self, images, target):
        return (self.image_embeddings(images) @ self.text_embeddings([target]).T)[:, 0]


class OpenClipBackbone(_ClipLike):
    """open_clip models (``model``, ``pretrained`` as open_clip names them)."""

    name = "open-clip"

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "laion2b_s34b_b79k", device: str | None = None):
        open_clip = require("open_clip", "open_clip_torch", self.name)
        self.device = _device(device)
        self.model, _, _ = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=self.device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        size = getattr(self.model.visual, "image_size", 224)
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(self.model.visual, "preprocess_cfg", None) or {}
        self.mean = torch.tensor(cfg.get("mean", _MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", _STD)).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_embeddings(self, images):
        return F.normalize(self.model.encode_image(self._pixels(images)).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts):
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float(), dim=-1).cpu()


class LpipsBackbone(Backbone):
    """The learned LPIPS distance (Zhang et al. 2018), ``net`` alex / vgg / squeeze."""

    name = "lpips"

    def __init__(self, net: str = "alex", device: str | None = None):
        lpips = require("lpips", "lpips", self.name)
        self.device = _device(device)
        self.model = lpips.LPIPS(net=net, verbose=False).to(self.device).eval()

    @torch.no_grad()
    def perceptual_distance(self, a, b):
        xa = (to_unit_range(a) * 2 - 1).to(self.device)
        xb = (to_unit_range(b) * 2 - 1).to(self.device)
        return self.model(xa, xb).reshape(-1).float().cpu()


class InceptionBackbone(Backbone):
    """Inception-v3 pool features (2048-d), as FID uses them (pytorch-fid's weights)."""

    name = "inception"

    def __init__(self, device: str | None = None):
        module = require("pytorch_fid.inception", "pytorch-fid", self.name)
        self.device = _device(device)
        block = module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
        self.model = module.InceptionV3([block]).to(self.device).eval()

    @torch.no_grad()
    def fid_features(self, images):
        return self.model(to_unit_range(images).to(self.device))[0].flatten(1).float().cpu()


class TransformersClipBackbone(_ClipLike):
    """A CLIP backbone from a transformers ``CLIPModel`` folder or hub id (``clip``):
    transformers is a core dependency, so it works offline from any ``save_pretrained``
    folder or the Hugging Face cache. ``feature_maps`` are the vision transformer's patch
    tokens per layer."""

    name = "clip"

    def __init__(self, path: str = DEFAULT_CLIP, device: str | None = None):
        from transformers import AutoTokenizer, CLIPModel

        self.device = _device(device)
        try:
            self.model = CLIPModel.from_pretrained(str(path)).to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DiffdictError(f"cannot load the CLIP backbone from {str(path)!r}: {first}") from None
        side = int(self.model.config.vision_config.image_size)
        self.size = (side, side)
        mean, std = _MEAN, _STD
        config = Path(str(path)) / "preprocessor_config.json"
        if config.is_file():
            data = json.loads(config.read_text())
            mean, std = tuple(data.get("image_mean", _MEAN)), tuple(data.get("image_std", _STD))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def image_embeddings(self, images):
        pooled = self.model.vision_model(pixel_values=self._pixels(images)).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, texts):
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1).cpu()

    @torch.no_grad()
    def feature_maps(self, images):
        hidden = self.model.vision_model(pixel_values=self._pixels(images), output_hidden_states=True).hidden_states
        side = self.size[0] // int(self.model.config.vision_config.patch_size)
        # patch tokens (the class token first is dropped) as (N, C, side, side) maps, one per layer
        return [h[:, 1:].float().cpu().transpose(1, 2).reshape(h.shape[0], -1, side, side) for h in hidden[1:]]


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "shapes-clip": ShapesClipBackbone,
    "open-clip": OpenClipBackbone,
    "clip": TransformersClipBackbone,
    "lpips": LpipsBackbone,
    "inception": InceptionBackbone,
}
_ALIASES = {"open_clip": "open-clip", "openclip": "open-clip", "shapes_clip": "shapes-clip", "fid": "inception"}
_CACHE: dict[tuple, Backbone] = {}


def load_backbone(name: "str | Backbone | None" = None, **options: Any) -> Backbone:
    """A backbone by name (cached per name and options), or the given instance."""
    if isinstance(name, Backbone):
        return name
    name = _ALIASES.get(name or DEFAULT_BACKBONE, name or DEFAULT_BACKBONE)
    if name not in BACKBONES:
        raise DiffdictError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    key = (name, tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = BACKBONES[name](**options)
    return _CACHE[key]


def backbone_available(name: str) -> tuple[bool, str]:
    """(available, reason) without loading weights: whether the backbone's package is
    installed (for shapes-clip: whether its shipped weights exist)."""
    name = _ALIASES.get(name, name)
    packages = {"open-clip": ("open_clip", "open_clip_torch"), "lpips": ("lpips", "lpips"),
                "inception": ("pytorch_fid", "pytorch-fid")}
    if name == "shapes-clip":
        path = resources.files("diffdict.models.weights").joinpath("shapes-clip", "model.safetensors")
        return (path.is_file(), "" if path.is_file() else "shapes-clip weights are not shipped yet")
    if name not in packages:
        return False, f"unknown backbone {name!r}"
    module, package = packages[name]
    if importlib.util.find_spec(module) is None:
        return False, f"{package} is not installed (pip install 'diffdict[{EXTRA}]')"
    return True, ""


def resolve_backbone(name: "str | Backbone | None", host_name: str, needed: bool = False,
                     what: str = "--target") -> "str | Backbone | None":
    """The backbone to measure with on host ``host_name``: ``auto`` is shapes-clip on the
    toy model and the CLIP backbone (open-clip) on real ones, or None (pixel metrics only,
    with a note) when that is not installed and nothing ``needed`` it; a shapes-world
    judge named on a real model is refused with a line naming the alternative. A
    :class:`Backbone` instance is the caller's explicit choice and passes as it is."""
    real = is_real_host(host_name)
    if name is None or name == "none":
        if needed:
            raise DiffdictError(f"{what} needs a backbone to read it; drop --backbone none")
        return None
    if not isinstance(name, str):
        return name
    if name in ("shapes-clip", "shapes_clip") and real:
        raise DiffdictError(f"the shapes-clip backbone reads only shapes-world images, not {host_name}'s; "
                            "use --backbone open-clip (the CLIP backbone) or --backbone none")
    if name != "auto":
        return name
    choice = "open-clip" if real else "shapes-clip"
    ok, reason = backbone_available(choice)
    if ok:
        return choice
    if needed:
        raise DiffdictError(f"{what} on {host_name} is read by the {choice} backbone, but {reason}")
    print(f"note: {reason}; pixel metrics only")
    return None


__all__ = ["BACKBONES", "Backbone", "DEFAULT_BACKBONE", "EXTRA", "InceptionBackbone", "LpipsBackbone",
           "OpenClipBackbone", "ShapesClipBackbone", "TransformersClipBackbone", "as_uint8", "backbone_available",
           "is_concept", "load_backbone", "lpips_style", "resolve_backbone", "to_unit_range"]
