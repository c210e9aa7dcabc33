"""Host-model adapters: the text-to-image models whose activations diffdict reads and edits.

``load_host(name, **options)`` builds one from the registry ``HOSTS``. Adding a host is
one file with a :class:`HostModel` subclass plus one line here.

Options, the same for every host: ``model`` (the weights: a local folder, for real hosts
also a hub id; default: the shipped toy weights or the host's hub model; ``path`` is an
alias), ``device``, ``dtype``, ``image_size``. The toy host also takes a ToyDiffusion
instance as ``model``. Real hosts also: ``pipeline`` (an already built diffusers
pipeline), ``quantize='nf4'``, ``variant``, ``offload``; ``flux-schnell`` also
``max_sequence_length``.
"""

from __future__ import annotations

import importlib
import inspect

from diffdict.errors import DiffdictError
from diffdict.hosts.base import WHATS, HostModel, SiteInfo

HOSTS: dict[str, str] = {
    "toy": "diffdict.hosts.toy:ToyHost",
    "sdxl-turbo": "diffdict.hosts.sdxl:SDXLTurboHost",
    "sdxl": "diffdict.hosts.sdxl:SDXLHost",
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
    params: list[str] = []
    for base in host_class(name).__mro__:
        if base is HostModel:
            break
        if "__init__" not in vars(base):
            continue
        for param in inspect.signature(base.__init__).parameters.values():
            if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if param.name not in params:
                params.append(param.name)
    return params


def load_host(name: str = DEFAULT_HOST, only_taken: bool = False, **options) -> HostModel:
    """Build the host ``name`` (see the module docstring for its options; None values
    are left out, so CLI defaults pass through). An option the host does not take is an
    error, or with ``only_taken`` left out (options that apply to real models only)."""
    cls = host_class(name)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = host_options(name)
    for key in list(options):
        if key not in accepted:
            if only_taken:
                del options[key]
                continue
            raise DiffdictError(f"model {name} takes no option {key!r}; its options: {', '.join(accepted)}")
    return cls(**options)


def is_real_host(name: str | None) -> bool:
    """Whether ``name`` is a real text-to-image model (anything but a host that draws the
    shapes world; an unknown name counts as real)."""
    return name not in HOSTS or not host_class(name).shapes_world


from diffdict.hosts.recorded import host_for_store, load_recorded_host  # noqa: E402  (uses the registry above)

__all__ = ["HOSTS", "DEFAULT_HOST", "WHATS", "HostModel", "SiteInfo", "host_class", "host_for_store", "host_options",
           "is_real_host", "load_host", "load_recorded_host"]
