"""The dictionary interface shared by SAEs, ITDA and MLP neurons, and the folder format.

A dictionary maps activations x (B, d_in) to codes (B, n_features) and back. Codes are
handed around either dense (a (B, n) tensor with zeros) or as :class:`SparseCodes`
(values and indices of the non-zero entries, (B, m) each), which every ``decode``
accepts. A saved dictionary is a folder with ``config.json`` (``kind`` plus what the
kind needs, its ``provenance`` when recorded, and checksums) and ``model.safetensors``;
:func:`load_dictionary` reads it back, and also reads EleutherAI sparsify and SAE Lens
folders (see ``foreign.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from diffdict.dictionaries.fused import sparse_decode
from diffdict.errors import DiffdictError
from diffdict.io import load_tensors, read_json, save_tensors, sha256_file, write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKSUMS_FIELD = "checksums"  # in config.json: sha256 of the weights file and of the rest of the config
PROVENANCE_FIELD = "provenance"  # in config.json: where the dictionary came from (``provenance.py``)

DICTIONARY_KINDS: dict[str, type["Dictionary"]] = {}


def register_kind(cls: type["Dictionary"]) -> type["Dictionary"]:
    DICTIONARY_KINDS[cls.kind] = cls
    return cls


@torch.no_grad()
def copy_tensors(targets: dict[str, Tensor], tensors: dict[str, Tensor], owner: str, optional: tuple = ()) -> None:
    """Copy each of ``tensors`` into the target of its name, checking that it is there
    (unless ``optional``) and has the target's shape."""
    for name, target in targets.items():
        if name not in tensors:
            if name in optional:
                continue
            raise DiffdictError(f"{owner} weights lack the tensor {name!r}")
        if tuple(tensors[name].shape) != tuple(target.shape):
            raise DiffdictError(f"{owner} tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                                f"expected {tuple(target.shape)}")
        target.copy_(tensors[name])


class SparseCodes(NamedTuple):
    """Non-zero codes of each token: values (B, m) and feature indices (B, m).

    Entries with value 0 are padding; an index may repeat (matching pursuit), and
    repeated entries add up.
    """

    values: Tensor
    indices: Tensor

    def to_dense(self, n_features: int) -> Tensor:
        dense = torch.zeros(self.values.shape[0], n_features, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put_(
            (torch.arange(self.values.shape[0], device=self.values.device).unsqueeze(1).expand_as(self.indices),
             self.indices),
            self.values,
            accumulate=True,
        )

    @staticmethod
    def from_dense(codes: Tensor) -> "SparseCodes":
        """The non-zero entries of dense codes, padded to the busiest token's count."""
        width = max(1, int((codes != 0).sum(-1).max())) if codes.numel() else 1
        values, indices = codes.abs().topk(min(width, codes.shape[-1]), dim=-1)
        return SparseCodes(codes.gather(-1, indices), indices)


class Dictionary(nn.Module):
    """Base class: subclasses set ``kind`` and implement the abstract methods."""

    kind: ClassVar[str]
    d_in: int  # attributes or properties of every dictionary
    n_features: int
    #: where the dictionary came from (see ``provenance.py``): written into config.json by
    #: ``save`` when set, read back by ``load_dictionary``; None when nothing recorded it
    provenance: dict[str, Any] | None = None

    @property
    def decoder_directions(self) -> Tensor:
        """(n_features, d_in): what one unit of each code adds to the reconstruction, in the
        activations' own space."""
        raise NotImplementedError

    # A subclass implements encode or encode_sparse; each defaults to the other.
    def encode(self, x: Tensor) -> Tensor:
        """Dense codes (B, n_features); a dictionary defines this or :meth:`encode_sparse`."""
        if type(self).encode_sparse is Dictionary.encode_sparse:
            raise NotImplementedError(f"{type(self).__name__} defines neither encode nor encode_sparse")
        return self.encode_sparse(x).to_dense(self.n_features)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        return SparseCodes.from_dense(self.encode(x))

    def decode(self, codes: Tensor | SparseCodes) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode_sparse(x))

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, Tensor]) -> "Dictionary":
        raise NotImplementedError

    def check_input(self, x: Tensor, what: str = "activations") -> None:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise DiffdictError(
                f"{what} have shape {tuple(x.shape)}, but this {self.kind} dictionary expects (tokens, {self.d_in})"
            )

    def check_codes(self, codes: Tensor | SparseCodes) -> None:
        if isinstance(codes, SparseCodes):
            if codes.values.shape != codes.indices.shape or codes.values.ndim != 2:
                raise DiffdictError(
                    f"sparse codes need values and indices of one shape (tokens, m), got "
                    f"{tuple(codes.values.shape)} and {tuple(codes.indices.shape)}"
                )
            if codes.indices.numel() and not (0 <= int(codes.indices.min()) and int(codes.indices.max()) < self.n_features):
                raise DiffdictError(f"code indices must lie in 0..{self.n_features - 1}")
        elif codes.ndim != 2 or codes.shape[1] != self.n_features:
            raise DiffdictError(f"codes have shape {tuple(codes.shape)}, expected (tokens, {self.n_features})")

    def _decode_rows(self, codes: Tensor | SparseCodes, rows: Tensor) -> Tensor:
        """Σ codes · rows (n_features, d) for checked dense or sparse codes."""
        self.check_codes(codes)
        if isinstance(codes, SparseCodes):
            return sparse_decode(codes.values, codes.indices, rows)
        return codes @ rows

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / WEIGHTS_FILE, self.state_tensors())
        config = {"kind": self.kind, **self.config()}
        if self.provenance is not None:
            config[PROVENANCE_FIELD] = self.provenance
        config[CHECKSUMS_FIELD] = {"config_sha256": _config_sha256(config),
                                   "weights_sha256": sha256_file(folder / WEIGHTS_FILE)}
        write_json(folder / CONFIG_FILE, config)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Dictionary":
        dictionary = load_dictionary(folder)
        if not isinstance(dictionary, cls):
            raise DiffdictError(f"{folder} holds a {dictionary.kind} dictionary, not a {cls.kind}")
        return dictionary


def load_dictionary(folder: str | Path) -> Dictionary:
    """Load a diffdict dictionary folder, an EleutherAI sparsify folder (``cfg.json`` +
    ``sae.safetensors``) or an SAE Lens folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffdictError(f"dictionary folder not found: {folder}")
    if (folder / CONFIG_FILE).exists():
        config = read_json(folder / CONFIG_FILE)
        config = config if isinstance(config, dict) else {}
        _check_weights_checksum(folder, check_config_checksum(folder, config))
        config.pop(CHECKSUMS_FIELD, None)
        recorded, kind = config.pop(PROVENANCE_FIELD, None), config.pop("kind", None)
        if kind not in DICTIONARY_KINDS:
            raise DiffdictError(
                f"{folder / CONFIG_FILE} names dictionary kind {kind!r}; expected one of {', '.join(sorted(DICTIONARY_KINDS))}"
            )
        tensors = load_tensors(folder / WEIGHTS_FILE)
        try:
            dictionary = DICTIONARY_KINDS[kind].from_saved(config, tensors)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise DiffdictError(f"{folder} is not a valid {kind} dictionary: {error}") from None
        _check_round_trip(folder, dictionary, config, tensors)
        if isinstance(recorded, dict):
            dictionary.provenance = recorded
        return dictionary
    from diffdict.dictionaries.foreign import FOREIGN_FORMATS

    for _, weights, load in FOREIGN_FORMATS:
        if (folder / weights).exists():
            return load(folder)
    others = "".join(f", or cfg.json + {weights} ({label})" for label, weights, _ in FOREIGN_FORMATS)
    raise DiffdictError(f"{folder} is not a dictionary folder: expected {CONFIG_FILE} + {WEIGHTS_FILE}{others}")


def _config_sha256(config: dict) -> str:
    fields = {k: v for k, v in config.items() if k != CHECKSUMS_FIELD}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_config_checksum(folder: Path, config: dict) -> dict | None:
    """The config's fields must hash to what its checksum record says; returns the
    record (None for a folder saved before records existed)."""
    record = config.get(CHECKSUMS_FIELD)
    if record is None:
        return None
    if not isinstance(record, dict) or set(record) != {"config_sha256", "weights_sha256"}:
        raise DiffdictError(f"{folder / CONFIG_FILE}: {CHECKSUMS_FIELD} is not a checksum record")
    if _config_sha256(config) != record["config_sha256"]:
        raise DiffdictError(f"corrupt file {folder / CONFIG_FILE}: its fields do not match their recorded sha256 "
                            "(edited after saving?)")
    return record


def _check_weights_checksum(folder: Path, record: dict | None) -> None:
    """Folders saved before checksum records existed have none; :func:`_check_round_trip`
    still checks them against their own shapes."""
    if record is None:
        return
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise DiffdictError(f"weights file not found: {weights}")
    if sha256_file(weights) != record["weights_sha256"]:
        raise DiffdictError(f"corrupt file {weights}: sha256 does not match the one recorded in {folder / CONFIG_FILE}")


def _check_round_trip(folder: Path, dictionary: Dictionary, config: dict, tensors: dict[str, Tensor]) -> None:
    """Every config field and every tensor must be what the loaded dictionary would save."""
    rebuilt = dictionary.config()
    for name in sorted(set(config) & set(rebuilt)):  # fields a config omits take their defaults
        if config[name] != rebuilt[name]:
            raise DiffdictError(
                f"{folder / CONFIG_FILE}: {name} = {config[name]!r} does not fit the weights "
                f"(a {dictionary.kind} dictionary with these tensors has {name} = {rebuilt[name]!r})"
            )
    shapes = {name: tuple(t.shape) for name, t in dictionary.state_tensors().items()}
    saved = {name: tuple(t.shape) for name, t in tensors.items()}
    if shapes != saved:
        name = next(n for n in sorted(set(shapes) | set(saved)) if shapes.get(n) != saved.get(n))
        raise DiffdictError(
            f"{folder / WEIGHTS_FILE}: tensor {name} has shape {saved.get(name, 'missing')}; "
            f"{folder / CONFIG_FILE} describes {shapes.get(name, 'no such tensor')}"
        )
