"""Host-model adapters: the text-to-image models whose activations diffdict reads and edits.

``load_host(name, **options)`` builds one from the registry ``HOSTS`` (both in
:mod:`diffdict.hosts.base`). Adding a host is one file with a :class:`HostModel`
subclass plus one line in ``HOSTS``.

Options, the same for every host: ``model`` (the weights: a local folder, for real hosts
also a hub id; default: the shipped toy weights or the host's hub model; ``path`` is an
alias), ``device``, ``dtype``, ``image_size``. The toy host also takes a ToyDiffusion
instance as ``model``. Real hosts also: ``pipeline`` (an already built diffusers
pipeline), ``quantize='nf4'``, ``variant``, ``offload``; ``flux-schnell`` also
``max_sequence_length``.
"""

from __future__ import annotations

from diffdict.capture import WHATS  # the former name of CAPTURE_MODES
from diffdict.hosts.base import (CAPTURE_MODES, DEFAULT_HOST, HOSTS, HostModel, SiteInfo, host_class, host_options,
                                 is_real_host, load_host)
from diffdict.hosts.recorded import host_for_store, load_recorded_host

__all__ = ["HOSTS", "DEFAULT_HOST", "CAPTURE_MODES", "WHATS", "HostModel", "SiteInfo", "host_class", "host_for_store",
           "host_options", "is_real_host", "load_host", "load_recorded_host"]
