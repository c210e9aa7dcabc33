"""Rebuild the host model a store was collected with, from what the store recorded.

A store's settings name the host (``model``) and describe it (``host``: the model folder
or hub id in ``source``, the image size, the compute dtype, NF4 quantization, FLUX's
T5 sequence length; for the toy model a fingerprint of its weights). Every command that
generates again for a store or a dictionary (fidelity, icons, interventions, the app)
goes through :func:`load_recorded_host`, so a local ``--model-path`` folder is used
again and the images match the ones the store holds.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from diffdict.errors import DiffdictError
from diffdict.hosts.base import check_device, load_host

#: ``host`` keys of a store record that are options of the host's constructor
_RECORDED_OPTIONS = ("image_size", "quantize", "max_sequence_length")
_HALF = ("float16", "bfloat16")


def load_recorded_host(settings: dict, model_path: str | os.PathLike | None = None, device: str | None = None,
                       dtype: str | None = None, where: str = "the store", **overrides: Any):
    """The host described by store ``settings``. ``model_path`` replaces the recorded
    model folder (a moved folder, or other weights on purpose); ``device`` and ``dtype``
    replace the recorded ones; ``overrides`` other options (None values are ignored)."""
    settings = settings or {}
    name = settings.get("model")
    if not name:
        raise DiffdictError(f"{where} records no host model (an imported array?); name one with --model")
    recorded = settings.get("host") or {}
    if name == "toy":
        return _toy_host(recorded, model_path, device, where)
    source = str(model_path) if model_path is not None else recorded.get("source") or recorded.get("model")
    if source in (None, "in-memory"):
        raise DiffdictError(f"{where} was collected with an in-memory {name} pipeline; pass --model-path DIR")
    if model_path is None and os.path.isabs(source) and not os.path.isdir(source):
        raise DiffdictError(f"{where} was collected with the {name} model folder {source}, which no longer exists; "
                            "pass --model-path DIR (where it is now)")
    options = {key: recorded.get(key) for key in _RECORDED_OPTIONS}
    if isinstance(options["image_size"], list):
        options["image_size"] = tuple(options["image_size"])
    device = check_device(device)
    if dtype is None and not (recorded.get("dtype") in _HALF and torch.device(device).type == "cpu"):
        dtype = recorded.get("dtype")  # a half-precision record made on a GPU runs in float32 on a CPU
    options["dtype"] = dtype
    options.update({k: v for k, v in overrides.items() if v is not None})
    return load_host(name, model=source, device=device, **options)


def host_for_store(store: Any, model_path: str | os.PathLike | None = None):
    """The host model that made ``store``, rebuilt from what it recorded (model folder,
    image size, dtype; see :func:`load_recorded_host`)."""
    return load_recorded_host(store.settings, model_path, where=f"store {store.path}")


def _toy_host(recorded: dict, model_path, device, where: str):
    host = load_host("toy", model=str(model_path) if model_path is not None else None, device=device)
    weights = recorded.get("weights")
    if weights and host.describe()["weights"] != weights:
        given = f"the toy model in {model_path}" if model_path is not None else "the shipped toy model"
        raise DiffdictError(f"{where} was collected with toy weights {weights}, but {given} has "
                            f"{host.describe()['weights']}; pass --model-path with the toy model it was made with")
    return host


__all__ = ["host_for_store", "load_recorded_host"]
