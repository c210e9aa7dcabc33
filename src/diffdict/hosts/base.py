"""The host-model interface: what every adapter (toy, SDXL Turbo, SDXL, FLUX) provides.

A host names its *sites* (transformer blocks, or a block's MLP neurons), generates uint8
images for a batch of prompts, and lets hooks read and edit a site at chosen denoising
steps (``with host.hooks([...]): host.generate(...)``; the hooks are in
:mod:`diffdict.capture`, as is :class:`SiteInfo`, the token layout of a site). Under
classifier-free guidance the host knows which rows of the denoiser's batch are the
conditional half, so hooks read and edit that half only. The registry ``HOSTS`` below
names every host; :func:`load_host` builds one by name.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import nn

from diffdict.capture import CAPTURE_MODES, EditHook, ReadHook, SiteInfo, install_hooks
from diffdict.errors import DiffdictError, noise_seeds

def parse_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``float16`` / ``bfloat16`` / ``float32`` (None: float16 on CUDA, float32 elsewhere)."""
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if name not in table:
        raise DiffdictError(f"unknown model dtype {name!r}; expected one of float16, bfloat16, float32")
    return table[name]


def check_device(device: str | torch.device | None) -> str:
    """A usable device name (None: cuda if available, else cpu)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise DiffdictError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DiffdictError(f"device {device!r} asked for, but no CUDA device is available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DiffdictError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return str(device)


class HostModel:
    """Base class of host-model adapters. Subclasses implement ``sites``,
    ``components``, ``uses_cfg``, ``check_prompts``, ``describe`` and ``_generate``."""

    name: str = "base"
    default_steps: int = 1
    #: denoising steps of the studies' generations when ``--denoise-steps`` is not given
    #: (None: ``default_steps``)
    study_steps: int | None = None
    default_guidance: float = 0.0
    #: whether the host draws the shapes world (prompts in its vocabulary; the concept
    #: ground truth, the concept oracle and shapes-clip apply to its images)
    shapes_world: bool = False
    #: the image-text judge studies use on its images by default
    default_judge: str = "open-clip"

    def __init__(self) -> None:
        self._cfg_active = False
        self._step: int | None = None

    # -- to implement -------------------------------------------------------------------
    def sites(self) -> dict[str, SiteInfo]:
        raise NotImplementedError

    def components(self) -> dict[str, nn.Module]:
        """The host's modules by name; ``SiteInfo.module`` paths start with one of them."""
        raise NotImplementedError

    def uses_cfg(self, guidance: float) -> bool:
        """Whether the denoiser's batch is [unconditional; conditional] at this guidance."""
        raise NotImplementedError

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise DiffdictError for the first prompt the model cannot take."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DiffdictError(f"prompt {i} is not a string: {prompt!r}")

    def describe(self) -> dict:
        """JSON-able description: what a store records about the model (refuses to mix)."""
        raise NotImplementedError

    def _generate(self, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                  on_step: Callable[[int], None] | None) -> np.ndarray:
        raise NotImplementedError

    @property
    def image_size(self) -> tuple[int, int]:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    @property
    def current_step(self) -> int | None:
        """The denoising step being computed (0-based), None outside ``generate``."""
        return self._step

    @property
    def device(self) -> torch.device:
        devices = (param.device for module in self.components().values() for param in module.parameters())
        return next(devices, torch.device("cpu"))

    def site(self, name: str) -> SiteInfo:
        sites = self.sites()
        if name not in sites:
            raise DiffdictError(f"unknown site {name!r} for model {self.name}; valid sites: {', '.join(sites)}")
        return sites[name]

    def resolve_site(self, name: str, capture: str) -> SiteInfo:
        """The site that capture mode ``capture`` at ``name`` reads: ``capture='mlp'`` on a
        block site reads that block's MLP neurons (site ``NAME.mlp``)."""
        if capture not in CAPTURE_MODES:
            raise DiffdictError(f"unknown capture {capture!r}; expected one of {', '.join(CAPTURE_MODES)}")
        info = self.site(name)
        if capture == "mlp" and info.kind != "mlp":
            mlp_name = f"{name}.mlp"
            if mlp_name not in self.sites():
                raise DiffdictError(f"site {name!r} of model {self.name} has no MLP neurons to capture")
            return self.sites()[mlp_name]
        if capture == "update" and info.kind == "mlp":
            raise DiffdictError(
                f"site {name!r} holds MLP neurons, which have no update (output - input); use --capture mlp"
            )
        return info

    def module(self, path: str) -> nn.Module:
        head, _, rest = path.partition(".")
        components = self.components()
        if head not in components:
            raise DiffdictError(f"module path {path!r} does not start with a component of {self.name}: {', '.join(components)}")
        return components[head].get_submodule(rest) if rest else components[head]

    def batch_rows(self, batch: int, half: str) -> slice | None:
        """Rows of the denoiser's batch a hook with ``half`` ('cond', 'uncond', 'both')
        sees. Under CFG the batch is [unconditional; conditional]."""
        if half == "both":
            return slice(0, batch)
        if not self._cfg_active:
            return slice(0, batch) if half == "cond" else None
        if batch % 2:
            raise DiffdictError(f"expected a [unconditional; conditional] batch under guidance, got {batch} rows")
        return slice(batch // 2, batch) if half == "cond" else slice(0, batch // 2)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seed: int = 0, seeds: Sequence[int] | None = None,
                 steps: int | None = None, guidance: float | None = None,
                 on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """uint8 images (N, H, W, 3). Image i starts from noise seeded by ``seeds[i]``
        (default ``seed + i``), independent of the rest of its batch."""
        prompts = list(prompts)
        seeds = noise_seeds(prompts, seed, seeds)
        self.check_prompts(prompts)
        steps = self.default_steps if steps is None else int(steps)
        guidance = self.default_guidance if guidance is None else float(guidance)
        if steps < 1:
            raise DiffdictError(f"number of denoising steps {steps} must be at least 1")
        self._cfg_active = self.uses_cfg(guidance)
        try:
            return self._generate(prompts, seeds, steps, guidance, on_step)
        finally:
            self._cfg_active = False
            self._step = None

    def hooks(self, hooks: Sequence["ReadHook | EditHook"]) -> ContextManager:
        """Install read/edit hooks (:mod:`diffdict.capture`) for the duration of the block."""
        return install_hooks(self, list(hooks))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {len(self.sites())} sites>"


# -- the registry of hosts -------------------------------------------------------------------
HOSTS: dict[str, str] = {
    "toy": "diffdict.hosts.toy:ToyHost",
    "sdxl-turbo": "diffdict.hosts.sd:SDXLTurboHost",
    "sdxl": "diffdict.hosts.sd:SDXLHost",
    "flux-schnell": "diffdict.hosts.flux:FluxSchnellHost",
    "sd": "diffdict.hosts.sd:SDHost",
}

DEFAULT_HOST = "toy"


def host_class(name: str) -> type[HostModel]:
    if name not in HOSTS:
        raise DiffdictError(f"unknown model {name!r}; available: {', '.join(HOSTS)}")
    module, _, attr = HOSTS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def host_options(name: str) -> list[str]:
    """The keyword options ``load_host(name, ...)`` accepts."""
    mro = host_class(name).__mro__
    params = [param.name for base in mro[:mro.index(HostModel)] if "__init__" in vars(base)
              for param in inspect.signature(base.__init__).parameters.values()
              if param.name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)]
    return list(dict.fromkeys(params))


def load_host(name: str = DEFAULT_HOST, only_taken: bool = False, **options) -> HostModel:
    """Build the host ``name`` (see :mod:`diffdict.hosts` for its options; None values
    are left out, so CLI defaults pass through). An option the host does not take is an
    error, or with ``only_taken`` left out (options that apply to real models only)."""
    cls = host_class(name)
    accepted = host_options(name)
    options = {k: v for k, v in options.items() if v is not None and (k in accepted or not only_taken)}
    for key in options:
        if key not in accepted:
            raise DiffdictError(f"model {name} takes no option {key!r}; its options: {', '.join(accepted)}")
    return cls(**options)


def is_real_host(name: str | None) -> bool:
    """Whether ``name`` is a real text-to-image model (anything but a host that draws the
    shapes world; an unknown name counts as real)."""
    return name not in HOSTS or not host_class(name).shapes_world
