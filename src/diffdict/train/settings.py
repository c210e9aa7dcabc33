"""Training settings: what determines the trained weights, their validation, and the
grid of members they describe (one per combination of the list-valued options each
architecture uses), with each member's learning rate schedule."""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from diffdict.dictionaries.itda import PURSUITS
from diffdict.dictionaries.sae import B_DEC_INITS, normalization_name
from diffdict.dictionaries.sparsity import MECHANISMS, MechanismFlag
from diffdict.errors import DiffdictError
from diffdict.options import check, option

# Settings that may take several values; their product (restricted to the options each
# architecture uses) is the grid.
GRID_OPTIONS = ("arch", "expansion", "width", "lr", "normalization", "k", "auxk", "l1", "l0_coef", "theta",
                "learn_theta", "tau", "l0")
# How an option appears in a member's name.
NAME_FORMATS = {
    "k": "k{}", "expansion": "x{}", "width": "w{}", "lr": "lr{}", "normalization": "{}", "l1": "l1_{}",
    "l0_coef": "l0c{}", "theta": "th{}", "tau": "tau{}", "l0": "l0_{}", "threshold_decay": "td{}",
    "bandwidth": "bw{}",
}
_SWITCH_NAMES = {"auxk": ("noauxk", "auxk"), "learn_theta": ("fixed", "learned")}  # (off, on), shown when varied


@dataclass
class TrainSettings:
    """What determines the trained weights; list-valued fields form the grid. Each field
    declared with :func:`diffdict.options.option` is a ``diffdict train`` flag, its type
    and declared bounds checked by :meth:`validate`."""

    acts: str = option(help="activations: a store folder, or an (N, d) .npy / .safetensors file")
    site: str | None = option(None, "the store site (required when the store has several), or the tensor of a "
                                    "safetensors file")
    arch: list[str] = option(["topk"], "architectures: {mechanisms}, itda")
    expansion: list[float] = option([4.0], "width as a multiple of d")
    width: list[int] | None = option(None, "width in features (replaces --expansion)")
    lr: list[float] | None = option(None, "Adam learning rate (default: 2e-4 / sqrt(width / 16384), sparsify's "
                                          "width-scaled rule: 1.1e-3 at 512 features, 3.6e-4 at 5120)")
    normalization: list[str] = option(["none"], "input normalisation: none, standardise (per dimension), scalar")
    # sparsity options (None: the mechanism's default)
    k: list[int] = option([32], "codes per token for topk / batchtopk / matryoshka-batchtopk", minimum=1)
    auxk: list[bool] = option([True], "AuxK loss on dead features: on, off or on,off")
    l1: list[float] | None = option(None, "relu-l1 / soft-threshold: L1 coefficient (default: 1e-3 / 0)")
    l0_coef: list[float] | None = option(None, "jumprelu: L0 coefficient (default: 1e-3)")
    theta: list[float] | None = option(None, "soft-threshold / jumprelu: (initial) threshold (default: 0.1 / 1e-3)")
    learn_theta: list[bool] | None = option(None, "soft-threshold: learn θ per feature: on/off (default: off)")
    bandwidth: float | None = option(None, "jumprelu: pseudo-derivative bandwidth ε (default: 1e-3)")
    threshold_decay: float | None = option(None, "batchtopk: EMA decay of the inference threshold (default: 0.99)")
    # options a mechanism declares in its ``flags`` (grid options as lists), e.g.
    # {"prefix_fractions": [0.1, 0.3]}; missing: the mechanism's default. Their flags
    # come from the mechanisms.
    mechanism_options: dict[str, Any] = option({}, cli=False)
    # AuxK and dead features
    auxk_coef: float = option(1 / 32, "AuxK coefficient α")
    k_aux: int | None = option(None, "AuxK codes per token (default: d/2)")
    dead_window: int = option(10_000_000, "tokens without firing after which a feature is dead", minimum=1)
    # initialisation and speed
    b_dec_init: str = option("geometric-median", "b_dec initialisation: geometric-median, mean, zeros",
                             choices=B_DEC_INITS)
    init_tokens: int = option(16384, "tokens sampled for the normalisation and b_dec initialisation", minimum=1)
    # None: where the device computes bf16 natively (resolved by train)
    bf16: bool | None = option(None, "TopK encoder matmul in bfloat16: on, off, or auto: on where the device "
                                     "computes bf16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX) "
                                     "(default: auto)")
    # ITDA
    tau: list[float] = option([0.3], "itda: normalised error above which an activation becomes an atom")
    l0: list[int] = option([10], "itda: pursuit steps per token")
    pursuit: str = option("mp", "itda encoding: mp (signed matching pursuit) or gp (non-negative gradient pursuit)",
                          choices=PURSUITS)
    itda_tokens: int | None = option(None, "itda: build from the first this many tokens only (default: all)")
    itda_chunk: int = option(256, "itda: tokens encoded before adding atoms", minimum=1)
    max_atoms: int | None = option(None, "itda: stop adding atoms at this many")
    # the pass
    batch_size: int = option(4096, "global batch size in tokens", minimum=1)
    tokens: int = option(2_000_000, "tokens to train on", minimum=1)
    seed: int = option(0, "seed of the initialisation and the data order")
    warmup_steps: int = option(0, "linear learning-rate warmup steps", minimum=0)
    decay_fraction: float = option(0.0, "linear learning-rate decay to 0 over this last fraction of steps")
    # an explicit list of members ({"name", "arch", "options"}, as MemberSpec); None: the
    # grid of the list-valued options above (``train(..., members=...)``, not a flag)
    members: list[dict[str, Any]] | None = option(None, cli=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name, empty in (("mechanism_options", {}), ("members", None)):
            if data[name] == empty:
                del data[name]  # so runs from before the field compare equal
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        if self.bf16 not in (None, True, False):  # before check(), which reads "yes" as on
            raise DiffdictError(f"--bf16 must be on, off or auto, got {self.bf16!r}")
        check(self)  # each flag's type, bounds and choices, as for the flag's text
        flags = mechanism_flags()
        for name, value in self.mechanism_options.items():
            if name not in flags:
                raise DiffdictError(f"unknown mechanism option {name!r}; mechanisms declare "
                                    f"{', '.join(sorted(flags)) or 'none'}")
            if flags[name].grid and (not isinstance(value, list) or not value):
                raise DiffdictError(f"--{name.replace('_', '-')} needs at least one value")
        for arch in self.arch:
            if arch not in MECHANISMS and arch != "itda":
                raise DiffdictError(f"unknown --arch {arch!r}; expected one of {', '.join(sorted(MECHANISMS))}, itda")
        for name in ("lr", "expansion"):
            for value in getattr(self, name) or []:
                if not value > 0:
                    raise DiffdictError(f"--{name} must be positive, got {value}")
        self.normalization = [normalization_name(n) for n in self.normalization]
        if not 0 <= self.decay_fraction <= 1:
            raise DiffdictError(f"--decay-fraction must lie in [0, 1], got {self.decay_fraction}")

    @property
    def total_steps(self) -> int:
        return math.ceil(self.tokens / self.batch_size)


@dataclass
class MemberSpec:
    name: str
    arch: str
    options: dict[str, Any]  # grid values for this member (SAE: also its mechanism options)


def default_lr(n_features: int) -> float:
    """Adam's learning rate when none is given: 2e-4 / √(n / 2¹⁴) for n features, the
    width-scaled rule of EleutherAI sparsify (1.1e-3 at 512 features, 3.6e-4 at 5120).
    The SDXL Turbo paper's fixed 1e-4 is meant for 10M+ tokens; on the short runs users
    start with it leaves the dictionary far from converged (figures in the README,
    ``benchmarks/train_throughput.py --case planted``)."""
    return 2e-4 / math.sqrt(n_features / 2**14)


def _mechanism_option_names(arch: str) -> list[str]:
    return [p for p in inspect.signature(MECHANISMS[arch].__init__).parameters if p not in ("self", "n_features")]


def mechanism_flags() -> dict[str, MechanismFlag]:
    """Every option the registered mechanisms declare in ``flags``, by name."""
    flags: dict[str, MechanismFlag] = {}
    for cls in MECHANISMS.values():
        for name, flag in cls.flags.items():
            flags.setdefault(name, flag)
    return flags


def _alternatives(settings: TrainSettings, name: str) -> list | None:
    """The values an option takes across the grid; None: the mechanism's default."""
    if name in settings.mechanism_options:
        value = settings.mechanism_options[name]
        return value if mechanism_flags()[name].grid else [value]
    value = getattr(settings, name, None)
    if value is None:
        return None
    return value if isinstance(value, list) else [value]


def _explicit_members(settings: TrainSettings) -> list[MemberSpec]:
    members = []
    for entry in settings.members:
        if not isinstance(entry, dict) or set(entry) != {"name", "arch", "options"}:
            raise DiffdictError(f"a member must be a dict with name, arch and options, got {entry!r}")
        spec = MemberSpec(str(entry["name"]), entry["arch"], dict(entry["options"]))
        if spec.arch not in MECHANISMS and spec.arch != "itda":
            raise DiffdictError(f"member {spec.name}: unknown arch {spec.arch!r}; expected one of "
                                f"{', '.join(sorted(MECHANISMS))}, itda")
        needed = {"tau", "l0"} if spec.arch == "itda" else {"normalization"}
        if spec.arch != "itda" and not {"expansion", "width"} & set(spec.options):
            needed.add("expansion or width")
        if missing := sorted(needed - set(spec.options)):
            raise DiffdictError(f"member {spec.name} lacks the option(s) {', '.join(missing)}")
        members.append(spec)
    return members


def members_of(settings: TrainSettings) -> list[MemberSpec]:
    """The members a pass trains: ``settings.members`` when given, else the grid."""
    members = _explicit_members(settings) if settings.members is not None else grid_members(settings)
    names = [m.name for m in members]
    if not members or len(set(names)) != len(names) or any(not n or "/" in n or n.startswith(".") for n in names):
        raise DiffdictError(f"members need distinct folder names, got {', '.join(names) or 'none'}")
    return members


def grid_members(settings: TrainSettings) -> list[MemberSpec]:
    """The grid: for each architecture the product of the options it uses. A member's
    name shows its architecture's first option, its width, and every option that takes
    several values in the grid, e.g. ``topk-k10-x4`` or ``relu-l1-l1_0.001-x4-lr0.0003``."""
    varied = {name for name in (*GRID_OPTIONS, *settings.mechanism_options)
              if len(_alternatives(settings, name) or []) > 1}
    members: list[MemberSpec] = []
    for arch in dict.fromkeys(settings.arch):
        if arch == "itda":
            used, always = ["tau", "l0"], ["tau", "l0"]
        else:
            mechanism_options = _mechanism_option_names(arch)
            sparsity = [name for name in mechanism_options if _alternatives(settings, name) is not None]
            size = "width" if settings.width else "expansion"
            used = sparsity + [size] + (["lr"] if settings.lr is not None else []) + ["normalization"]
            if MECHANISMS[arch].supports_auxk:
                used.append("auxk")
            always = sparsity[:1] + [size]
        axes = [[(name, v) for v in _alternatives(settings, name)] for name in used]
        for combo in itertools.product(*axes):
            options = dict(combo)
            parts = [arch]
            for name, value in combo:
                if name in _SWITCH_NAMES:
                    if name in varied:
                        parts.append(_SWITCH_NAMES[name][bool(value)])
                elif name in always or name in varied:
                    text = format(value, "g") if isinstance(value, float) else str(value)
                    parts.append(NAME_FORMATS.get(name, name + "{}").format(text))
            members.append(MemberSpec("-".join(parts), arch, options))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise DiffdictError(f"the grid gives members with the same name: {', '.join(sorted(names))}")
    return members


def lr_at(step: int, base: float, settings: TrainSettings) -> float:
    factor = 1.0
    if settings.warmup_steps:
        factor = min(1.0, (step + 1) / settings.warmup_steps)
    total = settings.total_steps
    decay_start = total * (1 - settings.decay_fraction)
    if settings.decay_fraction and step >= decay_start:
        factor *= max(0.0, (total - step) / (total - decay_start))
    return base * factor
