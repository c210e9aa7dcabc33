"""Per-feature statistics of a dictionary over an activation store, in one streaming pass.

For every feature i: ``count`` of firing tokens, ``frequency`` (share of tokens with a
non-zero code), ``mean_activation`` (a_i, the mean of its non-zero codes: what the ``add``
intervention scales the decoder direction by), ``max_activation``, ``min_activation`` and
``mean_abs_activation``.

They are saved with the dictionary as ``feature_stats.safetensors`` (tensors plus a JSON
header: site, capture mode (key ``what``), model, store digest, token count, and a
fingerprint of the dictionary's weights so that stale statistics are refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from diffdict.capture import capture_mode_of
from diffdict.dictionaries.base import CONFIG_FILE, WEIGHTS_FILE, Dictionary, SparseCodes
from diffdict.dictionaries.provenance import read_provenance
from diffdict.errors import DiffdictError, require_int
from diffdict.io import save_tensors, weights_fingerprint

STATS_FILE = "feature_stats.safetensors"
_META_KEY = "diffdict-feature-stats"
_TENSORS = ("count", "frequency", "mean_activation", "max_activation", "min_activation", "mean_abs_activation")


def site_space(dictionary: Dictionary, d: int, site: str = "the site") -> str:
    """How ``dictionary`` reads values of width ``d``: ``"dense"`` when d == d_in, ``"neurons"``
    for a neuron dictionary on its MLP site (the values are the neuron activations: codes =
    top-k of them, feature i's direction is e_i). Anything else: one clear error."""
    if dictionary.d_in == d:
        return "dense"
    if getattr(dictionary, "kind", None) == "neurons" and dictionary.n_features == d:
        return "neurons"
    extra = (f" or {dictionary.n_features} neurons" if getattr(dictionary, "kind", None) == "neurons" else "")
    raise DiffdictError(
        f"dictionary width mismatch: this {dictionary.kind} dictionary takes d={dictionary.d_in}{extra}, "
        f"but {site} has d={d} (was it trained on another site?)"
    )


def encode_codes(dictionary: Dictionary, x: Tensor, space: str) -> SparseCodes:
    """Sparse codes of site values x (B, d) in ``space`` (see :func:`site_space`)."""
    return dictionary.encode_activations(x) if space == "neurons" else dictionary.encode_sparse(x)


def encode_dense(dictionary: Dictionary, x: Tensor, space: str) -> Tensor:
    """Dense codes (B, n_features) of site values x (B, d)."""
    if space == "neurons":
        return dictionary.encode_activations(x).to_dense(dictionary.n_features)
    return dictionary.encode(x)


def coalesced_entries(codes: SparseCodes, n_features: int) -> tuple[Tensor, Tensor, Tensor]:
    """Non-zero codes as flat (token, feature, value) tensors, one entry per (token, feature):
    a feature repeated within a token (matching pursuit) is summed, as ``decode`` does."""
    values, indices = codes.values, codes.indices.long()
    keep = values != 0
    token = torch.arange(values.shape[0], device=values.device).unsqueeze(1).expand_as(indices)[keep]
    feature, value = indices[keep], values[keep]
    # a row sort finds repeats far faster than torch.unique (padding gets distinct negative indices)
    padded = torch.where(keep, indices, -1 - torch.arange(indices.shape[1], device=indices.device))
    if indices.shape[1] > 1 and bool((padded.sort(-1).values.diff(dim=-1) == 0).any()):
        unique, inverse = torch.unique(token * n_features + feature, return_inverse=True)
        value = torch.zeros(unique.numel(), dtype=value.dtype, device=value.device).index_add_(0, inverse, value)
        token, feature = unique // n_features, unique % n_features
    return token, feature, value


class FeatureStatsAccumulator:
    """Streaming per-feature counts, sums and extremes of non-zero sparse codes (repeated
    entries summed first: :func:`coalesced_entries`)."""

    def __init__(self, n_features: int):
        self.n_features = int(n_features)
        self.tokens = 0
        self.count = torch.zeros(self.n_features, dtype=torch.int64)
        self.total = torch.zeros(self.n_features, dtype=torch.float64)
        self.total_abs = torch.zeros(self.n_features, dtype=torch.float64)
        self.maximum = torch.full((self.n_features,), -float("inf"), dtype=torch.float64)
        self.minimum = torch.full((self.n_features,), float("inf"), dtype=torch.float64)

    @torch.no_grad()
    def update(self, codes: SparseCodes) -> None:
        _, feats, values = coalesced_entries(codes, self.n_features)
        self.add(codes.values.shape[0], feats, values)

    @torch.no_grad()
    def add(self, tokens: int, feats: Tensor, values: Tensor) -> None:
        """Count ``tokens`` tokens whose codes are the :func:`coalesced_entries` (feats, values)."""
        self.tokens += tokens
        keep = values != 0  # repeated entries may add up to zero
        values = values[keep].detach().to("cpu", torch.float64)
        feats = feats[keep].detach().to("cpu", torch.int64)
        if feats.numel() == 0:
            return
        self.count += torch.bincount(feats, minlength=self.n_features)
        self.total.index_add_(0, feats, values)
        self.total_abs.index_add_(0, feats, values.abs())
        self.maximum.scatter_reduce_(0, feats, values, reduce="amax")
        self.minimum.scatter_reduce_(0, feats, values, reduce="amin")

    def result(self, **meta: Any) -> "FeatureStats":
        fired = self.count > 0
        safe = self.count.clamp_min(1).double()
        zero = torch.zeros(self.n_features, dtype=torch.float64)
        return FeatureStats(
            count=self.count.clone(),
            frequency=(self.count.double() / max(self.tokens, 1)).float(),
            mean_activation=torch.where(fired, self.total / safe, zero).float(),
            max_activation=torch.where(fired, self.maximum, zero).float(),
            min_activation=torch.where(fired, self.minimum, zero).float(),
            mean_abs_activation=torch.where(fired, self.total_abs / safe, zero).float(),
            meta={"tokens": int(self.tokens), "n_features": self.n_features, **meta},
        )


@dataclass
class FeatureStats:
    """Per-feature statistics (tensors of shape (n_features,)) and where they came from (``meta``)."""

    count: Tensor
    frequency: Tensor
    mean_activation: Tensor
    max_activation: Tensor
    min_activation: Tensor
    mean_abs_activation: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.count.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.meta.get("tokens", 0))

    @property
    def site(self) -> str | None:
        return self.meta.get("site")

    @property
    def capture(self) -> str | None:
        """The capture mode the statistics were read in (update, output, mlp), if recorded."""
        return capture_mode_of(self.meta)

    @property
    def what(self) -> str | None:  # the former name of capture
        return self.capture

    @property
    def dead(self) -> Tensor:
        return self.count == 0

    def typical_activation(self, feature: int) -> float:
        """a_i, the mean of feature i's non-zero activations; a clear error when it never fired."""
        if not 0 <= int(feature) < self.n_features:
            raise DiffdictError(f"feature {feature} out of range: the statistics cover features 0..{self.n_features - 1}")
        if int(self.count[feature]) == 0:
            raise DiffdictError(
                f"feature {feature} never fired on the {self.tokens} tokens its statistics were computed on, so it "
                "has no typical activation; pick another feature or give the activation explicitly"
            )
        return float(self.mean_activation[feature])

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in _TENSORS}


def compute_feature_stats(dictionary: Dictionary, source: Any, site: str | None = None, batch_size: int = 4096,
                          max_tokens: int | None = None, progress: bool = False) -> FeatureStats:
    """Statistics of ``dictionary``'s codes over ``source``: a store (or its path; ``site``
    optional when it has one) or any iterable of (B, d) tensors; ``max_tokens`` stops early."""
    return compute_feature_stats_many([dictionary], source, site, batch_size, max_tokens, progress)[0]


def compute_feature_stats_many(dictionaries: list[Dictionary], source: Any, site: str | None = None,
                               batch_size: int = 4096, max_tokens: int | None = None,
                               progress: bool = False) -> list[FeatureStats]:
    """:func:`compute_feature_stats` for several dictionaries of one site in one pass."""
    from diffdict.store import Store, open_store

    if not dictionaries:
        raise DiffdictError("no dictionaries to compute feature statistics for")
    require_int(batch_size, "batch size")
    if max_tokens is not None and max_tokens < 1:
        raise DiffdictError(f"max tokens must be positive, got {max_tokens}")
    from tqdm import tqdm

    spaces: list[str] | None = None
    total = None
    if isinstance(source, (str, Path)):
        source = open_store(source)
    if isinstance(source, Store):
        store = source
        site = resolve_store_site(store, site)
        spaces = [site_space(dic, store.d(site), f"site {site!r} of store {store.path}") for dic in dictionaries]
        settings = store.settings or {}
        # the capture mode is written under "what", the key every earlier version wrote
        meta = dict(site=site, what=capture_mode_of(settings.get("capture")), model=settings.get("model"),
                    host=settings.get("host"), store=str(store.path),
                    store_digest=store.digest, grid=list(store.grid(site)))
        total = store.num_tokens(site) if max_tokens is None else min(store.num_tokens(site), max_tokens)
        batches: Iterable[Tensor] = store.iter_batches(site, batch_size, shuffle=False)
    else:
        batches, meta = source, {"site": site}
    accs = [FeatureStatsAccumulator(dic.n_features) for dic in dictionaries]
    seen = 0
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="feature stats", disable=not progress)
    with torch.no_grad(), bar:
        for x in batches:
            if not isinstance(x, Tensor):
                x = torch.as_tensor(x)
            if x.ndim != 2:
                raise DiffdictError(f"expected batches of shape (tokens, d), got {tuple(x.shape)}")
            if spaces is None:
                spaces = [site_space(dic, x.shape[1], "the activations") for dic in dictionaries]
            if max_tokens is not None:
                x = x[: max(0, max_tokens - seen)]
                if x.shape[0] == 0:
                    break
            x = x.float()
            if not bool(torch.isfinite(x).all()):
                raise DiffdictError(f"non-finite activations after {seen} tokens of {site or 'the source'}")
            for dic, space, acc in zip(dictionaries, spaces, accs):
                acc.update(encode_codes(dic, x, space))
            seen += x.shape[0]
            bar.update(x.shape[0])
    if seen == 0:
        raise DiffdictError("no tokens to compute feature statistics from")
    return [acc.result(dictionary_kind=dic.kind, dictionary=weights_fingerprint(dic.state_tensors()), space=space, **meta)
            for dic, space, acc in zip(dictionaries, spaces, accs)]


def resolve_store_site(store: Any, site: str | None) -> str:
    """``site`` checked against the store, or the store's only site."""
    if site is None:
        if len(store.sites) != 1:
            raise DiffdictError(f"store {store.path} has several sites ({', '.join(store.sites)}); choose one with --site")
        return store.sites[0]
    if site not in store.sites:
        raise DiffdictError(f"unknown site {site!r}; the store {store.path} has {', '.join(store.sites)}")
    return site


def save_feature_stats(folder: str | Path, stats: FeatureStats) -> Path:
    """Write ``folder/feature_stats.safetensors`` (atomically); returns its path."""
    path = Path(folder) / STATS_FILE
    save_tensors(path, stats.tensors(), metadata={_META_KEY: json.dumps(stats.meta, sort_keys=True)})
    return path


def load_feature_stats(folder: str | Path, dictionary: Dictionary | None = None,
                       required: bool = True) -> FeatureStats | None:
    """The statistics saved in a dictionary folder. Missing: a clear error (None when not
    ``required``). With ``dictionary``, statistics computed for other weights are refused."""
    folder = Path(folder)
    path = folder / STATS_FILE
    if not path.exists():
        if not required:
            return None
        raise DiffdictError(
            f"no feature statistics in {folder}; compute them with 'diffdict feature-stats --run {folder} --store STORE'"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise DiffdictError(f"corrupt or unreadable feature statistics {path}: {error}") from None
    missing = [name for name in _TENSORS if name not in tensors]
    if missing:
        raise DiffdictError(f"feature statistics {path} lack {', '.join(missing)}")
    stats = FeatureStats(**{name: tensors[name] for name in _TENSORS}, meta=meta)
    if dictionary is not None:
        if stats.n_features != dictionary.n_features:
            raise DiffdictError(
                f"feature statistics in {folder} cover {stats.n_features} features but the dictionary has "
                f"{dictionary.n_features}; recompute them with 'diffdict feature-stats'"
            )
        recorded = meta.get("dictionary")
        if recorded and recorded != weights_fingerprint(dictionary.state_tensors()):
            raise DiffdictError(
                f"feature statistics in {folder} were computed for other weights; recompute them with 'diffdict feature-stats'"
            )
    return stats


def saved_feature_stats(folder: str | Path, dictionary: Dictionary) -> FeatureStats | None:
    """The statistics saved for these weights; None when missing, stale or unreadable."""
    try:
        return load_feature_stats(folder, dictionary, required=False)
    except DiffdictError:
        return None


_DICTIONARY_MARKERS = ((CONFIG_FILE, WEIGHTS_FILE), ("cfg.json", "sae.safetensors"), ("cfg.json", "sae_weights.safetensors"))


def is_dictionary_folder(folder: Path) -> bool:
    return folder.is_dir() and any((folder / a).exists() and (folder / b).exists() for a, b in _DICTIONARY_MARKERS)


def found_dictionaries(path: Path) -> list[Path]:
    """``[path]`` when it is a dictionary folder, else its member dictionary folders (maybe none)."""
    if is_dictionary_folder(path):
        return [path]
    return sorted(p for p in path.iterdir() if is_dictionary_folder(p)) if path.is_dir() else []


def dictionary_folders(path: str | Path) -> list[Path]:
    """A dictionary folder itself, or the member folders of a training run (``RUN/<member>/``)."""
    path = Path(path)
    if not path.exists():
        raise DiffdictError(f"dictionary or run folder not found: {path}")
    members = found_dictionaries(path)
    if not members:
        raise DiffdictError(f"{path} holds no dictionary: expected {CONFIG_FILE} + {WEIGHTS_FILE} in it or in its member folders")
    return members


def single_dictionary_folder(path: str | Path) -> Path:
    """The one dictionary named by ``path`` (a dictionary, or a run with one member)."""
    folders = dictionary_folders(path)
    if len(folders) > 1:
        names = ", ".join(p.name for p in folders[:8]) + (", ..." if len(folders) > 8 else "")
        raise DiffdictError(f"run {path} has {len(folders)} dictionaries ({names}); name one, e.g. {folders[0]}")
    return folders[0]


def dictionary_metadata(folder: str | Path) -> dict[str, Any]:
    """``site``, ``what`` (the capture mode) and ``model`` of a saved dictionary, from its provenance."""
    known = read_provenance(folder)
    return {key: known[key] for key in ("site", "what", "model") if known.get(key) is not None}


def recorded_store(folder: str | Path) -> Path | None:
    """The activation store a dictionary was trained on, as recorded (it may since have
    moved). None when nothing records one (e.g. trained from an array file)."""
    store = read_provenance(folder).get("store")
    return Path(store) if store else None


def recorded_host(folder: str | Path) -> dict[str, Any]:
    """The host model a dictionary's activations came from, as a store records it (``model``,
    ``host``, ``generation``); empty when nothing records the model."""
    known = read_provenance(folder)
    if not known.get("model"):
        return {}
    return {"model": known["model"], "host": known.get("host") or {}, "generation": known.get("generation") or {}}


def require_recorded_store(folder: str | Path) -> Path:
    """:func:`recorded_store`; one clear error when none is recorded or it has moved."""
    store = recorded_store(folder)
    if store is None:
        raise DiffdictError(f"dictionary {folder} records no activation store (trained from an array file?); "
                            "pass --store STORE")
    if not (store / "manifest.json").exists():
        raise DiffdictError(f"dictionary {folder} was trained on the store {store}, which is missing (moved or "
                            "deleted); pass --store STORE")
    return store


def ensure_feature_stats(folder: str | Path, dictionary: Dictionary, store: Any = None, site: str | None = None,
                         progress: bool = True) -> FeatureStats:
    """The saved statistics when they are for these weights, else computed from ``store``
    (default: the one it was trained on) and cached in ``folder``."""
    from diffdict.store import open_store

    folder = Path(folder)
    stats = saved_feature_stats(folder, dictionary)
    if stats is not None:
        return stats
    if store is None:
        store = require_recorded_store(folder)
    store = store if not isinstance(store, (str, Path)) else open_store(store)
    if site is None:
        recorded = dictionary_metadata(folder).get("site")
        site = recorded if recorded in store.sites else None
    stats = compute_feature_stats(dictionary, store, resolve_store_site(store, site), progress=progress)
    save_feature_stats(folder, stats)
    return stats


__all__ = [
    "FeatureStats", "FeatureStatsAccumulator", "STATS_FILE", "compute_feature_stats", "compute_feature_stats_many",
    "dictionary_folders", "dictionary_metadata", "encode_codes", "encode_dense", "ensure_feature_stats",
    "is_dictionary_folder", "load_feature_stats", "recorded_host", "recorded_store", "require_recorded_store",
    "resolve_store_site", "save_feature_stats", "single_dictionary_folder", "site_space",
]
