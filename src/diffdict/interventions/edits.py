"""The interventions: :class:`Intervention` (masking, step gating, hooking) and the
edits built on it, ``add``, ``latent``, ``splice``, ``ablate``, ``icon`` and the
``RandomDirection`` control, with the checks of a dictionary against the bound site."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor

from diffdict.capture import HALVES, EditHook, capture_mode_of, parse_steps
from diffdict.errors import DiffdictError, require_int
from diffdict.feature_stats import FeatureStats, encode_codes, site_space
from diffdict.interventions.masks import PixelBox, check_steps, resolve_mask

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.dictionaries import Dictionary
    from diffdict.hosts import HostModel, SiteInfo

LATENT_OPS = ("set", "scale", "add")


@dataclass
class Intervention:
    """Base class. Subclasses implement ``edit(x, step) -> new x`` on (B, T, d) float32
    values; masking, step gating and hooking are shared. ``bind(host)`` checks everything
    against the host and returns the :class:`~diffdict.capture.EditHook` list."""

    site: str
    mask: Any = field(default=None, kw_only=True)
    steps: Any = field(default=None, kw_only=True)
    capture: str | None = field(default=None, kw_only=True)
    half: str = field(default="cond", kw_only=True)

    # set by bind()
    info: "SiteInfo | None" = field(default=None, init=False, repr=False, compare=False)
    weights: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    bound_capture: str | None = field(default=None, init=False, repr=False, compare=False)
    _batch_rows: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def bind(self, host: "HostModel", num_steps: int | None = None) -> list[EditHook]:
        if self.half not in HALVES:
            raise DiffdictError(f"unknown batch half {self.half!r}; expected one of {', '.join(HALVES)}")
        capture = self.capture or ("mlp" if host.site(self.site).kind == "mlp" else "update")
        info = host.resolve_site(self.site, capture)
        if info.kind == "mlp":
            capture = "mlp"
        steps = parse_steps(self.steps)
        check_steps(steps, num_steps if num_steps is not None else getattr(host, "default_steps", None))
        self.info = info
        self.bound_capture = capture
        self.weights = resolve_mask(self.mask, info.grid, host.image_size)
        self.prepare(host, info, capture)
        return [EditHook(info.name, self.apply, capture=capture, steps=steps, half=self.half)]

    def prepare(self, host: "HostModel", info: "SiteInfo", capture: str) -> None:
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

    def describe(self) -> dict[str, Any]:
        steps = parse_steps(self.steps)
        mask = self.mask
        if mask is not None:
            mask = "array" if hasattr(mask, "shape") else str(mask) if isinstance(mask, (str, PixelBox)) else repr(mask)
        return {"mode": self.name, "site": self.info.name if self.info is not None else self.site,
                "what": self.bound_capture or self.capture, "mask": mask,
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

    def prepare(self, host, info, capture) -> None:
        prepare_dictionary(self, host, info, capture)
        n = self.dictionary.n_features
        self.feature = require_int(self.feature, "feature", 0, n - 1, f" (the dictionary has {n} features)")
        self.direction = feature_direction(self.dictionary, self.feature, self.space)
        if self.needs_activation:
            self.typical = typical_activation(self.feature, self.activation, self.stats)

    def delta(self) -> Tensor:
        return float(self.strength) * self.typical * self.direction

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "feature": self.feature, "strength": float(self.strength),
                "activation": self.typical if self.typical is not None else self.activation}


def prepare_dictionary(intervention: Any, host: "HostModel", info: "SiteInfo", capture: str) -> None:
    """Check a dictionary against the bound site (width, and the site and capture it was
    trained on when its statistics say) and set ``intervention.space``."""
    dictionary = intervention.dictionary
    if dictionary is None:
        raise DiffdictError(f"{intervention.name} needs a dictionary")
    intervention.space = site_space(dictionary, info.d, f"site {info.name} ({capture}) of model {host.name}")
    stats = getattr(intervention, "stats", None)
    meta = stats.meta if stats is not None else {}
    if meta.get("model") is not None and meta.get("site") is not None:
        if meta["model"] != host.name:
            raise DiffdictError(f"the dictionary was trained on model {meta['model']}, not {host.name}")
        if meta["site"] != info.name:
            raise DiffdictError(f"the dictionary was trained on site {meta['site']}, but the edit is at site {info.name}")
        trained = capture_mode_of(meta)
        if trained is not None and trained != capture and info.kind != "mlp":
            raise DiffdictError(
                f"the dictionary was trained on the site's {trained}, but the edit is of its {capture}; "
                f"pass capture={trained!r}"
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
    tensor = next(itertools.chain(dictionary.parameters(), dictionary.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


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

    name = "add"

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

    name = "latent"

    def prepare(self, host, info, capture) -> None:
        if self.op not in LATENT_OPS:
            raise DiffdictError(f"unknown latent edit {self.op!r}; expected one of {', '.join(LATENT_OPS)}")
        self.needs_activation = self.op != "scale"
        super().prepare(host, info, capture)

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

    name = "splice"

    def prepare(self, host, info, capture) -> None:
        prepare_dictionary(self, host, info, capture)

    @torch.no_grad()
    def edit(self, x: Tensor, step: int | None) -> Tensor:
        b, t, d = x.shape
        flat = x.reshape(b * t, d)
        codes = encode_codes(self.dictionary, flat.to(dictionary_device(self.dictionary)), self.space)
        recon = codes.to_dense(self.dictionary.n_features) if self.space == "neurons" else self.dictionary.decode(codes)
        return recon.to(x.device, x.dtype).view(b, t, d)


@dataclass
class Ablate(Intervention):
    """Scale the block's update (``scale=0``: remove it; the block passes its input on)."""

    scale: float = 0.0

    name = "ablate"

    def prepare(self, host, info, capture) -> None:
        if capture == "output":
            raise DiffdictError("ablate removes a block's update; use capture='update' (not 'output')")
        if not np.isfinite(float(self.scale)):
            raise DiffdictError(f"ablation scale must be finite, got {self.scale}")

    def edit(self, x: Tensor, step: int | None) -> Tensor:
        return x * float(self.scale)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scale": float(self.scale)}


@dataclass
class Icon(_FeatureIntervention):
    """Replace the value at every masked token by s · a_i · d_i (use with the empty prompt)."""

    name = "icon"

    def edit(self, x: Tensor, step: int | None) -> Tensor:
        return self.delta().to(x.device, x.dtype).expand_as(x).clone()


@dataclass
class RandomDirection(Intervention):
    """The control for ``inner``: at every token where ``inner`` changes the value by a
    vector of norm r, change it by r along a random unit direction instead. The direction
    is drawn per prompt from (seed, prompt index): the same seed gives the same numbers.
    Site, mask, steps, capture and half are the inner intervention's."""

    inner: Intervention | None = None
    seed: int = 0

    def __init__(self, inner: Intervention, seed: int = 0):
        if not isinstance(inner, Intervention):
            raise DiffdictError(f"a random-direction control wraps an intervention, got {type(inner).__name__}")
        super().__init__(inner.site, mask=inner.mask, steps=inner.steps, capture=inner.capture, half=inner.half)
        self.inner = inner
        self.seed = int(seed)

    @property
    def name(self) -> str:
        return f"random-{self.inner.name}"

    def bind(self, host, num_steps=None):
        self.inner.bind(host, num_steps)
        return super().bind(host, num_steps)

    def prepare(self, host, info, capture) -> None:
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
