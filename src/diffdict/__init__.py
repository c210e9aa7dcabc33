"""diffdict: dictionary learning (sparse autoencoders, ITDA) for text-to-image diffusion models.

The public Python API, one import per pipeline stage; the ``diffdict`` command is a thin
layer over it. Heavy submodules are imported on first use.
"""

from __future__ import annotations

import importlib
import types

from diffdict.errors import DiffdictError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the shapes world and its shipped models
    "world": "diffdict",
    "ToyDiffusion": "diffdict.models", "ShapesClip": "diffdict.models", "load_model": "diffdict.models",
    # host models and hooks
    "load_host": "diffdict.hosts", "HOSTS": "diffdict.hosts", "HostModel": "diffdict.hosts.base",
    "load_recorded_host": "diffdict.hosts",
    "SiteInfo": "diffdict.hosts.base", "ReadHook": "diffdict.capture", "EditHook": "diffdict.capture",
    "Recorder": "diffdict.capture", "capture": "diffdict.capture", "collect": "diffdict.collect",
    # activation store
    "StoreWriter": "diffdict.store", "Store": "diffdict.store", "open_store": "diffdict.store",
    "import_array": "diffdict.store", "store_info": "diffdict.store", "verify_store": "diffdict.store",
    # dictionaries, training, evaluation
    "Dictionary": "diffdict.dictionaries", "SparseAutoencoder": "diffdict.dictionaries",
    "ITDA": "diffdict.dictionaries", "load_dictionary": "diffdict.dictionaries",
    "train": "diffdict.train", "evaluate_run": "diffdict.evaluate",
    "export_dictionary": "diffdict.dictionaries.export",
    # interventions and metrics
    "Add": "diffdict.interventions", "LatentEdit": "diffdict.interventions", "Splice": "diffdict.interventions",
    "Ablate": "diffdict.interventions", "Icon": "diffdict.interventions", "RandomDirection": "diffdict.interventions",
    "intervene": "diffdict.interventions", "feature_icon": "diffdict.interventions",
    "compute_feature_stats": "diffdict.feature_stats", "load_feature_stats": "diffdict.feature_stats",
    "ensure_feature_stats": "diffdict.feature_stats",
    "causal_strength": "diffdict.metrics", "spliced_fidelity": "diffdict.metrics",
    "perceptual_distance": "diffdict.metrics", "clip_score": "diffdict.metrics",
    "frechet_distance": "diffdict.metrics", "manhattan_locality": "diffdict.metrics",
    "load_backbone": "diffdict.metrics", "run_intervention": "diffdict.interventions.experiments",
    "block_ablation": "diffdict.interventions.experiments",
    # interpretation and report
    "interpret": "diffdict.interpret", "compute_activation_stats": "diffdict.interpret",
    "make_explainer": "diffdict.interpret", "make_scorer": "diffdict.interpret",
    "build_report": "diffdict.report",
    # the ground-truth benchmark and the studies
    "run_bench": "diffdict.bench", "BenchConfig": "diffdict.bench", "write_bench": "diffdict.bench",
    "run_study": "diffdict.studies",
}

__all__ = ["DiffdictError", "__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffdict' has no attribute {name!r}")
    if name == "world":
        return importlib.import_module("diffdict.world")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    _unshadow()
    return value


def _unshadow() -> None:
    """Importing a submodule sets it as an attribute of this package: ``diffdict.train``
    the module hides ``diffdict.train`` the function once anything imported it. Put the
    exported objects back over the submodules of the same name."""
    for name, module in _EXPORTS.items():
        if name != "world" and isinstance(globals().get(name), types.ModuleType):
            globals()[name] = getattr(importlib.import_module(module), name)
