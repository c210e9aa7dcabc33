"""The trainer: a grid of dictionaries fitted in one pass over the activations.

    settings ──grid──▶ members (one SAE + optimiser, or one ITDA build, each)
    for step in steps:                      batch = f(seed, step), this rank's slice
        for member: forward, backward       (ITDA: grow the dictionary)
        all-reduce gradients (torchrun)     one flat buffer for all members
        for member: optimiser step, unit-norm decoder, dead-feature counters
        every log_every: RUN/<member>/metrics.jsonl
        every checkpoint_every: RUN/<member>/checkpoint-<step>.safetensors, then
                                RUN/state.json names the step (the commit point);
                                the last step saves the dictionaries only

One host sync a step (all members' loss flags at once), metrics summed on the device and
read every log_every steps; members with the same input normalisation share the
normalised batch. Adam is ``diffdict.adam`` (``torch.optim`` costs 3 s of imports).

Everything a step does is a function of (settings, step) and the checkpointed state, so a
run killed at any moment and started again with the same settings ends with the same
weights as an uninterrupted one. ``settings.json`` holds what determines the weights; a
different command on an existing RUN folder is refused.

``RUN/<member>/metrics.jsonl`` has one line per ``log_every`` steps, averaged over them:
step, tokens, lr, mse (per element), fvu, explained_variance, l0, dead_fraction (share of
features silent for ``dead_window`` tokens), aux_loss (the AuxK term before α), penalty,
tokens_per_s (this member's own compute), elapsed_s and cpu_s (wall and CPU time of the
pass). Metrics are in the activations' own space, undoing any input normalisation.

Data parallel: ``torchrun --nproc_per_node=N -m diffdict train ...`` (gloo on CPU, NCCL
on GPU). Each rank takes a contiguous 1/N of every global batch; gradients, fired
features and metrics are summed across ranks, so N processes follow the same trajectory
as one (up to float rounding). ITDA members gather the whole batch on every rank and build
identically.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from diffdict.adam import Adam
from diffdict.dictionaries.base import Dictionary
from diffdict.dictionaries.data import ActivationSource, Batch, open_activations, prefetch
from diffdict.dictionaries.itda import ITDA, PURSUITS
from diffdict.dictionaries.provenance import training_provenance
from diffdict.dictionaries.sae import B_DEC_INITS, SparseAutoencoder, normalization_name
from diffdict.dictionaries.sparsity import MECHANISMS
from diffdict.errors import DiffdictError
from diffdict.io import load_checkpoint, read_json, save_checkpoint, write_json

SETTINGS_FILE = "settings.json"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
MEMBER_FILE = "member.json"

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


@dataclass
class TrainSettings:
    """What determines the trained weights; list-valued fields form the grid."""

    acts: str
    site: str | None = None
    arch: list[str] = field(default_factory=lambda: ["topk"])
    expansion: list[float] = field(default_factory=lambda: [4.0])
    width: list[int] | None = None  # replaces expansion when given
    lr: list[float] | None = None  # None: default_lr(width) for each member
    normalization: list[str] = field(default_factory=lambda: ["none"])
    # sparsity options (None: the mechanism's default)
    k: list[int] = field(default_factory=lambda: [32])
    auxk: list[bool] = field(default_factory=lambda: [True])
    l1: list[float] | None = None
    l0_coef: list[float] | None = None
    theta: list[float] | None = None
    learn_theta: list[bool] | None = None
    bandwidth: float | None = None
    threshold_decay: float | None = None
    # AuxK and dead features
    auxk_coef: float = 1 / 32
    k_aux: int | None = None  # default d_in // 2
    dead_window: int = 10_000_000
    # initialisation and speed
    b_dec_init: str = "geometric-median"
    init_tokens: int = 16384
    bf16: bool = True
    # ITDA
    tau: list[float] = field(default_factory=lambda: [0.3])
    l0: list[int] = field(default_factory=lambda: [10])
    pursuit: str = "mp"
    itda_tokens: int | None = None
    itda_chunk: int = 256
    max_atoms: int | None = None
    # the pass
    batch_size: int = 4096
    tokens: int = 2_000_000
    seed: int = 0
    warmup_steps: int = 0
    decay_fraction: float = 0.0  # linear decay to 0 over this last fraction of steps

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        for name in ("batch_size", "tokens", "init_tokens", "dead_window", "itda_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiffdictError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in GRID_OPTIONS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, list) or not value):
                raise DiffdictError(f"--{name.replace('_', '-')} needs at least one value")
        for arch in self.arch:
            if arch not in MECHANISMS and arch != "itda":
                raise DiffdictError(
                    f"unknown --arch {arch!r}; expected one of {', '.join(sorted(MECHANISMS))}, itda"
                )
        for value in self.k:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiffdictError(f"--k must be positive integers, got {value!r}")
        for value in self.lr or []:
            if not value > 0:
                raise DiffdictError(f"--lr must be positive, got {value}")
        for value in self.expansion:
            if not value > 0:
                raise DiffdictError(f"--expansion must be positive, got {value}")
        self.normalization = [normalization_name(n) for n in self.normalization]
        if self.b_dec_init not in B_DEC_INITS:
            raise DiffdictError(f"unknown --b-dec-init {self.b_dec_init!r}; expected one of {', '.join(B_DEC_INITS)}")
        if self.pursuit not in PURSUITS:
            raise DiffdictError(f"unknown --pursuit {self.pursuit!r}; expected one of {', '.join(PURSUITS)}")
        if not 0 <= self.decay_fraction <= 1:
            raise DiffdictError(f"--decay-fraction must lie in [0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0:
            raise DiffdictError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")

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
    parameters = list(inspect.signature(MECHANISMS[arch].__init__).parameters)
    return [p for p in parameters if p not in ("self", "n_features")]


def _format(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def grid_members(settings: TrainSettings) -> list[MemberSpec]:
    """The grid: for each architecture the product of the options it uses. A member's
    name shows its architecture's first option, its width, and every option that takes
    several values in the grid, e.g. ``topk-k10-x4`` or ``relu-l1-l1_0.001-x4-lr0.0003``."""
    varied = {name for name in GRID_OPTIONS if isinstance(getattr(settings, name), list)
              and len(getattr(settings, name)) > 1}
    members: list[MemberSpec] = []
    for arch in dict.fromkeys(settings.arch):
        if arch == "itda":
            used, always = ["tau", "l0"], ["tau", "l0"]
        else:
            mechanism_options = _mechanism_option_names(arch)
            sparsity = [name for name in mechanism_options if getattr(settings, name, None) is not None]
            size = "width" if settings.width else "expansion"
            used = sparsity + [size] + (["lr"] if settings.lr is not None else []) + ["normalization"]
            if MECHANISMS[arch].supports_auxk:
                used.append("auxk")
            always = sparsity[:1] + [size]
        axes = [[(name, v) for v in (getattr(settings, name) if isinstance(getattr(settings, name), list)
                                     else [getattr(settings, name)])] for name in used]
        for combo in itertools.product(*axes):
            options = dict(combo)
            parts = [arch]
            for name, value in combo:
                if name == "auxk":
                    if "auxk" in varied:
                        parts.append("auxk" if value else "noauxk")
                elif name == "learn_theta":
                    if "learn_theta" in varied:
                        parts.append("learned" if value else "fixed")
                elif name in always or name in varied:
                    parts.append(NAME_FORMATS.get(name, name + "{}").format(_format(value)))
            members.append(MemberSpec("-".join(parts), arch, options))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise DiffdictError(f"the grid gives members with the same name: {', '.join(sorted(names))}")
    return members


# --------------------------------------------------------------------------- members


@dataclass
class StepResult:
    """What a member's forward and backward on one local batch hands to the loop."""

    finite: torch.Tensor  # () bool: the loss is finite
    sums: torch.Tensor  # (4,) sq_error, aux_loss·tokens, penalty·tokens, l0·tokens (local)
    fired: torch.Tensor  # (n,) bool: features that coded some token (empty for ITDA)
    seconds: float = 0.0


class _Distributed:
    """The process group, or a single process."""

    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started_here = False
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            self.started_here = True

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's (equal-sized) tensor along dim 0, in rank order."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.started_here:
            dist.destroy_process_group()


class SAEMember:
    def __init__(self, spec: MemberSpec, settings: TrainSettings, d: int, device: torch.device):
        self.spec, self.settings = spec, settings
        options = spec.options
        mechanism_options = {name: options[name] for name in _mechanism_option_names(spec.arch) if name in options}
        width = options.get("width")
        self.model = SparseAutoencoder(
            d, width, expansion=options.get("expansion"), mechanism=spec.arch, mechanism_options=mechanism_options,
            normalization=options["normalization"], bf16=settings.bf16, seed=settings.seed,
        ).to(device).train()
        self.auxk = bool(options.get("auxk", False))
        self.lr = options["lr"] if "lr" in options else default_lr(self.model.n_features)
        self.optimizer = Adam(self.model.parameters(), lr=self.lr, fused=device.type in ("cpu", "cuda"))
        self.tokens_since_fired = torch.zeros(self.model.n_features, dtype=torch.long, device=device)
        self.variance = 1.0

    @property
    def dictionary(self) -> Dictionary:
        return self.model

    def initialize(self, sample: torch.Tensor) -> None:
        self.variance = self.model.initialize(sample, self.settings.b_dec_init)

    def forward_backward(self, batch: Batch, comm: _Distributed, normalized: dict[str, torch.Tensor]) -> StepResult:
        model = self.model
        # Members with the same input normalisation share its statistics (all are set from
        # the same sample), so the batch is normalised once for them all.
        x_n = normalized.get(model.normalization)
        if x_n is None:
            x_n = normalized[model.normalization] = model.normalize(batch.x)
        dead = self.tokens_since_fired >= self.settings.dead_window if self.auxk else None
        out = model.training_forward(x_n, self.variance, dead, self.settings.auxk_coef, self.settings.k_aux,
                                     sum_over_ranks=comm.sum_ if comm.active else None)
        self.optimizer.zero_grad()
        # A non-finite loss gives non-finite gradients, harmless: the step is refused
        # before the optimiser runs. Checking first would cost a host sync per member.
        out.loss.backward()
        tokens = x_n.shape[0]
        # token-weighted sums, so that they add up over ranks
        sums = torch.stack([out.sq_error, out.aux_loss * tokens, out.penalty * tokens, out.l0 * tokens])
        return StepResult(torch.isfinite(out.loss.detach()), sums, out.fired)

    def gradients(self) -> list[torch.Tensor]:
        for p in self.model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.model.parameters()]

    def step(self, lr: float, fired: torch.Tensor, tokens: int) -> None:
        model = self.model
        model.remove_parallel_decoder_grad()
        self.optimizer.lr = lr
        self.optimizer.step()
        model.after_step()
        self.tokens_since_fired.add_(tokens).masked_fill_(fired, 0)

    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired >= self.settings.dead_window).float().mean())

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "tokens_since_fired": self.tokens_since_fired, "variance": self.variance}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.variance = float(state["variance"])


class ITDAMember:
    def __init__(self, spec: MemberSpec, settings: TrainSettings, d: int, device: torch.device):
        self.spec, self.settings = spec, settings
        self.model = ITDA(d, l0=spec.options["l0"], tau=spec.options["tau"], pursuit=settings.pursuit,
                          chunk_tokens=settings.itda_chunk, max_atoms=settings.max_atoms).to(device)
        self.budget = settings.itda_tokens or settings.tokens
        self.tokens_built = 0

    @property
    def dictionary(self) -> Dictionary:
        return self.model

    def initialize(self, sample: torch.Tensor) -> None:
        pass

    @property
    def building(self) -> bool:
        return self.tokens_built < self.budget

    def forward_backward(self, batch: Batch, comm: _Distributed, normalized: dict[str, torch.Tensor]) -> StepResult:
        n = batch.x.shape[0]
        if not self.building:
            return StepResult(torch.tensor(True), torch.zeros(4), torch.zeros(0, dtype=torch.bool))
        x = comm.gather(batch.x)
        labels = {name: comm.gather(value) for name, value in batch.labels.items()}
        recon = self.model.build_step(x, labels)
        local = slice(comm.rank * n, (comm.rank + 1) * n)
        sq_error = (recon[local] - batch.x).pow(2).sum()
        sums = torch.stack([sq_error, torch.zeros(()), torch.zeros(()), torch.tensor(float(self.model.l0 * n))])
        return StepResult(torch.isfinite(sq_error), sums, torch.zeros(0, dtype=torch.bool))

    def gradients(self) -> list[torch.Tensor]:
        return []

    def step(self, lr: float, fired: torch.Tensor, tokens: int) -> None:
        if self.building:
            self.tokens_built += tokens

    def dead_fraction(self) -> float | None:
        return None

    def state(self) -> dict[str, Any]:
        return {"atoms": self.model.atoms, "labels": dict(self.model.labels), "tokens_built": self.tokens_built}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.atoms = state["atoms"].clone()
        self.model.labels = {k: v.clone() for k, v in state["labels"].items()}
        self.model._gram = None
        self.tokens_built = int(state["tokens_built"])


def _make_member(spec: MemberSpec, settings: TrainSettings, d: int, device: torch.device):
    kind = ITDAMember if spec.arch == "itda" else SAEMember
    return kind(spec, settings, d, device)


# --------------------------------------------------------------------------- the loop


def lr_at(step: int, base: float, settings: TrainSettings) -> float:
    factor = 1.0
    if settings.warmup_steps:
        factor = min(1.0, (step + 1) / settings.warmup_steps)
    total = settings.total_steps
    decay_start = total * (1 - settings.decay_fraction)
    if settings.decay_fraction and step >= decay_start:
        factor *= max(0.0, (total - step) / (total - decay_start))
    return base * factor


def _settings_differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")


def _all_reduce_gradients(members: list, comm: _Distributed) -> None:
    """Average every member's gradients over the ranks, in one collective."""
    grads = [g for m in members for g in m.gradients()] if comm.active else []
    if not grads:
        return
    flat = comm.sum_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view(g.shape)).div_(comm.world_size)
        offset += g.numel()


class _Metrics:
    """Sums over one logging interval for every member, kept on each rank and summed over
    the ranks only when a line is written."""

    def __init__(self, members: list, tokens_total: int, data_variance: float, device: torch.device):
        self.members = members
        self.tokens_total = tokens_total  # tokens of the whole run so far
        self.data_variance = data_variance
        self.device = device
        self.started, self.started_cpu = time.perf_counter(), time.process_time()
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.members), 4, dtype=torch.float64, device=self.device)
        self.seconds = [0.0] * len(self.members)
        self.tokens = 0
        self.steps = 0

    def add(self, index: int, sums: torch.Tensor, seconds: float) -> None:
        self.sums[index] += sums
        self.seconds[index] += seconds

    def rows(self, step: int, d: int, lrs: dict[str, float], comm: _Distributed) -> dict[str, dict[str, Any]]:
        """Every rank calls this at the same steps (it sums over the ranks); rank 0 writes."""
        all_sums = comm.sum_(self.sums).tolist()
        rows = {}
        for member, member_sums, seconds in zip(self.members, all_sums, self.seconds):
            name = member.spec.name
            if not any(member_sums) and isinstance(member, ITDAMember):
                continue
            sq_error, aux, penalty, l0_tokens = member_sums
            fvu = sq_error / (self.tokens * self.data_variance) if self.data_variance > 0 else float("nan")
            row = {
                "step": step, "tokens": self.tokens_total, "lr": lrs.get(name),
                "mse": sq_error / (self.tokens * d), "fvu": fvu, "explained_variance": 1 - fvu,
                "l0": l0_tokens / self.tokens, "dead_fraction": member.dead_fraction(),
                "aux_loss": aux / self.tokens, "penalty": penalty / self.tokens,
                "tokens_per_s": self.tokens / seconds if seconds else None,
                # wall and CPU (all threads) time of this pass so far, all members together
                "elapsed_s": time.perf_counter() - self.started,
                "cpu_s": time.process_time() - self.started_cpu,
            }
            if isinstance(member, ITDAMember):
                row["atoms"] = member.model.n_features
            rows[name] = row
        return rows


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill ends the file
    path.write_text("".join(line + "\n" for line in kept))


def train(
    settings: TrainSettings,
    out: str | Path,
    *,
    checkpoint_every: int = 500,
    log_every: int = 50,
    progress: bool | None = None,
    device: str = "cpu",
    stop_after_step: int | None = None,
    threads: int | None = None,
) -> dict[str, Path]:
    """Train every grid member of ``settings`` in one pass; return member name → folder
    (``config.json`` + ``model.safetensors``, loadable with ``load_dictionary``; config.json
    records where the dictionary came from, see ``diffdict.dictionaries.provenance``).

    An existing ``out`` with the same settings is resumed from its last checkpoint; with
    different settings it is refused. ``stop_after_step`` stops the pass once that many
    steps are done without writing a checkpoint, as a kill would (for tests). ``threads``:
    torch CPU threads during the pass (default: one for a small step, see
    ``SMALL_STEP_MACS``, else torch's setting); the caller's setting is restored after.
    """
    settings.validate()
    if checkpoint_every < 1 or log_every < 1:
        raise DiffdictError("--checkpoint-every and --log-every must be positive")
    out = Path(out)
    torch_device = torch.device(device)
    source = open_activations(settings.acts, settings.site)
    comm = _Distributed(torch_device)
    before = torch.get_num_threads()
    if threads is None and torch_device.type == "cpu" and _encoder_macs(settings, source.d, comm) < SMALL_STEP_MACS:
        threads = 1
    try:
        if threads:
            torch.set_num_threads(threads)
        return _train(settings, out, source, comm, torch_device, checkpoint_every, log_every, progress,
                      stop_after_step)
    finally:
        torch.set_num_threads(before)
        comm.close()


# Below this many encoder multiply-adds a step, a pass runs on one thread: its operations
# are too small for OpenMP's fork and join to pay, and on a machine whose other cores are
# busy, threads waiting for each other make a toy-scale step 20x slower (d = 128, 512
# features, batch 1024 with the other core taken: 3.8k tokens/s on 2 threads, 78k on 1).
SMALL_STEP_MACS = 1e9


def _encoder_macs(settings: TrainSettings, d: int, comm: _Distributed) -> float:
    widths = [spec.options.get("width") or round(spec.options["expansion"] * d)
              for spec in grid_members(settings) if spec.arch != "itda"]
    return settings.batch_size / comm.world_size * d * sum(widths)


def _read_run(out: Path, settings: TrainSettings) -> int:
    """The step to resume from (0 for a new run); refuses a run with other settings."""
    settings_path = out / SETTINGS_FILE
    if settings_path.exists():
        stored = read_json(settings_path)
        if stored != settings.to_json():
            raise DiffdictError(
                f"{out} holds a run with different settings ({_settings_differences(stored, settings.to_json())}); "
                "rerun with the same settings (or --resume) to continue it, or use a new --out folder"
            )
        state_path = out / STATE_FILE
        return int(read_json(state_path)["step"]) if state_path.exists() else 0
    if out.exists() and any(out.iterdir()):
        raise DiffdictError(f"{out} exists and is not a diffdict training run; use a new --out folder")
    return 0


def _train(settings, out, source: ActivationSource, comm: _Distributed, device, checkpoint_every, log_every,
           progress, stop_after_step) -> dict[str, Path]:
    d = source.d
    specs = grid_members(settings)
    source.check_batch_size(settings.batch_size, comm.world_size)
    start = _read_run(out, settings)
    comm.barrier()  # every rank has read the folder before rank 0 writes to it
    total = settings.total_steps
    if start >= total:  # finished: the dictionaries are saved and there is nothing to resume
        return {spec.name: out / spec.name for spec in specs}
    members = [_make_member(spec, settings, d, device) for spec in specs]
    writer = comm.rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / SETTINGS_FILE, settings.to_json())

    if start:
        for member in members:
            member.load_state(load_checkpoint(out / member.spec.name / f"checkpoint-{start}.safetensors"))
        data_variance = float(read_json(out / STATE_FILE)["data_variance"])
    else:
        sample = source.sample(settings.init_tokens, settings.seed).to(device)
        if not torch.isfinite(sample).all():
            raise DiffdictError(f"non-finite values in the initialisation sample of {source.name}")
        for member in members:
            member.initialize(sample)
        # E‖x − x̄‖² per token: the denominator of the training FVU
        data_variance = float((sample.double() - sample.double().mean(0)).pow(2).sum(1).mean())
        del sample
    if writer:
        for member in members:
            folder = out / member.spec.name
            folder.mkdir(exist_ok=True)
            write_json(folder / MEMBER_FILE, {"name": member.spec.name, "arch": member.spec.arch,
                                              "options": member.spec.options})
            _truncate_metrics(folder / METRICS_FILE, start)

    record = training_provenance(source, settings.acts, settings.seed)
    last_checkpoint = start
    metrics = _Metrics(members, start * settings.batch_size, data_variance, device)
    batches = prefetch(source.batches(settings.batch_size, settings.seed, start, comm.rank, comm.world_size))
    # progress None: tqdm shows the bar on a terminal only
    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
               disable=True if not writer else (None if progress is None else not progress))

    def checkpoint(step: int) -> None:
        """The last step saves the dictionaries only: a finished run is never resumed."""
        if writer:
            for member in members:
                if step < total:
                    save_checkpoint(out / member.spec.name / f"checkpoint-{step}.safetensors", member.state())
                member.dictionary.provenance = {**record, "tokens": step * settings.batch_size}
                member.dictionary.save(out / member.spec.name)
            write_json(out / STATE_FILE, {"step": step, "total_steps": total, "done": step >= total,
                                          "data_variance": data_variance})
            for member in members:
                for old in (out / member.spec.name).glob("checkpoint-*.safetensors"):
                    if old.name != f"checkpoint-{step}.safetensors":
                        old.unlink()
        comm.barrier()

    def log(step: int) -> None:
        if metrics.steps:
            lrs = {m.spec.name: lr_at(step - 1, m.lr, settings) for m in members if isinstance(m, SAEMember)}
            rows = metrics.rows(step, d, lrs, comm)
            if writer:
                for name, row in rows.items():
                    with open(out / name / METRICS_FILE, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                first = next(iter(rows.values()), None)
                if first is not None:
                    bar.set_postfix(fvu=f"{first['fvu']:.4f}", l0=f"{first['l0']:.1f}")
        metrics.reset()

    try:
        for step in range(start, total):
            if stop_after_step is not None and step >= stop_after_step:
                return {}
            batch = next(batches)
            batch.x = batch.x.to(device, non_blocking=True)
            normalized: dict[str, torch.Tensor] = {}
            results = []
            for member in members:
                began = time.perf_counter()
                result = member.forward_backward(batch, comm, normalized)
                result.seconds = time.perf_counter() - began
                results.append(result)
            del normalized
            fired = _check_finite(results, batch, members, source, comm, step, out, last_checkpoint)
            _all_reduce_gradients(members, comm)
            global_tokens = settings.batch_size
            for index, (member, result, member_fired) in enumerate(zip(members, results, fired)):
                began = time.perf_counter()
                lr = lr_at(step, member.lr, settings) if isinstance(member, SAEMember) else 0.0
                member.step(lr, member_fired, global_tokens)
                metrics.add(index, result.sums, result.seconds + time.perf_counter() - began)
            metrics.tokens += global_tokens
            metrics.tokens_total += global_tokens
            metrics.steps += 1
            bar.update(1)
            done = step + 1
            if done % log_every == 0 or done % checkpoint_every == 0 or done == total:
                log(done)
            if done % checkpoint_every == 0 or done == total:
                checkpoint(done)
                last_checkpoint = done
    finally:
        bar.close()
        batches.close()
    return {member.spec.name: out / member.spec.name for member in members}


def _check_finite(results: list[StepResult], batch: Batch, members, source, comm: _Distributed, step: int, out,
                  last_checkpoint: int) -> list[torch.Tensor]:
    """Raise if a member's loss or the batch is not finite on any rank; return each
    member's fired features, over all ranks. One host sync a step (all members at once);
    the batch is searched for bad rows only when a loss is not finite. Under torchrun one
    collective carries the flags and the fired features."""
    diverged = ~torch.stack([r.finite for r in results])
    bad_rows = (~torch.isfinite(batch.x)).any(1) if bool(diverged.any()) else None
    fired = [r.fired for r in results]
    if comm.active:
        bad_data = torch.tensor([float(bad_rows is not None and bool(bad_rows.any()))], device=diverged.device)
        flags = comm.max_(torch.cat([bad_data, diverged.float()] + [f.float() for f in fired]))
        any_bad_data, diverged = bool(flags[0]), flags[1: 1 + len(results)].bool()
        fired = list(torch.split(flags[1 + len(results):].bool(), [f.numel() for f in fired]))
        stop = any_bad_data or bool(diverged.any())
    else:
        any_bad_data = bad_rows is not None and bool(bad_rows.any())
        stop = bad_rows is not None  # some loss diverged
    if stop:
        _raise_non_finite(any_bad_data, diverged, batch, bad_rows, members, source, step, out, last_checkpoint)
    return fired


def _raise_non_finite(bad_data, diverged, batch, bad_rows, members, source, step, out, last_checkpoint) -> None:
    kept = f"the last good checkpoint (step {last_checkpoint}) is kept in {out}" if last_checkpoint else \
        f"no checkpoint was written yet in {out}"
    if bad_data:
        if bad_rows is not None and bad_rows.any():
            where = f"{batch.describe_row(int(bad_rows.nonzero()[0]))} of {source.name}"
        else:
            where = f"another process's share of the batch from {source.name}"
        raise DiffdictError(f"NaN or infinite activations in the batch of step {step} ({where}); "
                            f"training stopped, {kept}")
    names = [m.spec.name for m, flag in zip(members, diverged) if flag]
    raise DiffdictError(f"the loss of {', '.join(names)} became NaN or infinite at step {step} "
                        f"(batch from {source.name}); training stopped, {kept}")


def load_run_settings(out: str | Path) -> TrainSettings:
    path = Path(out) / SETTINGS_FILE
    if not path.exists():
        raise DiffdictError(f"{out} is not a training run (no {SETTINGS_FILE}); nothing to resume")
    return TrainSettings.from_json(read_json(path))


def run_members(out: str | Path) -> list[Path]:
    """The member folders of a run that hold a dictionary."""
    out = Path(out)
    if not (out / SETTINGS_FILE).exists():
        raise DiffdictError(f"{out} is not a training run (no {SETTINGS_FILE})")
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / "config.json").exists())
