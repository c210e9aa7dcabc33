"""Interventions: composable edits of a host model's site, as hook factories.

Each intervention (:class:`Add`, :class:`LatentEdit`, :class:`Splice`, :class:`Ablate`,
:class:`Icon`, and the :class:`RandomDirection` control) edits one site's value (the
block's *update* for a block site by default, ``capture='output'`` for a residual stream,
the neuron activations for an MLP site) at chosen denoising steps, optionally only inside
a spatial mask.

Interventions compose: pass several to :func:`intervene` / :func:`generate` (hooks on
one site run in the order given). Every dictionary kind works through the
:class:`~diffdict.dictionaries.Dictionary` interface; a neuron dictionary on its MLP site
edits the neurons directly (see :func:`diffdict.feature_stats.site_space`).

Masks (``mask=``) are given on the site's token grid or in image pixels and pooled to it:
``"x0,y0,x1,y1"`` or :class:`PixelBox` (pixels, end exclusive), :class:`TokenBox`
(rows/cols of the token grid), or an array of shape grid (weights in [0, 1]) or of the
image's shape (pooled by area). A pooled token is edited in proportion to the part of
it the mask covers; tokens outside are left bit-for-bit unchanged. Steps (``steps=``):
None (every step), an int, a list, or text ``"0-3"``, ``"0,2,5"``, ``"all"``.

    sae = load_dictionary("runs/k10"); stats = load_feature_stats("runs/k10")
    edit = Add("mid.0", sae, feature=12, strength=5, stats=stats, mask="8,8,24,24", steps="0-3")
    images = generate(host, ["a red circle"], [edit], seed=0)

``experiments.py`` (the experiments behind ``diffdict intervene`` and ``ablate-block``) is
not imported here: it pulls in the metrics.
"""

from diffdict.capture import parse_steps
from diffdict.interventions.edits import (LATENT_OPS, MODES, Ablate, Add, Icon, Intervention, LatentEdit,
                                          RandomDirection, Splice, dictionary_device, feature_direction,
                                          make_intervention, prepare_dictionary, typical_activation)
from diffdict.interventions.masks import PixelBox, TokenBox, check_steps, parse_box, pool_to_grid, resolve_mask
from diffdict.interventions.running import feature_icon, generate, intervene

__all__ = ["Ablate", "Add", "Icon", "Intervention", "LATENT_OPS", "LatentEdit", "MODES", "PixelBox", "RandomDirection",
           "Splice", "TokenBox", "check_steps", "dictionary_device", "feature_direction", "feature_icon", "generate",
           "intervene", "make_intervention", "parse_box", "parse_steps", "pool_to_grid", "prepare_dictionary",
           "resolve_mask", "typical_activation"]
