"""Metrics: image distances with pluggable backbones, locality, causal strength, fidelity.

Reconstruction metrics (MSE, FVU, explained variance, L0, dead fraction) live in
:mod:`diffdict.evaluate`. See ``../shared/DESIGN.md`` ("Metrics"). Backbones: ``shapes-clip``
offline (default); ``open-clip``, ``lpips`` and ``inception`` from the optional extra
``diffdict[metrics]``, imported only when asked for.
"""

from diffdict.metrics.backbones import (BACKBONES, DEFAULT_BACKBONE, Backbone, backbone_available, is_concept,
                                       load_backbone)
from diffdict.metrics.causal import CausalStrength, causal_strength, mean_interval, read_target
from diffdict.metrics.fidelity import fidelity_metrics, spliced_fidelity, store_fidelity
from diffdict.metrics.image import (clip_score, fid, frechet_distance, lpips_style, perceptual_distance, pixel_mae,
                                   pixel_mse)
from diffdict.metrics.locality import change_map, manhattan_locality, mask_distances

__all__ = ["BACKBONES", "Backbone", "CausalStrength", "DEFAULT_BACKBONE", "backbone_available", "causal_strength",
           "change_map", "clip_score", "fid", "frechet_distance", "is_concept", "load_backbone", "lpips_style",
           "manhattan_locality", "mask_distances", "mean_interval", "perceptual_distance", "pixel_mae", "pixel_mse",
           "read_target", "spliced_fidelity", "store_fidelity", "fidelity_metrics"]
