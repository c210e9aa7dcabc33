"""Interventions: composable edits of a host model's site, as hook factories.

Each intervention edits one site's value (the block's *update* for a block site by
default, ``what='output'`` for a residual stream, the neuron activations for an MLP
site) at chosen denoising steps, optionally only inside a spatial mask:

- :class:`Add` — add ``s · a_i · d_i`` to the dense value (d_i the decoder direction of
  feature i, a_i its typical activation, s the strength; negative s suppresses);
- :class:`LatentEdit` — encode, set / scale / add feature i, decode; the reconstruction
  error (x − x̂) is kept (default) or dropped;
- :class:`Splice` — replace the value by the dictionary's reconstruction;
- :class:`Ablate` — remove (scale 0) or scale a block's update;
- :class:`Icon` — replace the value by the feature direction at its typical magnitude
  (with the empty prompt: the feature's visualisation, :func:`feature_icon`);
- :class:`RandomDirection` — a control: wherever another intervention changes a token,
  change it by the same norm along a seeded random direction instead.

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
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from diffdict.capture import HALVES, EditHook, parse_steps
from diffdict.errors import DiffdictError
from diffdict.feature_stats import FeatureStats, encode_codes, site_space

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.dictionaries import Dictionary
    from diffdict.hosts import HostModel, SiteInfo

LATENT_OPS = ("set", "scale", "add")


# -- masks -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelBox:
    """A box in image pixels: x0 <= x < x1, y0 <= y < y1."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __str__(self) -> str:
        return ",".join(f"{v:g}" for v in (self.x0, self.y0, self.x1, self.y1))


@dataclass(frozen=True)
class TokenBox:
    """A box on the site's token grid: rows r0 <= r < r1, columns c0 <= c < c1."""

    r0: int
    c0: int
    r1: int
    c1: int


def parse_box(text: str) -> PixelBox:
    """``"x0,y0,x1,y1"`` (pixels) -> :class:`PixelBox`."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise DiffdictError(f"bad mask {text!r}: expected four pixel coordinates x0,y0,x1,y1")
    return PixelBox(*values)


def _coverage(n_pixels: int, n_cells: int, lo: float, hi: float) -> np.ndarray:
    """(n_cells,) share of each cell of [0, n_pixels) split evenly into n_cells covered by [lo, hi)."""
    edges = np.linspace(0.0, n_pixels, n_cells + 1)
    overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    return overlap / np.diff(edges)


def _pool_matrix(n_pixels: int, n_cells: int) -> np.ndarray:
    """(n_cells, n_pixels): the share of cell r that pixel p covers (rows sum to 1)."""
    return np.stack([_coverage(n_pixels, n_cells, p, p + 1) for p in range(n_pixels)], axis=1)


def pool_to_grid(pixel_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area-average an (H, W) mask onto a (rows, cols) grid."""
    h, w = pixel_mask.shape
    return _pool_matrix(h, grid[0]) @ pixel_mask.astype(np.float64) @ _pool_matrix(w, grid[1]).T


def resolve_mask(mask: Any, grid: tuple[int, int], image_size: tuple[int, int]) -> Tensor | None:
    """Token weights (rows*cols,) float32 in [0, 1] for a mask spec (None: no mask)."""
    if mask is None:
        return None
    rows, cols = grid
    height, width = image_size
    if isinstance(mask, str):
        mask = parse_box(mask)
    if isinstance(mask, (tuple, list)) and len(mask) == 4 and all(isinstance(v, (int, float, np.number)) for v in mask):
        mask = PixelBox(*(float(v) for v in mask))
    if isinstance(mask, PixelBox):
        x0, y0, x1, y1 = mask.x0, mask.y0, mask.x1, mask.y1
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DiffdictError(
                f"mask {mask} lies outside the {width}x{height} image: expected 0 <= x0 < x1 <= {width} "
                f"and 0 <= y0 < y1 <= {height} (pixels, end exclusive)"
            )
        weights = np.outer(_coverage(height, rows, y0, y1), _coverage(width, cols, x0, x1))
    elif isinstance(mask, TokenBox):
        r0, c0, r1, c1 = mask.r0, mask.c0, mask.r1, mask.c1
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
            raise DiffdictError(
                f"token mask rows {r0}:{r1}, columns {c0}:{c1} lies outside the site's {rows}x{cols} token grid"
            )
        weights = np.zeros((rows, cols))
        weights[r0:r1, c0:c1] = 1.0
    else:
        array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        if array.dtype == object or array.ndim != 2:
            raise DiffdictError(f"bad mask of type {type(mask).__name__}: expected x0,y0,x1,y1 or a 2-D array")
        array = array.astype(np.float64)
        if array.shape == (rows, cols):
            weights = array
        elif array.shape == (height, width):
            weights = pool_to_grid(array, grid)
        else:
            raise DiffdictError(
                f"mask of shape {array.shape[0]}x{array.shape[1]} matches neither the site's {rows}x{cols} token grid "
                f"nor the {height}x{width} image"
            )
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DiffdictError("mask weights must lie in [0, 1]")
    if not (weights > 0).any():
        raise DiffdictError(f"the mask covers no token of the site's {rows}x{cols} grid")
    return torch.from_numpy(np.clip(weights, 0.0, 1.0).reshape(-1).astype(np.float32))


# -- steps -----------------------------------------------------------------------------------
def check_steps(steps: frozenset[int] | None, num_steps: int | None) -> None:
    if steps is None or num_steps is None:
        return
    bad = sorted(s for s in steps if not 0 <= s < num_steps)
    if bad:
        raise DiffdictError(
            f"step {bad[0]} is outside the schedule: the generation has {num_steps} denoising "
            f"step{'s' if num_steps != 1 else ''} (0..{num_steps - 1})"
        )


# -- the interventions ---------------------------------------------------------------------
@dataclass
class Intervention:
    """Base class. Subclasses implement ``edit(x, step) -> new x`` on (B, T, d) float32
    values; masking, step gating and hooking are shared. ``bind(host)`` checks everything
    against the host and returns the :class:`~diffdict.capture.EditHook` list."""

    site: str
    mask: Any = field(default=None, kw_only=True)
    steps: Any = field(default=None, kw_only=True)
    what: str | None = field(default=None, kw_only=True)
    half: str = field(default="cond", kw_only=True)

    # set by bind()
    info: "SiteInfo | None" = field(default=None, init=False, repr=False, compare=False)
    weights: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    bound_what: str | None = field(default=None, init=False, repr=False, compare=False)
    _batch_rows: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def default_what(self, info: "SiteInfo") -> str:
        return "mlp" if info.kind == "mlp" else "update"

    def bind(self, host: "HostModel", num_steps: int | None = None) -> list[EditHook]:
        if self.half not in HALVES:
            raise DiffdictError(f"unknown batch half {self.half!r}; expected one of {', '.join(HALVES)}")
        base = host.site(self.site)
        what = self.what or self.default_what(base)
        info = host.resolve_site(self.site, what)
        if info.kind == "mlp":
            what = "mlp"
        steps = parse_steps(self.steps)
        check_steps(steps, num_steps if num_steps is not None else getattr(host, "default_steps", None))
        self.info = info
        self.bound_what = what
        self.weights = resolve_mask(self.mask, info.grid, host.image_size)
        self.prepare(host, info, what)
        return [EditHook(info.name, self._hook_fn, what=what, steps=steps, half=self.half)]

    def prepare(self, host: "HostModel", info: "SiteInfo", what: str) -> None:
        """Check what the intervention needs against the bound site (subclasses)."""

    def set_batch(self, rows: Sequence[int] | None) -> None:
        """The prompt indices of the batch being generated (used by seeded controls)."""
        self._batch_rows = None if rows is None else list(rows)

    def edit(self, x: Tensor, step: int | None) -> Tensor:
        raise NotImplementedError

    def apply(self, x: Tensor, step: int | None) -> Tensor:
        """The masked edit of (B, T, d) values: tokens outside the mask are returned unchanged."""
        if self.info is None:
            raise DiffdictError(f"{self.name} intervention is not bound to a host; use intervene() or generate()")
        if x.ndim != 3 or x.shape[1] != self.info.tokens:
            raise DiffdictError(f"{self.name} at site {self.info.name}: got values of shape {tuple(x.shape)}, "
                                f"expected (batch, {self.info.tokens}, d)")
        new = self.edit(x, step)
        if self.weights is None:
            return new
        w = self.weights.to(x.device).view(1, -1, 1)
        return torch.where(w > 0, x + w * (new - x), x)

    def _hook_fn(self, x: Tensor, step: int | None) -> Tensor:
        return self.apply(x, step)

    def describe(self) -> dict[str, Any]:
        steps = parse_steps(self.steps)
        mask = self.mask
        if mask is not None:
            mask = "array" if hasattr(mask, "shape") else str(mask) if isinstance(mask, (str, PixelBox)) else repr(mask)
        return {"mode": self.name, "site": self.info.name if self.info is not None else self.site,
                "what": self.bound_what or self.what, "mask": mask,
                "steps": "all" if steps is None else sorted(steps), "half": self.half}


@dataclass
class _FeatureIntervention(Intervention):
    """Shared by interventions on one feature of a dictionary."""

    dictionary: "Dictionary | None" = None
    feature: int = 0
    strength: float = 1.0
    activation: float | None = field(default=None, kw_only=True)
    stats: FeatureStats | None = field(default=None, kw_only=True)

    space: str | None = field(default=None, init=False, repr=False, compare=False)
    direction: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    typical: float | None = field(default=None, init=False, repr=False, compare=False)

    needs_activation = True

    def prepare(self, host, info, what) -> None:
        prepare_dictionary(self, host, info, what)
        n = self.dictionary.n_features
        if isinstance(self.feature, bool) or not isinstance(self.feature, (int, np.integer)) or not 0 <= self.feature < n:
            raise DiffdictError(f"feature {self.feature} is out of range: the dictionary has {n} features (0..{n - 1})")
        self.feature = int(self.feature)
        self.direction = feature_direction(self.dictionary, self.feature, self.space)
        if self.needs_activation:
            self.typical = typical_activation(self.feature, self.activation, self.stats)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "feature": self.feature, "strength": float(self.strength),
                "activation": self.typical if self.typical is not None else self.activation}


def prepare_dictionary(intervention: Any, host: "HostModel", info: "SiteInfo", what: str) -> None:
    """Check a dictionary against the bound site (width, and the site and capture it was
    trained on when its statistics say) and set ``intervention.space``."""
    dictionary = intervention.dictionary
    if dictionary is None:
        raise DiffdictError(f"{intervention.name} needs a dictionary")
    intervention.space = site_space(dictionary, info.d, f"site {info.name} ({what}) of model {host.name}")
    stats = getattr(intervention, "stats", None)
    meta = stats.meta if stats is not None else {}
    if meta.get("model") is not None and meta.get("site") is not None:
        if meta["model"] != host.name:
            raise DiffdictError(f"the dictionary was trained on model {meta['model']}, not {host.name}")
        if meta["site"] != info.name:
            raise DiffdictError(f"the dictionary was trained on site {meta['site']}, but the edit is at site {info.name}")
        if meta.get("what") is not None and meta["what"] != what and info.kind != "mlp":
            raise DiffdictError(
                f"the dictionary was trained on the site's {meta['what']}, but the edit is of its {what}; pass what={meta['what']!r}"
            )
    if stats is not None and stats.n_features != dictionary.n_features:
        raise DiffdictError(
            f"feature statistics cover {stats.n_features} features but the dictionary has {dictionary.n_features}"
        )


def feature_direction(dictionary: "Dictionary", feature: int, space: str) -> Tensor:
    """Feature i's direction in the site's space: the decoder row (dense), or e_i (neurons)."""
    if space == "neurons":
        direction = torch.zeros(dictionary.n_features)
        direction[feature] = 1.0
        return direction
    return dictionary.decoder_directions[feature].detach().float().cpu().clone()


def dictionary_device(dictionary: "Dictionary") -> torch.device:
    for tensor in dictionary.parameters():
        return tensor.device
    for tensor in dictionary.buffers():
        return tensor.device
    return torch.device("cpu")


def typical_activation(feature: int, activation: float | None, stats: FeatureStats | None) -> float:
    if activation is not None:
        value = float(activation)
        if not np.isfinite(value):
            raise DiffdictError(f"typical activation must be finite, got {activation}")
        return value
    if stats is None:
        raise DiffdictError(
            "the feature's typical activation is unknown: compute feature statistics with 'diffdict feature-stats' "
            "or give the activation explicitly"
        )
    return stats.typical_activation(feature)


@dataclass
class Add(_FeatureIntervention):
    """x + s · a_i · d_i at every masked token (the SDXL Turbo paper's intervention)."""

    @property
    def name(self) -> str:
        return "add"

    def delta(self) -> Tensor:
        return float(self.strength) * self.typical * self.direction

    def edit(self, x: Tensor, step: int | None) -> Tensor:
        return x + self.delta().to(x.device, x.dtype)


@dataclass
class LatentEdit(_FeatureIntervention):
    """Encode, edit feature i's code, decode.

    ``op``: ``set`` (c_i = s · a_i), ``add`` (c_i += s · a_i) or ``scale`` (c_i *= s);
    ``keep_error`` (default) adds back the reconstruction error x − x̂, so only the edit
    changes the value (an identity edit changes nothing); without it the masked tokens
    become the edited reconstruction. A neuron dictionary on its MLP site edits neuron i
    itself (its value is its code)."""

    op: str = "set"
    keep_error: bool = field(default=True, kw_only=True)

    @property
    def name(self) -> str:
        return "latent"

    def prepare(self, host, info, what) -> None:
        if self.op not in LATENT_OPS:
            raise DiffdictError(f"unknown latent edit {self.op!r}; expected one of {', '.join(LATENT_OPS)}")
        self.needs_activation = self.op != "scale"
        super().prepare(host, info, what)

    def _target(self, current: Tensor) -> Tensor:
        s = float(self.strength)
        if self.op == "set":
            return torch.full_like(current, s * self.typical)
        if self.op == "add":
            return current + s * self.typical
        return current * s

    @torch.no_grad()
    def edit(self, x: Tensor, step: int | None) -> Tensor:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        i = self.feature
        if self.space == "neurons":  # the value is the code
            new = flat.clone()
            new[:, i] = self._target(flat[:, i])
            return new.view(b, t, d)
        dictionary = self.dictionary
        codes = dictionary.encode(flat.to(dictionary_device(dictionary))).float().to(flat.device)
        current = codes[:, i]
        target = self._target(current)
        if self.keep_error:
            change = (target - current).to(flat.device).unsqueeze(1) * self.direction.to(flat.device)
            return (flat + change).view(b, t, d)
        codes[:, i] = target
        return dictionary.decode(codes.to(dictionary_device(dictionary))).to(flat.device, flat.dtype).view(b, t, d)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "op": self.op, "keep_error": self.keep_error}


@dataclass
class Splice(Intervention):
    """Replace the value by the dictionary's reconstruction decode(encode(x))."""

    dictionary: "Dictionary | None" = None
    stats: FeatureStats | None = field(default=None, kw_only=True)
    space: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return "splice"

    def prepare(self, host, info, what) -> None:
        prepare_dictionary(self, host, info, what)

    @torch.no_grad()
    def edit(self, x: Tensor, step: int | None) -> Tensor:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        codes = encode_codes(self.dictionary, flat.to(dictionary_device(self.dictionary)), self.space)
        if self.space == "neurons":
            recon = codes.to_dense(self.dictionary.n_features)
        else:
            recon = self.dictionary.decode(codes)
        return recon.to(x.device, x.dtype).view(b, t, d)


@dataclass
class Ablate(Intervention):
    """Scale the block's update (``scale=0``: remove it; the block passes its input on)."""

    scale: float = 0.0

    @property
    def name(self) -> str:
        return "ablate"

    def prepare(self, host, info, what) -> None:
        if what == "output":
            raise DiffdictError("ablate removes a block's update; use what='update' (not 'output')")
        if not np.isfinite(float(self.scale)):
            raise DiffdictError(f"ablation scale must be finite, got {self.scale}")

    def edit(self, x: Tensor, step: int | None) -> Tensor:
        return x * float(self.scale)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": float(self.scale)}


@dataclass
class Icon(_FeatureIntervention):
    """Replace the value at every masked token by s · a_i · d_i (use with the empty prompt)."""

    @property
    def name(self) -> str:
        return "icon"

    def edit(self, x: Tensor, step: int | None) -> Tensor:
        value = (float(self.strength) * self.typical * self.direction).to(x.device, x.dtype)
        return value.expand_as(x).clone()


@dataclass
class RandomDirection(Intervention):
    """The control for ``inner``: at every token where ``inner`` changes the value by a
    vector of norm r, change it by r along a random unit direction instead. The direction
    is drawn per prompt from (seed, prompt index): the same seed gives the same numbers.
    Site, mask, steps, what and half are the inner intervention's."""

    inner: Intervention | None = None
    seed: int = 0

    def __init__(self, inner: Intervention, seed: int = 0):
        if not isinstance(inner, Intervention):
            raise DiffdictError(f"a random-direction control wraps an intervention, got {type(inner).__name__}")
        super().__init__(inner.site, mask=inner.mask, steps=inner.steps, what=inner.what, half=inner.half)
        self.inner = inner
        self.seed = int(seed)

    @property
    def name(self) -> str:
        return f"random-{self.inner.name}"

    def bind(self, host, num_steps=None):
        self.inner.bind(host, num_steps)
        hooks = super().bind(host, num_steps)
        return hooks

    def prepare(self, host, info, what) -> None:
        self.d = info.d

    def directions(self, rows: Sequence[int]) -> Tensor:
        out = []
        for row in rows:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + int(row)) % (2**63 - 1))
            v = torch.randn(self.d, generator=generator)
            out.append(v / v.norm())
        return torch.stack(out)

    def apply(self, x: Tensor, step: int | None) -> Tensor:
        changed = self.inner.apply(x, step) - x
        norms = changed.norm(dim=-1, keepdim=True)  # (B, T, 1)
        rows = self._batch_rows if self._batch_rows is not None and len(self._batch_rows) == x.shape[0] \
            else range(x.shape[0])
        r = self.directions(rows).to(x.device, x.dtype).unsqueeze(1)  # (B, 1, d)
        return torch.where(norms > 0, x + norms * r, x)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.name, "seed": self.seed, "inner": self.inner.describe()}


MODES: dict[str, type[Intervention]] = {"add": Add, "latent": LatentEdit, "splice": Splice, "ablate": Ablate,
                                        "icon": Icon}


def make_intervention(mode: str, site: str, **options: Any) -> Intervention:
    """Build an intervention by mode name (``add``, ``latent``, ``splice``, ``ablate``, ``icon``)."""
    if mode not in MODES:
        raise DiffdictError(f"unknown intervention mode {mode!r}; expected one of {', '.join(MODES)}")
    return MODES[mode](site, **options)


# -- running ----------------------------------------------------------------------------------
@contextmanager
def intervene(host: "HostModel", interventions: Sequence[Intervention], num_steps: int | None = None) -> Iterator[None]:
    """Install the interventions' hooks on ``host`` for the block (checked against a
    generation of ``num_steps`` denoising steps; default the host's)."""
    hooks: list[EditHook] = []
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise DiffdictError(f"expected an intervention, got {type(intervention).__name__}")
        hooks.extend(intervention.bind(host, num_steps if num_steps is not None else host.default_steps))
    with ExitStack() as stack:
        if hooks:
            stack.enter_context(host.hooks(hooks))
        yield


def generate(
    host: "HostModel",
    prompts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    num_steps: int | None = None,
    guidance: float | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """uint8 images (N, H, W, 3) of ``prompts`` under ``interventions`` (none: the
    originals). Image i starts from the noise of seed ``seed + i`` (or ``seeds[i]``)."""
    prompts = list(prompts)
    if not prompts:
        raise DiffdictError("no prompts to generate")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DiffdictError(f"batch size must be a positive integer, got {batch_size!r}")
    seeds = [int(s) for s in seeds] if seeds is not None else [seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise DiffdictError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    num_steps = host.default_steps if num_steps is None else int(num_steps)
    out = []
    with intervene(host, interventions, num_steps):
        for start in range(0, len(prompts), batch_size):
            rows = range(start, min(start + batch_size, len(prompts)))
            for intervention in interventions:
                intervention.set_batch(rows)
            try:
                out.append(host.generate(prompts[rows.start:rows.stop], seeds=seeds[rows.start:rows.stop],
                                         steps=num_steps, guidance=guidance))
            finally:
                for intervention in interventions:
                    intervention.set_batch(None)
    return np.concatenate(out)


def feature_icon(
    host: "HostModel",
    site: str,
    dictionary: "Dictionary",
    feature: int,
    strength: float = 1.0,
    activation: float | None = None,
    stats: FeatureStats | None = None,
    count: int = 1,
    seed: int = 0,
    num_steps: int | None = None,
    guidance: float | None = None,
    steps: Any = None,
    what: str | None = None,
) -> np.ndarray:
    """The feature's visualisation: ``count`` images of the empty prompt with the site's
    value replaced by the feature direction at its typical magnitude."""
    icon = Icon(site, dictionary, feature, strength, activation=activation, stats=stats, steps=steps, what=what)
    return generate(host, [""] * count, [icon], seed=seed, num_steps=num_steps, guidance=guidance)


__all__ = [
    "Ablate",
    "Add",
    "Icon",
    "Intervention",
    "LATENT_OPS",
    "LatentEdit",
    "MODES",
    "PixelBox",
    "RandomDirection",
    "Splice",
    "TokenBox",
    "check_steps",
    "feature_direction",
    "feature_icon",
    "generate",
    "intervene",
    "make_intervention",
    "parse_box",
    "parse_steps",
    "pool_to_grid",
    "resolve_mask",
    "typical_activation",
]
