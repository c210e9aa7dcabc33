"""Hooks that read a site and hooks that edit it, in one token layout for every host.

A site's tensors are given to hooks as (B, T, d) tokens, T = rows * cols of the site's
image grid in row-major order, whatever the model's native layout (UNet blocks are NCHW,
FLUX blocks are token sequences, a FLUX single block's sequence starts with the text
tokens, which are dropped). What a hook sees (its capture mode, ``capture``):

- ``update``: the block's output minus its input (the SDXL Turbo paper);
- ``output``: the block's output, i.e. the residual stream after it (the Flux paper);
- ``mlp``: the hidden units of the block's MLP (site ``NAME.mlp``; the neuron baseline).

Under classifier-free guidance (a batch [unconditional; conditional]) a hook sees the
conditional half by default (``half='cond'``; also ``'uncond'`` or ``'both'``).
``steps`` gates a hook to chosen denoising steps (0-based; None: every step).

Hooks on one site run in the order given; an edit changes what later hooks on the same
site see. Values reach hooks as float32; an edit's result is cast back to the model's
dtype. Edits are applied as ``output + (f(x) - x)`` for ``update``, so an identity edit
leaves the model bit-for-bit unchanged.

    with host.hooks([ReadHook("mid.0", fn=print_stats), EditHook("up.0.1", fn=steer, steps=[0])]):
        images = host.generate(prompts, seed=0)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Sequence

import numpy as np
import torch

from diffdict.errors import DiffdictError

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.hosts.base import HostModel

HALVES = ("cond", "uncond", "both")

#: the capture modes: what a hook can read or edit at a site
CAPTURE_MODES = ("update", "output", "mlp")
#: the former name of :data:`CAPTURE_MODES` (kept for existing code)
WHATS = CAPTURE_MODES

#: what a recorded token's metadata holds (a store's "meta" columns, in this order)
META_FIELDS = ("prompt_id", "step", "row", "col")


@dataclass(frozen=True)
class SiteInfo:
    """One site of a host model.

    ``d`` is the width of a token; ``grid`` the (rows, cols) of the image token grid at
    the host's image size (T = rows * cols tokens, row-major); ``module`` the dotted path
    of the hooked module (first component a component of the host: ``unet``,
    ``transformer``); ``kind`` a key of ``LAYOUTS``: ``unet-block`` (a
    Transformer2DModel, native NCHW), ``dit-block`` (a FLUX block, image-stream tokens),
    ``mlp`` (an MLP's hidden units; image tokens are the last T of the sequence).
    """

    name: str
    d: int
    grid: tuple[int, int]
    module: str
    kind: str

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]


def capture_mode_of(record: Any) -> str | None:
    """The capture mode a record read from disk names, or None.

    Stores' settings (``settings["capture"]``), dictionaries' provenance, feature
    statistics and study caches record the mode under the key ``"what"`` (the name
    diffdict has always written, and still writes so that older versions read new
    files); ``"capture"`` is accepted too when it holds a mode name."""
    if not isinstance(record, dict):
        return None
    value = record.get("what")
    if value is None and isinstance(record.get("capture"), str):
        value = record["capture"]
    return value


def parse_steps(spec: Any) -> frozenset[int] | None:
    """Denoising steps as given to ``--steps`` or a hook (the one parser of steps):
    None / ``"all"`` -> None (every step); an int, a list, a range ``"0-3"``, a list
    ``"0,2,5"`` or both ``"0-3,7"`` -> the steps."""
    if spec is None:
        return None
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = [int(spec)]
    try:
        if isinstance(spec, str):
            text = spec.strip().lower()
            if text in ("all", ""):
                return None
            steps: set[int] = set()
            for part in text.split(","):
                part = part.strip()
                if "-" in part[1:]:
                    cut = part.index("-", 1)
                    lo, hi = int(part[:cut]), int(part[cut + 1:])
                    if hi < lo:
                        raise ValueError
                    steps.update(range(lo, hi + 1))
                elif part:
                    steps.add(int(part))
            spec = steps
        steps = frozenset(int(s) for s in spec)
    except (TypeError, ValueError):
        raise DiffdictError(f"bad steps {spec!r}: expected 'all', a range like 0-3 or a list like 0,2,5") from None
    if not steps:
        raise DiffdictError("no denoising steps selected")
    return steps


@dataclass
class _Hook:
    """The fields of a hook; ``steps`` is checked and kept as a frozenset (None: every step)."""

    site: str
    fn: Callable[[torch.Tensor, int | None], Any]
    capture: str | None = None
    steps: Collection[int] | None = None
    half: str = "cond"

    def __post_init__(self):
        if self.capture is not None and self.capture not in CAPTURE_MODES:
            raise DiffdictError(
                f"unknown capture {self.capture!r} for site {self.site!r}; expected one of {', '.join(CAPTURE_MODES)}"
            )
        if self.half not in HALVES:
            raise DiffdictError(f"unknown batch half {self.half!r}; expected one of {', '.join(HALVES)}")
        if self.steps is not None:
            self.steps = frozenset(int(s) for s in self.steps)
            if any(s < 0 for s in self.steps):
                raise DiffdictError(f"denoising steps must be >= 0, got {sorted(self.steps)}")


class ReadHook(_Hook):
    """Call ``fn(x, step)`` with the site's value x (B, T, d) float32 at each active step.
    ``capture`` None: ``update`` for a block site, ``mlp`` for an MLP site. ``x`` may share
    memory with the model's tensors: copy what you keep."""


class EditHook(_Hook):
    """Replace the site's value x (B, T, d) float32 by ``fn(x, step)`` (same shape) at
    each active step, on the chosen half of a CFG batch. ``capture='update'`` edits the
    block's update (output = input + f(update)); ``'output'`` the block's output;
    ``'mlp'`` the MLP's hidden units. ``capture`` None: ``update`` / ``mlp`` by site kind."""


# -- native layout <-> tokens ----------------------------------------------------------
def _unet_out(output):
    return output[0] if isinstance(output, tuple) else getattr(output, "sample", output)


class _Layout:
    """How one kind of site maps native tensors to (B, T, d) tokens and back."""

    def __init__(self, info: SiteInfo):
        self.info = info

    def inputs(self, args, kwargs):
        """The block's input (``hidden_states``); only ever asked of a block site (an MLP has no update)."""
        if "hidden_states" in kwargs:
            return kwargs["hidden_states"]
        if args:
            return args[0]
        raise DiffdictError("cannot find the block input 'hidden_states' in the hooked call")

    def check_tokens(self, t: int, exact: bool = True) -> None:
        if (t != self.info.tokens) if exact else (t < self.info.tokens):
            raise DiffdictError(
                f"site {self.info.name}: got {t} tokens, expected {self.info.grid[0]}x{self.info.grid[1]}"
                f"={self.info.tokens} (is the image size the host was built for?)"
            )


class _UNetLayout(_Layout):
    def inputs(self, args, kwargs):
        return super().inputs(args, kwargs).flatten(2).transpose(1, 2)

    def outputs(self, output):
        x = _unet_out(output)
        if x.dim() != 4:
            raise DiffdictError(f"site {self.info.name}: expected an NCHW output, got shape {tuple(x.shape)}")
        self.check_tokens(x.shape[2] * x.shape[3])
        return x.flatten(2).transpose(1, 2)

    def replace(self, output, tokens):
        b, c, h, w = _unet_out(output).shape
        new = tokens.transpose(1, 2).reshape(b, c, h, w).contiguous()
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        return type(output)(sample=new) if hasattr(output, "sample") else new


class _DiTLayout(_Layout):
    """FLUX double and single blocks: forward(hidden_states=image, encoder_hidden_states=text)
    returns (text, image)."""

    def outputs(self, output):
        x = output[1]
        self.check_tokens(x.shape[1])
        return x

    def replace(self, output, tokens):
        return (output[0], tokens)


class _MLPLayout(_Layout):
    """Hidden units (B, T_all, m); the image tokens are the last T (FLUX single blocks put
    the text tokens first)."""

    def outputs(self, output):
        x = output[0] if isinstance(output, tuple) else output
        self.check_tokens(x.shape[1], exact=False)
        return x[:, x.shape[1] - self.info.tokens:]

    def replace(self, output, tokens):
        x = output[0] if isinstance(output, tuple) else output
        if x.shape[1] != tokens.shape[1]:
            tokens = torch.cat([x[:, : x.shape[1] - tokens.shape[1]], tokens], dim=1)
        return (tokens,) + tuple(output[1:]) if isinstance(output, tuple) else tokens


LAYOUTS = {"unet-block": _UNetLayout, "dit-block": _DiTLayout, "mlp": _MLPLayout}


# -- installing hooks ------------------------------------------------------------------
@dataclass
class _Entry:
    hook: ReadHook | EditHook
    info: SiteInfo
    mode: str  # update | output | mlp


def resolve(host: "HostModel", hook: ReadHook | EditHook) -> _Entry:
    """The site a hook acts on and its mode (``capture`` None picks by site kind)."""
    info = host.site(hook.site)
    capture = hook.capture or ("mlp" if info.kind == "mlp" else "update")
    info = host.resolve_site(hook.site, capture)
    mode = "mlp" if info.kind == "mlp" else capture
    return _Entry(hook, info, mode)


def _dispatcher(host: "HostModel", layout: _Layout, entries: list[_Entry]):
    def forward_hook(module, args, kwargs, output):
        step = host.current_step
        active = [e for e in entries if e.hook.steps is None or step in e.hook.steps]  # step None: not in any
        if not active:
            return None
        out_tokens = layout.outputs(output)
        in_tokens = None
        edited = None
        for entry in active:
            rows = host.batch_rows(out_tokens.shape[0], entry.hook.half)
            if rows is None:
                continue
            current = edited if edited is not None else out_tokens
            if entry.mode == "update":
                if in_tokens is None:
                    in_tokens = layout.inputs(args, kwargs)
                    if in_tokens.shape != out_tokens.shape:
                        raise DiffdictError(
                            f"site {entry.info.name}: input {tuple(in_tokens.shape)} and output "
                            f"{tuple(out_tokens.shape)} differ, so it has no update; capture 'output'"
                        )
                x = current[rows].float() - in_tokens[rows].float()
            else:
                x = current[rows].float()
            new = entry.hook.fn(x, step)
            if isinstance(entry.hook, ReadHook):
                continue
            if not isinstance(new, torch.Tensor) or new.shape != x.shape:
                shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise DiffdictError(
                    f"edit hook at site {entry.info.name} returned {shape}, expected a tensor of shape {tuple(x.shape)}"
                )
            value = current[rows].float() + (new.to(x.dtype) - x) if entry.mode == "update" else new
            if edited is None:
                edited = out_tokens.clone()
            edited[rows] = value.to(edited.dtype)
        return None if edited is None else layout.replace(output, edited)

    return forward_hook


@contextmanager
def install_hooks(host: "HostModel", hooks: Sequence[ReadHook | EditHook]) -> Iterator[list[_Entry]]:
    """Register ``hooks`` on ``host`` for the duration of the block (``host.hooks`` calls this)."""
    by_module: dict[str, list[_Entry]] = {}
    for hook in hooks:
        if not isinstance(hook, (ReadHook, EditHook)):
            raise DiffdictError(f"expected ReadHook or EditHook, got {type(hook).__name__}")
        entry = resolve(host, hook)
        by_module.setdefault(entry.info.module, []).append(entry)
    handles = []
    try:
        for path, entries in by_module.items():
            layout = LAYOUTS[entries[0].info.kind](entries[0].info)
            handles.append(host.module(path).register_forward_hook(
                _dispatcher(host, layout, entries), with_kwargs=True))
        yield [e for es in by_module.values() for e in es]
    finally:
        for handle in handles:
            handle.remove()


# -- recording for collection ----------------------------------------------------------
@dataclass
class Recorder:
    """Records what capture mode ``capture`` gives at ``sites`` during ``generate`` calls,
    and hands it back per token with its prompt id, step, row and column.

    Token order within a batch: prompt (as given), then step, then row-major position.
    Site names in the result are the resolved ones (``mid.0`` with ``capture='mlp'`` is
    ``mid.0.mlp``). Values are kept on the model's device as float32 until ``take``.
    """

    host: "HostModel"
    sites: Sequence[str]
    capture: str = "update"
    steps: Collection[int] | None = None
    half: str = "cond"
    infos: dict[str, SiteInfo] = field(init=False)

    def __post_init__(self):
        if self.capture not in CAPTURE_MODES:
            raise DiffdictError(f"unknown capture {self.capture!r}; expected one of {', '.join(CAPTURE_MODES)}")
        if not self.sites:
            raise DiffdictError("no sites to capture")
        self.infos = {}
        for name in self.sites:
            info = self.host.resolve_site(name, self.capture)
            if info.name in self.infos:
                raise DiffdictError(f"site {name!r} given twice")
            self.infos[info.name] = info
        self.steps = None if self.steps is None else sorted({int(s) for s in self.steps})
        self._records: dict[str, list[tuple[int, torch.Tensor]]] = {name: [] for name in self.infos}

    def hooks(self) -> list[ReadHook]:
        out = []
        for name, info in self.infos.items():
            def record(x, step, _name=name):
                self._records[_name].append((-1 if step is None else int(step), x.detach().clone()))

            out.append(ReadHook(name, record, capture="mlp" if info.kind == "mlp" else self.capture,
                                steps=self.steps, half=self.half))
        return out

    def clear(self) -> None:
        for records in self._records.values():
            records.clear()

    def take(self, prompt_ids: Sequence[int]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """(acts {site: (n_tokens, d) float32 CPU}, meta {site: {prompt_id, step, row, col}})
        for the batch of prompts whose ids are ``prompt_ids``; clears the records."""
        ids = torch.as_tensor(list(prompt_ids), dtype=torch.int64)
        acts: dict[str, torch.Tensor] = {}
        meta: dict[str, dict[str, torch.Tensor]] = {}
        for name, records in self._records.items():
            info = self.infos[name]
            steps = [s for s, _ in records]
            if len(set(steps)) != len(steps):
                raise DiffdictError(f"site {name} ran more than once in a denoising step (steps seen: {steps})")
            if not records:
                acts[name] = torch.zeros(0, info.d)
                meta[name] = {k: torch.zeros(0, dtype=torch.int64) for k in META_FIELDS}
                continue
            for _, x in records:
                if x.shape[0] != len(ids):
                    raise DiffdictError(f"site {name}: recorded {x.shape[0]} rows for {len(ids)} prompts")
            stacked = torch.stack([x for _, x in records], dim=1)  # (B, S, T, d)
            b, s, t, d = stacked.shape
            acts[name] = stacked.reshape(b * s * t, d).to("cpu", torch.float32)
            h, w = info.grid
            position = torch.arange(t, dtype=torch.int64)
            meta[name] = {
                "prompt_id": ids.repeat_interleave(s * t),
                "step": torch.as_tensor(steps, dtype=torch.int64).repeat_interleave(t).repeat(b),
                "row": (position // w).repeat(b * s),
                "col": (position % w).repeat(b * s),
            }
        self.clear()
        return acts, meta


def capture(
    host: "HostModel",
    prompts: Sequence[str],
    sites: Sequence[str],
    capture: str = "update",
    steps: Collection[int] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    prompt_ids: Sequence[int] | None = None,
    num_steps: int | None = None,
    guidance: float | None = None,
) -> tuple[np.ndarray, dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Generate ``prompts`` and record capture mode ``capture`` at ``sites``: (images, acts, meta)."""
    recorder = Recorder(host, sites, capture, steps)
    with host.hooks(recorder.hooks()):
        images = host.generate(prompts, seed=seed, seeds=seeds, steps=num_steps, guidance=guidance)
    return (images, *recorder.take(range(len(prompts)) if prompt_ids is None else prompt_ids))


__all__ = ["HALVES", "ReadHook", "EditHook", "Recorder", "capture", "install_hooks", "parse_steps", "resolve"]
