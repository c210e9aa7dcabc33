"""Where a dictionary came from: the ``provenance`` block of its ``config.json``.

``diffdict train`` records it in every member folder it saves (built by
:func:`training_provenance`); :class:`~diffdict.dictionaries.Dictionary` carries it as
``dictionary.provenance`` (``save`` writes it, ``load_dictionary`` reads it back)::

    site, what            the site trained on and its capture mode (update, output, mlp);
                          the key is ``what``, as every version wrote it (a record naming
                          the mode ``capture`` instead is read the same)
    model, model_weights  the host model's name and the fingerprint of its weights, as the
                          store recorded them (toy: ``diffdict.io.weights_fingerprint``;
                          None for a model the store names by folder or hub id only)
    host, generation      the store's description of the host and of how it generated
    store, store_digest   the store folder (absolute) and its manifest digest
    acts                  the activations file, when training read an array, not a store
    tokens, seed          tokens the saved weights were trained on, and the run's seed

The block is a field of config.json, so the config checksum covers it: an edited record
is refused like any other edited field.

:func:`read_provenance` is the one reader every command uses. A folder without the block
(saved before it existed, written by another library, or by hand) goes through the one
fallback, :func:`legacy_provenance`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffdict.capture import capture_mode_of
from diffdict.dictionaries.base import CONFIG_FILE, PROVENANCE_FIELD, check_config_checksum
from diffdict.errors import DiffdictError
from diffdict.io import read_json

if TYPE_CHECKING:  # pragma: no cover
    from diffdict.dictionaries.data import ActivationSource

PROVENANCE_VERSION = 1
_ARRAY_SUFFIXES = (".npy", ".safetensors", ".pt")


def training_provenance(source: "ActivationSource", acts: str, seed: int) -> dict[str, Any]:
    """The record of a training pass over ``source`` (opened from ``acts``), less
    ``tokens``, which the trainer sets at each save."""
    store = getattr(source, "store", None)
    settings = (store.settings if store is not None else None) or {}
    host = settings.get("host") or {}
    return {"version": PROVENANCE_VERSION, "site": getattr(source, "site", None),
            "what": capture_mode_of(settings.get("capture")), "model": settings.get("model"),
            "model_weights": host.get("weights"), "host": host or None, "generation": settings.get("generation"),
            "store": str(Path(store.path).resolve()) if store is not None else None,
            "store_digest": store.digest if store is not None else None,
            "acts": None if store is not None else str(Path(acts).resolve()), "seed": seed}


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """What is known about where the dictionary in ``folder`` came from: its recorded
    provenance (see the module's docstring), else :func:`legacy_provenance`. Keys that
    nothing records are absent or None."""
    folder = Path(folder)
    config = read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
    if not isinstance(config, dict) or not isinstance(config.get(PROVENANCE_FIELD), dict):
        return legacy_provenance(folder)
    check_config_checksum(folder, config)  # an edited record is refused
    return dict(config[PROVENANCE_FIELD])


def legacy_provenance(folder: str | Path) -> dict[str, Any]:
    """The fallback for a folder with no provenance record, from the files that told it
    before records existed, later ones winning:

    1. the training run's ``settings.json`` in the parent folder: its ``site``, and the
       store its ``acts`` names (absolute, or relative to the run's parent): the store's
       only site, its model, capture mode, host and generation;
    2. the feature statistics saved in the folder (site, capture mode, model, store, host);
    3. the folder's own config.json fields ``site``, ``what`` (or ``capture``), ``model``
       (or under ``source``);
    4. an SAE Lens ``cfg.json``: ``hook_name`` and ``model_name`` (top level, or under
       ``metadata`` as SAE Lens 6 and ``diffdict export`` write them).

    The store is the statistics' store when it exists, else the run's, else whichever
    is named (it may have moved). Files that are missing or unreadable add nothing.
    """
    from diffdict.feature_stats import load_feature_stats

    folder = Path(folder)
    known: dict[str, Any] = {}
    run_settings = _json_object(folder.parent / "settings.json")
    run_stores = _run_stores(run_settings.get("acts"), folder.parent)
    try:
        stats = load_feature_stats(folder, required=False)
    except DiffdictError:
        stats = None
    meta = stats.meta if stats is not None else {}
    stores = ([Path(meta["store"])] if meta.get("store") else []) + run_stores
    store = next((s for s in stores if (s / "manifest.json").exists()), stores[0] if stores else None)
    if run_settings.get("site") is not None:
        known["site"] = run_settings["site"]
    known.update(_store_record(store, single_site="site" not in known))
    known.update({k: meta[k] for k in ("site", "model", "host") if meta.get(k) is not None})
    if (what := capture_mode_of(meta)) is not None:
        known["what"] = what
    config = _json_object(folder / CONFIG_FILE)
    source = config.get("source") if isinstance(config.get("source"), dict) else {}
    for key in ("site", "what", "model"):
        for where in (source, config):  # the config's own field wins
            value = capture_mode_of(where) if key == "what" else where.get(key)
            if value is not None:
                known[key] = value
    foreign = _json_object(folder / "cfg.json")
    for where in (foreign, foreign.get("metadata") if isinstance(foreign.get("metadata"), dict) else {}):
        for ours, theirs in (("site", "hook_name"), ("model", "model_name")):
            if isinstance(where.get(theirs), str) and where[theirs]:
                known[ours] = where[theirs]
    if store is not None:
        known["store"] = str(store)
    return known


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except DiffdictError:
        return {}
    return data if isinstance(data, dict) else {}


def _run_stores(acts: Any, run: Path) -> list[Path]:
    """Where a training run's ``acts`` may be, when it names a store (not an array file)."""
    if not isinstance(acts, str) or not acts or Path(acts).suffix in _ARRAY_SUFFIXES:
        return []
    acts_path = Path(acts)
    return [acts_path] if acts_path.is_absolute() else [acts_path, run / acts_path]


def _store_record(store: Path | None, single_site: bool) -> dict[str, Any]:
    """What a store says of how it was made (nothing when it is missing or unreadable);
    with ``single_site``, its site when it has only one."""
    if store is None or not (store / "manifest.json").exists():
        return {}
    from diffdict.store import open_store

    try:
        opened = open_store(store)
    except DiffdictError:
        return {}
    settings = opened.settings if isinstance(opened.settings, dict) else {}
    found = {"model": settings.get("model"), "what": capture_mode_of(settings.get("capture")), "host": settings.get("host") or {},
             "generation": settings.get("generation") or {}}
    if single_site and len(opened.sites) == 1:
        found["site"] = opened.sites[0]
    return {k: v for k, v in found.items() if v is not None}


__all__ = ["PROVENANCE_VERSION", "legacy_provenance", "read_provenance", "training_provenance"]
