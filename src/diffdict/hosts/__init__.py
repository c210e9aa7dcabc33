"""Host-model adapters: the text-to-image models whose activations diffdict reads and edits.

``load_host(name, **options)`` builds one from the registry ``HOSTS``. Adding a host is
one file with a :class:`HostModel` subclass plus one line here.

Options: ``toy``: ``path`` (a saved ToyDiffusion folder; default: the shipped weights),
``model`` (a ToyDiffusion instance), ``device``. Real hosts: ``model`` (hub id or local
folder), ``pipeline`` (an already built diffusers pipeline), ``dtype``, ``device``,
``quantize='nf4'``, ``image_size``, ``variant``, ``offload``; ``flux-schnell`` also
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


def load_host(name: str = DEFAULT_HOST, **options) -> HostModel:
    """Build the host ``name`` (see the module docstring for its options; None values
    are left out, so CLI defaults pass through)."""
    cls = host_class(name)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = host_options(name)
    for key in options:
        if key not in accepted:
            raise DiffdictError(f"model {name} takes no option {key!r}; its options: {', '.join(accepted)}")
    return cls(**options)


def is_real_host(name: str) -> bool:
    """Whether ``name`` is a real text-to-image model (anything but the shapes-world toy)."""
    return name != "toy"


from diffdict.hosts.recorded import load_recorded_host  # noqa: E402  (uses the registry above)

__all__ = ["HOSTS", "DEFAULT_HOST", "WHATS", "HostModel", "SiteInfo", "host_class", "host_options", "is_real_host",
           "load_host", "load_recorded_host"]
