"""Models that ship with diffdict: the toy text-to-image model and shapes-clip.

Both load from safetensors inside the package with no network. ``load_model(name)``
is the registry; host-model adapters (toy, SDXL, FLUX) live in ``diffdict.hosts``.
"""

from __future__ import annotations

from pathlib import Path

from diffdict.errors import DiffdictError
from diffdict.models.shapes_clip import ShapesClip, ShapesClipConfig
from diffdict.models.toy import ToyConfig, ToyDiffusion

MODELS = {"toy": ToyDiffusion, "shapes-clip": ShapesClip}


def load_model(name: str, path: str | Path | None = None):
    """A shipped model by name (``toy`` or ``shapes-clip``), from ``path`` if given."""
    if name not in MODELS:
        raise DiffdictError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name].from_pretrained(path)


__all__ = ["MODELS", "ShapesClip", "ShapesClipConfig", "ToyConfig", "ToyDiffusion", "load_model"]
