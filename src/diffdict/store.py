"""The activation store: sharded, resumable, verifiable, streamed from disk.

A store is a directory::

    STORE/
      store.json                  header: format, settings, sites (d, token grid), dtype,
                                  chunk size, prompts; written once, compared on reopen
      shards/<site>/<chunk>.safetensors   "acts" (n, d) in the store dtype and
                                  "meta" (n, 4) int32: prompt_id, step, row, col
      images/<chunk>.safetensors  "images" uint8 (n_prompts_in_chunk, H, W, 3), optional
      chunks/<chunk>.json         completion record of a chunk: files, sizes, sha256s
      manifest.json               the finished store: header + every chunk record + digest

Work is divided into *chunks*: a fixed consecutive range of prompt ids. A chunk's files
are written to temporary names, fsynced and renamed; only then is its completion record
written (atomically). A chunk is complete iff its record exists and matches the files,
so a process killed at any moment leaves at most an incomplete chunk that the next run
rewrites, and several processes (e.g. torchrun ranks) can write disjoint chunks into one
store without coordinating. :meth:`StoreWriter.finalize` assembles ``manifest.json``
from the records in chunk order; readers only open finalized stores.

The ``digest`` of a store is a sha256 over the content hashes (activations and per-token
metadata, in the store dtype) of every shard in canonical order (sites sorted, chunks in
order), plus the sites, d, grids, dtype and token counts. It does not depend on how many
processes wrote the store or whether it was resumed; it does depend on the chunk size,
which is part of the store's settings.

Readers trust nothing they have not checked: :func:`open_store` cross-checks every
manifest field with ``store.json``, the chunk records and the digest, and refuses any file
path that leads outside the store; each file is hashed (xxh3-128, from the bytes the
loader reads, as it reads them) and compared with its record before any batch holding its
data is handed out. ``verify=False`` (the commands' ``--no-verify``) skips the hashing.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import math
import os
import re
import secrets
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import xxhash
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from diffdict.errors import DiffdictError
from diffdict.io import sha256_file

FORMAT = "diffdict-store"
FORMAT_VERSION = 1
HEADER_FILE = "store.json"
MANIFEST_FILE = "manifest.json"
CHUNKS_DIR = "chunks"
SHARDS_DIR = "shards"
IMAGES_DIR = "images"
META_FIELDS = ("prompt_id", "step", "row", "col")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_CHUNK_SIZE = 64
DEFAULT_BUFFER_TOKENS = 2**20
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TMP_SUFFIX = ".tmp"

__all__ = [
    "BatchIterator",
    "Store",
    "StoreWriter",
    "import_array",
    "open_store",
    "store_info",
    "verify_store",
]


# --------------------------------------------------------------------------- helpers


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy().tobytes()


def _content_sha256(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 over dtypes, shapes and raw bytes: independent of the file format."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{str(tensor.dtype)}{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _file_metadata(**fields: Any) -> dict[str, str]:
    # one key only: safetensors serialises its metadata map in no fixed order, and shard
    # files should be byte-identical however (and by how many processes) they were written
    return {FORMAT: _canonical_json({"version": FORMAT_VERSION, **fields})}


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"


def _durable_write(path: Path, data: bytes, temps: list[Path] | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    tmp = _tmp_name(path)
    if temps is not None:
        temps.append(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _stale_temps(folder: Path, name: str) -> list[Path]:
    if not folder.is_dir():
        return []
    prefix = f".{name}."
    return [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(_TMP_SUFFIX)]


def _describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        what = "disk full"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "permission denied" if error.errno != errno.EROFS else "read-only file system"
    else:
        what = error.strerror or str(error)
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    return f"{what}{where}"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        if not obj and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1] if prefix else "(value)": obj}


def _chunk_name(index: int) -> str:
    return f"{index:06d}"


def _dtype_name(dtype: str) -> str:
    if dtype not in DTYPES:
        raise DiffdictError(f"unknown store dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return dtype


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffdictError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DiffdictError(f"corrupt JSON file {path}: {error}") from None
    except OSError as error:
        raise DiffdictError(f"cannot read {path}: {_describe_os_error(error)}") from None


# --------------------------------------------------------------------------- header


def _make_header(
    settings: dict,
    sites: dict[str, int],
    grid: dict[str, tuple[int, int]],
    prompts: list[str] | None,
    chunk_size: int,
    dtype: str,
    num_prompts: int | None = None,
) -> dict:
    if not isinstance(settings, dict):
        raise DiffdictError(f"store settings must be a JSON object (dict), got {type(settings).__name__}")
    try:
        settings = json.loads(_canonical_json(settings))
    except (TypeError, ValueError) as error:
        raise DiffdictError(f"store settings are not JSON-serialisable: {error}") from None
    if not isinstance(sites, dict) or not sites:
        raise DiffdictError("a store needs at least one site (got none)")
    site_entries = {}
    for site, d in sites.items():
        if not isinstance(site, str) or not _SITE_RE.match(site):
            raise DiffdictError(f"bad site name {site!r}: expected letters, digits, '.', '_' or '-'")
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise DiffdictError(f"bad width d={d!r} for site {site!r}: expected a positive integer")
        if not isinstance(grid, dict) or site not in grid:
            raise DiffdictError(f"no token grid given for site {site!r}: expected grid[{site!r}] = (rows, cols)")
        g = grid[site]
        if (
            not isinstance(g, (tuple, list))
            or len(g) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in g)
        ):
            raise DiffdictError(f"bad token grid {g!r} for site {site!r}: expected (rows, cols), positive integers")
        site_entries[site] = {"d": int(d), "grid": [int(g[0]), int(g[1])]}
    extra = sorted(set(grid) - set(sites)) if isinstance(grid, dict) else []
    if extra:
        raise DiffdictError(f"token grid given for unknown site(s) {', '.join(extra)}; sites are {', '.join(sorted(sites))}")
    if prompts is not None:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise DiffdictError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        if not prompts:
            raise DiffdictError("no prompts given: a store needs at least one prompt")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DiffdictError(f"prompt {i} is not a string: {prompt!r}")
        prompts = list(prompts)
        num_prompts = len(prompts)
    elif num_prompts is None or num_prompts < 1:
        raise DiffdictError("a store needs at least one prompt (or imported row)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise DiffdictError(f"bad chunk size {chunk_size!r}: expected a positive integer")
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "settings": settings,
        "sites": site_entries,
        "dtype": _dtype_name(dtype),
        "chunk_size": int(chunk_size),
        "num_prompts": int(num_prompts),
        "prompts": prompts,
    }


def _header_key(header: dict) -> str:
    return _sha256_bytes(_canonical_json(header).encode())


def _header_differences(old: dict, new: dict) -> list[str]:
    diffs: list[str] = []
    if old.get("settings") != new["settings"]:
        a, b = _flatten(old.get("settings", {})), _flatten(new["settings"])
        keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
        parts = [f"{k}: {_short(a.get(k, '<unset>'))} in store, {_short(b.get(k, '<unset>'))} requested" for k in keys[:3]]
        more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
        diffs.append("settings differ (" + "; ".join(parts) + more + ")")
    old_sites, new_sites = old.get("sites", {}), new["sites"]
    if set(old_sites) != set(new_sites):
        diffs.append(f"sites differ (store has {', '.join(sorted(old_sites))}; requested {', '.join(sorted(new_sites))})")
    else:
        for site in sorted(new_sites):
            if old_sites[site]["d"] != new_sites[site]["d"]:
                diffs.append(f"d of site {site} differs ({old_sites[site]['d']} in store, {new_sites[site]['d']} requested)")
            if old_sites[site]["grid"] != new_sites[site]["grid"]:
                og, ng = old_sites[site]["grid"], new_sites[site]["grid"]
                diffs.append(f"grid of site {site} differs ({og[0]}x{og[1]} in store, {ng[0]}x{ng[1]} requested)")
    if old.get("dtype") != new["dtype"]:
        diffs.append(f"dtype differs ({old.get('dtype')} in store, {new['dtype']} requested)")
    if old.get("chunk_size") != new["chunk_size"]:
        diffs.append(f"chunk size differs ({old.get('chunk_size')} in store, {new['chunk_size']} requested)")
    if old.get("num_prompts") != new["num_prompts"]:
        diffs.append(f"prompts differ ({old.get('num_prompts')} in store, {new['num_prompts']} requested)")
    elif old.get("prompts") != new["prompts"]:
        a, b = old.get("prompts") or [], new["prompts"] or []
        first = next((i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]), None)
        if first is None or first >= len(a) or first >= len(b):
            diffs.append("prompts differ (captured prompts vs an imported array)")
        else:
            diffs.append(f"prompts differ (prompt {first}: {_short(a[first])} in store, {_short(b[first])} requested)")
    return diffs


# --------------------------------------------------------------------------- writer


class _Described:
    """The fields a store's header (while writing) and manifest (once finalized) share."""

    _description: dict

    @property
    def settings(self) -> dict:
        return self._description["settings"]

    @property
    def prompts(self) -> list[str]:
        """The prompts by prompt id ([] for an imported array, where prompt_id is the row)."""
        return list(self._description["prompts"] or [])

    @property
    def dtype(self) -> str:
        return self._description["dtype"]

    @property
    def chunk_size(self) -> int:
        return self._description["chunk_size"]

    @property
    def num_prompts(self) -> int:
        return self._description["num_prompts"]


class StoreWriter(_Described):
    """Create or reopen a store and write its chunks; see the module docstring."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self._header = header
        self._key = _header_key(header)

    @property
    def _description(self) -> dict:
        return self._header

    # -- opening -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        settings: dict,
        sites: dict[str, int],
        grid: dict[str, tuple[int, int]],
        prompts: list[str],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        dtype: str = "float16",
    ) -> "StoreWriter":
        """Create the store at ``path``, or reopen it if it was made with the same arguments.

        Reopening a store made with different settings, sites, grids, prompts, chunk size
        or dtype raises :class:`DiffdictError` naming what differs: a store never mixes.
        Safe to call from several processes at once (creation is atomic).
        """
        header = _make_header(settings, sites, grid, prompts, chunk_size, dtype)
        return cls._open_header(path, header)

    @classmethod
    def _open_header(cls, path: str | Path, header: dict) -> "StoreWriter":
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise DiffdictError(f"store path {path} exists and is not a directory")
        header_path = path / HEADER_FILE
        if not header_path.exists():
            if path.is_dir():
                others = [p.name for p in path.iterdir() if not p.name.startswith(f".{HEADER_FILE}.")]
                if others:
                    raise DiffdictError(
                        f"{path} exists, is not empty and is not a diffdict store (no {HEADER_FILE}); "
                        "choose a new or empty folder"
                    )
            try:
                path.mkdir(parents=True, exist_ok=True)
                cls._create_header(header_path, header)
            except OSError as error:
                raise DiffdictError(f"cannot create store {path}: {_describe_os_error(error)}") from None
        existing = _read_json_file(header_path)
        if not isinstance(existing, dict) or existing.get("format") != FORMAT:
            raise DiffdictError(f"{header_path} is not a diffdict store header")
        if existing.get("version") != FORMAT_VERSION:
            raise DiffdictError(
                f"store {path} has format version {existing.get('version')}, this diffdict reads version {FORMAT_VERSION}"
            )
        diffs = _header_differences(existing, header)
        if diffs:
            more = f" (and {len(diffs) - 2} more differences)" if len(diffs) > 2 else ""
            raise DiffdictError(
                f"store {path} refuses to mix: {'; '.join(diffs[:2])}{more}; use a new output folder"
            )
        writer = cls(path, existing)
        try:
            for site in existing["sites"]:
                (path / SHARDS_DIR / site).mkdir(parents=True, exist_ok=True)
            (path / CHUNKS_DIR).mkdir(exist_ok=True)
        except OSError as error:
            raise DiffdictError(f"cannot write to store {path}: {_describe_os_error(error)}") from None
        return writer

    @staticmethod
    def _create_header(header_path: Path, header: dict) -> None:
        """Publish the header with link(2): exactly one concurrent creator wins."""
        data = (json.dumps(header, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
        tmp = _tmp_name(header_path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, header_path)
        except FileExistsError:
            pass
        except OSError:
            # file systems without hard links: fall back to an exclusive create
            try:
                fd = os.open(header_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pass
            else:
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        finally:
            _remove_quietly(tmp)
        _fsync_dir(header_path.parent)

    # -- properties ----------------------------------------------------------------

    @property
    def sites(self) -> dict[str, int]:
        return {site: entry["d"] for site, entry in self._header["sites"].items()}

    @property
    def grid(self) -> dict[str, tuple[int, int]]:
        return {site: tuple(entry["grid"]) for site, entry in self._header["sites"].items()}

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_prompts / self.chunk_size)

    # -- chunks --------------------------------------------------------------------

    def _check_index(self, chunk_index: int) -> int:
        if isinstance(chunk_index, bool) or not isinstance(chunk_index, (int, np.integer)):
            raise DiffdictError(f"chunk index must be an integer, got {chunk_index!r}")
        if not 0 <= chunk_index < self.num_chunks:
            raise DiffdictError(f"chunk index {chunk_index} out of range: the store has chunks 0..{self.num_chunks - 1}")
        return int(chunk_index)

    def chunk_prompt_ids(self, chunk_index: int) -> range:
        index = self._check_index(chunk_index)
        start = index * self.chunk_size
        return range(start, min(start + self.chunk_size, self.num_prompts))

    def _record_path(self, index: int) -> Path:
        return self.path / CHUNKS_DIR / f"{_chunk_name(index)}.json"

    def _shard_rel(self, site: str, index: int) -> str:
        return f"{SHARDS_DIR}/{site}/{_chunk_name(index)}.safetensors"

    def _images_rel(self, index: int) -> str:
        return f"{IMAGES_DIR}/{_chunk_name(index)}.safetensors"

    def read_record(self, chunk_index: int) -> dict | None:
        """The chunk's completion record if the chunk is complete, else None."""
        index = self._check_index(chunk_index)
        try:
            record = json.loads(self._record_path(index).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("store_key") != self._key or record.get("chunk") != index:
            return None
        ids = self.chunk_prompt_ids(index)
        if record.get("prompt_ids") != [ids.start, ids.stop]:
            return None
        files = record.get("sites")
        if not isinstance(files, dict) or set(files) != set(self._header["sites"]):
            return None
        entries = list(files.values()) + ([record["images"]] if record.get("images") else [])
        for entry in entries:
            try:
                if os.stat(self.path / entry["file"]).st_size != entry["bytes"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
        return record

    def is_complete(self, chunk_index: int) -> bool:
        """True iff the chunk's record exists, belongs to this store, and its files have the recorded sizes."""
        return self.read_record(chunk_index) is not None

    def completed_chunks(self) -> list[int]:
        return [i for i in range(self.num_chunks) if self.is_complete(i)]

    def pending_chunks(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Chunk indices this rank still has to write (those with ``index % world_size == rank``)."""
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise DiffdictError(f"bad world size {world_size!r}: expected a positive integer")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DiffdictError(f"bad rank {rank!r}: expected 0..{world_size - 1}")
        return [i for i in range(rank, self.num_chunks, world_size) if not self.is_complete(i)]

    def _item_label(self) -> str:
        return "prompt id" if self._header["prompts"] is not None else "row"

    def _prepare(self, index: int, acts: dict, meta: dict, images: Any) -> tuple[dict, Any]:
        sites = self._header["sites"]
        if not isinstance(acts, dict):
            raise DiffdictError(f"acts must be a dict site -> tensor, got {type(acts).__name__}")
        if not isinstance(meta, dict):
            raise DiffdictError(f"meta must be a dict site -> {{{', '.join(META_FIELDS)}}}, got {type(meta).__name__}")
        for given, what in ((acts, "activations"), (meta, "metadata")):
            unknown = sorted(set(given) - set(sites))
            if unknown:
                raise DiffdictError(f"{what} for unknown site {unknown[0]!r}; the store's sites are {', '.join(sorted(sites))}")
            missing = sorted(set(sites) - set(given))
            if missing:
                raise DiffdictError(f"chunk {index}: no {what} for site {missing[0]!r}; every chunk needs all sites ({', '.join(sorted(sites))})")
        ids = self.chunk_prompt_ids(index)
        store_dtype = DTYPES[self.dtype]
        label = self._item_label()
        prepared = {}
        for site in sorted(sites):
            d = sites[site]["d"]
            rows, cols = sites[site]["grid"]
            x = acts[site]
            if isinstance(x, np.ndarray):
                x = torch.from_numpy(x)
            if not isinstance(x, torch.Tensor):
                raise DiffdictError(f"activations for site {site!r} must be a tensor, got {type(x).__name__}")
            if not x.is_floating_point():
                raise DiffdictError(f"activations for site {site!r} must be floating point, got {x.dtype}")
            if x.ndim != 2 or x.shape[1] != d:
                raise DiffdictError(f"activations for site {site!r} have shape {tuple(x.shape)}; expected (n_tokens, {d})")
            n = x.shape[0]
            fields = meta[site]
            if not isinstance(fields, dict) or set(fields) != set(META_FIELDS):
                got = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
                raise DiffdictError(f"metadata for site {site!r} must have exactly {', '.join(META_FIELDS)}; got {got}")
            columns = []
            for name in META_FIELDS:
                column = fields[name]
                if isinstance(column, np.ndarray):
                    column = torch.from_numpy(column)
                if not isinstance(column, torch.Tensor) or column.is_floating_point() or column.is_complex() or column.dtype == torch.bool:
                    raise DiffdictError(f"metadata {name!r} of site {site!r} must be an integer tensor")
                if column.ndim != 1 or column.shape[0] != n:
                    raise DiffdictError(
                        f"metadata {name!r} of site {site!r} has shape {tuple(column.shape)}; expected ({n},), one per token"
                    )
                columns.append(column.detach().cpu().to(torch.int64))
            pid, step, row, col = columns
            if n:
                checks = (
                    (pid, ids.start, ids.stop, f"{label} (chunk {index} holds {ids.start}..{ids.stop - 1})"),
                    (step, 0, 2**31, "step (expected >= 0)"),
                    (row, 0, rows, f"row (grid {rows}x{cols})"),
                    (col, 0, cols, f"col (grid {rows}x{cols})"),
                )
                for column, low, high, what in checks:
                    bad = (column < low) | (column >= high)
                    if bool(bad.any()):
                        first = int(bad.nonzero()[0, 0])
                        raise DiffdictError(f"site {site!r}: bad {what}: {int(column[first])} at token {first}")
            x = x.detach().cpu()
            finite = torch.isfinite(x).all(dim=1)
            if not bool(finite.all()):
                first = int((~finite).nonzero()[0, 0])
                kind = "NaN" if bool(torch.isnan(x[first]).any()) else "inf"
                raise DiffdictError(
                    f"non-finite activations ({kind}) at site {site!r} for {label} {int(pid[first])} "
                    f"(chunk {index}, token {first}); nothing was written"
                )
            stored = x.to(store_dtype)
            if store_dtype != x.dtype:
                finite = torch.isfinite(stored).all(dim=1)
                if not bool(finite.all()):
                    first = int((~finite).nonzero()[0, 0])
                    peak = float(x[first].abs().max())
                    raise DiffdictError(
                        f"activations at site {site!r} overflow {self.dtype} for {label} {int(pid[first])} "
                        f"(|x| up to {peak:.4g}); use dtype float32 or bfloat16"
                    )
            meta_tensor = torch.stack(columns, dim=1).to(torch.int32).contiguous()
            prepared[site] = (stored.contiguous(), meta_tensor)
        if images is not None:
            if isinstance(images, torch.Tensor):
                images = images.detach().cpu().numpy()
            if not isinstance(images, np.ndarray):
                raise DiffdictError(f"images must be a numpy uint8 array or None, got {type(images).__name__}")
            if images.dtype != np.uint8:
                raise DiffdictError(f"images must be uint8, got {images.dtype}")
            if images.ndim != 4 or images.shape[0] != len(ids) or images.shape[3] != 3 or 0 in images.shape:
                raise DiffdictError(
                    f"images of chunk {index} have shape {images.shape}; expected ({len(ids)}, H, W, 3), "
                    "one per prompt of the chunk"
                )
            images = torch.from_numpy(np.ascontiguousarray(images))
        return prepared, images

    def write_chunk(
        self,
        chunk_index: int,
        acts: dict[str, torch.Tensor],
        meta: dict[str, dict[str, torch.Tensor]],
        images: np.ndarray | None = None,
    ) -> dict:
        """Validate and durably write one chunk, then mark it complete; returns its record.

        ``acts``: site -> (n_tokens, d) float tensor; ``meta``: site -> {prompt_id, step,
        row, col} integer tensors (n_tokens,); ``images``: uint8 (n_prompts_in_chunk, H, W, 3)
        or None. Bad input is refused before anything is touched. On an I/O error (disk
        full, permission) the chunk's partial files are removed and it stays incomplete.
        """
        index = self._check_index(chunk_index)
        prepared, image_tensor = self._prepare(index, acts, meta, images)
        record: dict[str, Any] = {
            "format": FORMAT,
            "store_key": self._key,
            "chunk": index,
            "prompt_ids": [self.chunk_prompt_ids(index).start, self.chunk_prompt_ids(index).stop],
            "sites": {},
            "images": None,
        }
        temps: list[Path] = []
        finals: list[Path] = []
        record_path = self._record_path(index)
        try:
            # 1. un-mark the chunk before touching its files
            if record_path.exists():
                os.unlink(record_path)
                _fsync_dir(record_path.parent)
            # 2. shards, then images: temp name, fsync, rename
            for site, (x, m) in prepared.items():
                rel = self._shard_rel(site, index)
                target = self.path / rel
                for stale in _stale_temps(target.parent, target.name):
                    _remove_quietly(stale)
                data = _st_save({"acts": x, "meta": m}, metadata=_file_metadata(site=site, chunk=index))
                finals.append(target)
                _durable_write(target, data, temps)
                record["sites"][site] = {
                    "file": rel,
                    "tokens": int(x.shape[0]),
                    "bytes": len(data),
                    "sha256": _sha256_bytes(data),
                    "xxh3": xxhash.xxh3_128_hexdigest(data),
                    "content_sha256": _content_sha256([x, m]),
                }
                del data
            if image_tensor is not None:
                rel = self._images_rel(index)
                target = self.path / rel
                target.parent.mkdir(exist_ok=True)
                for stale in _stale_temps(target.parent, target.name):
                    _remove_quietly(stale)
                data = _st_save({"images": image_tensor}, metadata=_file_metadata(chunk=index))
                finals.append(target)
                _durable_write(target, data, temps)
                record["images"] = {
                    "file": rel,
                    "shape": list(image_tensor.shape),
                    "bytes": len(data),
                    "sha256": _sha256_bytes(data),
                    "xxh3": xxhash.xxh3_128_hexdigest(data),
                    "content_sha256": _content_sha256([image_tensor]),
                }
            for folder in {p.parent for p in finals}:
                _fsync_dir(folder)
            # 3. only now: the completion record
            data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
            _durable_write(record_path, data, temps)
            _fsync_dir(record_path.parent)
        except OSError as error:
            for path in temps + finals:
                _remove_quietly(path)
            _remove_quietly(record_path)
            raise DiffdictError(
                f"could not write chunk {index} of store {self.path}: {_describe_os_error(error)}; "
                "the chunk is not marked complete"
            ) from None
        except BaseException:
            for path in temps:
                _remove_quietly(path)
            raise
        return record

    # -- finishing -----------------------------------------------------------------

    def finalize(self) -> None:
        """Write ``manifest.json`` from the chunk records once every chunk is complete (idempotent)."""
        records = []
        missing = []
        for index in range(self.num_chunks):
            record = self.read_record(index)
            if record is None:
                missing.append(index)
            else:
                records.append(record)
        if missing:
            raise DiffdictError(
                f"store {self.path} cannot be finalized: {len(missing)} of {self.num_chunks} chunks are missing "
                f"(first: chunk {missing[0]}); run the same command again to write them"
            )
        with_images = [r for r in records if r.get("images")]
        image_info = None
        if with_images:
            if len(with_images) != len(records):
                first = next(r["chunk"] for r in records if not r.get("images"))
                raise DiffdictError(f"store {self.path}: chunk {first} has no images while other chunks do")
            sizes = {tuple(r["images"]["shape"][1:3]) for r in records}
            if len(sizes) != 1:
                raise DiffdictError(f"store {self.path}: chunks have images of different sizes {sorted(sizes)}")
            height, width = sizes.pop()
            image_info = {"height": height, "width": width}
        manifest = _build_manifest(self._header, self._key, records, image_info)
        manifest_path = self.path / MANIFEST_FILE
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        try:
            if manifest_path.exists() and manifest_path.read_bytes() == data:
                pass
            else:
                _durable_write(manifest_path, data)
                _fsync_dir(self.path)
            # leftovers of killed writers (nobody writes chunks once every chunk is complete;
            # the store folder itself is left alone: a concurrent finalize has its temp there)
            folders = [self.path / CHUNKS_DIR, self.path / IMAGES_DIR]
            folders += [self.path / SHARDS_DIR / site for site in self._header["sites"]]
            for folder in folders:
                if folder.is_dir():
                    for stale in folder.iterdir():
                        if stale.name.startswith(".") and stale.name.endswith(_TMP_SUFFIX):
                            _remove_quietly(stale)
        except OSError as error:
            raise DiffdictError(f"could not write the manifest of store {self.path}: {_describe_os_error(error)}") from None


def _compute_digest(header: dict, records: list[dict], kind: str = "sites") -> str:
    digest = hashlib.sha256()
    if kind == "sites":
        summary = {
            "format": FORMAT,
            "dtype": header["dtype"],
            "sites": {
                site: {
                    "d": entry["d"],
                    "grid": entry["grid"],
                    "tokens": sum(r["sites"][site]["tokens"] for r in records),
                }
                for site, entry in header["sites"].items()
            },
        }
        digest.update(_canonical_json(summary).encode())
        for site in sorted(header["sites"]):
            for record in records:
                digest.update(bytes.fromhex(record["sites"][site]["content_sha256"]))
    else:
        for record in records:
            digest.update(bytes.fromhex(record["images"]["content_sha256"]))
    return "sha256:" + digest.hexdigest()


def _build_manifest(header: dict, key: str, records: list[dict], image_info: dict | None) -> dict:
    sites = {}
    for site, entry in header["sites"].items():
        sites[site] = {
            "d": entry["d"],
            "grid": entry["grid"],
            "tokens": sum(r["sites"][site]["tokens"] for r in records),
            "bytes": sum(r["sites"][site]["bytes"] for r in records),
        }
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "store_key": key,
        "settings": header["settings"],
        "sites": sites,
        "dtype": header["dtype"],
        "chunk_size": header["chunk_size"],
        "num_prompts": header["num_prompts"],
        "num_chunks": len(records),
        "prompts": header["prompts"],
        "images": image_info,
        "meta_fields": list(META_FIELDS),
        "chunks": records,
        "digest": _compute_digest(header, records),
        "images_digest": _compute_digest(header, records, "images") if image_info else None,
    }


# --------------------------------------------------------------------------- reader


def _load_manifest(path: str | Path) -> tuple[Path, dict]:
    path = Path(path)
    if not path.exists():
        raise DiffdictError(f"store not found: {path}")
    if not path.is_dir():
        raise DiffdictError(f"{path} is not a store (expected a folder with {MANIFEST_FILE})")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        header_path = path / HEADER_FILE
        if header_path.exists():
            header = _read_json_file(header_path)
            try:
                total = math.ceil(header["num_prompts"] / header["chunk_size"])
                done = len(list((path / CHUNKS_DIR).glob("*.json")))
            except (KeyError, TypeError, ZeroDivisionError, OSError):
                total, done = "?", "?"
            raise DiffdictError(
                f"store {path} is not finished ({done} of {total} chunks recorded, no {MANIFEST_FILE}); "
                "run the command that writes it again to complete it"
            )
        raise DiffdictError(f"{path} is not a diffdict store (no {MANIFEST_FILE})")
    manifest = _read_json_file(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DiffdictError(f"{manifest_path} is not a diffdict store manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise DiffdictError(
            f"store {path} has format version {manifest.get('version')}, this diffdict reads version {FORMAT_VERSION}"
        )
    return path, manifest


# --------------------------------------------------------------------------- manifest checks

_MANIFEST_FIELDS = {"format", "version", "store_key", "settings", "sites", "dtype", "chunk_size", "num_prompts",
                    "num_chunks", "prompts", "images", "meta_fields", "chunks", "digest", "images_digest"}
_RECORD_FIELDS = {"format", "store_key", "chunk", "prompt_ids", "sites", "images"}
_SHARD_FIELDS = {"file", "tokens", "bytes", "sha256", "content_sha256"}
_IMAGE_FIELDS = {"file", "shape", "bytes", "sha256", "content_sha256"}
_FAST_HASH = "xxh3"  # xxh3-128 of the whole file: what readers check (sha256 where a store lacks it)
_HEADER_FIELDS = ("settings", "dtype", "chunk_size", "num_prompts", "prompts")


def _is_count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _entry_file(root: Path, resolved_root: Path, entry: dict, where: str, expected: str) -> Path:
    """The file a manifest entry names; refused unless it is the expected path inside the store.

    Checked before anything is opened: an absolute path, ``..`` or a symlink leading out of
    the store folder never reaches open(2).
    """
    rel = entry.get("file")
    if not isinstance(rel, str) or not rel:
        raise DiffdictError(f"{root / MANIFEST_FILE}: entry {where} names no file")
    full = root / rel
    try:
        inside = not os.path.isabs(rel) and full.resolve().is_relative_to(resolved_root)
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise DiffdictError(f"{root / MANIFEST_FILE}: entry {where} names {rel!r}, a path outside the store; refused")
    if rel != expected:
        raise DiffdictError(f"{root / MANIFEST_FILE}: entry {where} names {rel!r}; expected {expected!r}")
    return full


def _manifest_problems(path: Path, manifest: dict, read_records: bool) -> list[str]:
    """Cross-check every manifest field with ``store.json``, the chunk records and itself.

    Returns the problems found; a file path leading outside the store raises at once. The
    shard files themselves are checked when they are opened (sizes, tensor headers, hashes).
    """
    try:
        return _manifest_problems_unguarded(path, manifest, read_records)
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as error:
        return [f"{path / MANIFEST_FILE} is malformed ({type(error).__name__}: {error})"]


def _manifest_problems_unguarded(path: Path, manifest: dict, read_records: bool) -> list[str]:
    problems: list[str] = []
    where = str(path / MANIFEST_FILE)
    header = _read_json_file(path / HEADER_FILE)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return [f"{path / HEADER_FILE} is not a diffdict store header"]
    unknown = sorted(set(manifest) - _MANIFEST_FIELDS)
    missing = sorted(_MANIFEST_FIELDS - set(manifest))
    if unknown or missing:
        return [f"{where} has unknown fields {unknown} / lacks fields {missing}"]
    key = _header_key(header)
    if manifest["store_key"] != key:
        problems.append(f"{where}: store_key does not match {path / HEADER_FILE} (one of them was edited)")
    for field in _HEADER_FIELDS:
        if manifest[field] != header.get(field):
            problems.append(f"{where}: {field} differs from {path / HEADER_FILE}")
    sites, header_sites = manifest["sites"], header["sites"]
    if set(sites) != set(header_sites):
        return problems + [f"{where}: sites {sorted(sites)} differ from {path / HEADER_FILE} ({sorted(header_sites)})"]
    for site in sorted(sites):
        if (sites[site]["d"], sites[site]["grid"]) != (header_sites[site]["d"], header_sites[site]["grid"]):
            problems.append(f"{where}: d or grid of site {site} differs from {path / HEADER_FILE}")
    if manifest["meta_fields"] != list(META_FIELDS):
        problems.append(f"{where}: meta_fields {manifest['meta_fields']} are not {list(META_FIELDS)}")
    chunk_size, num_prompts = header["chunk_size"], header["num_prompts"]
    if not (_is_count(chunk_size, 1) and _is_count(num_prompts, 1)):
        return problems + [f"{path / HEADER_FILE}: bad chunk_size {chunk_size!r} or num_prompts {num_prompts!r}"]
    expected_chunks = math.ceil(num_prompts / chunk_size)
    chunks = manifest["chunks"]
    if not isinstance(chunks, list) or len(chunks) != expected_chunks or manifest["num_chunks"] != expected_chunks:
        count = len(chunks) if isinstance(chunks, list) else "no"
        return problems + [f"{where} lists {count} chunks (num_chunks {manifest['num_chunks']!r}); "
                           f"{num_prompts} prompts in chunks of {chunk_size} make {expected_chunks}"]
    images = manifest["images"]
    root = path.resolve()
    for index, record in enumerate(chunks):
        label = f"chunks[{index}]"
        if not isinstance(record, dict) or set(record) != _RECORD_FIELDS:
            problems.append(f"{where}: {label} is not a chunk record")
            continue
        start = index * chunk_size
        if (record["format"], record["store_key"], record["chunk"], record["prompt_ids"]) != (
                FORMAT, key, index, [start, min(start + chunk_size, num_prompts)]):
            problems.append(f"{where}: {label} does not describe chunk {index} of this store")
        if not isinstance(record["sites"], dict) or set(record["sites"]) != set(sites):
            problems.append(f"{where}: {label} does not list the store's sites {sorted(sites)}")
            continue
        for site, entry in sorted(record["sites"].items()):
            if not isinstance(entry, dict) or set(entry) - {_FAST_HASH} != _SHARD_FIELDS:
                problems.append(f"{where}: {label}.sites.{site} is not a shard entry")
                continue
            _entry_file(path, root, entry, f"{label}.sites.{site}.file", f"{SHARDS_DIR}/{site}/{_chunk_name(index)}.safetensors")
            if not (_is_count(entry["tokens"]) and _is_count(entry["bytes"], 1)):
                problems.append(f"{where}: {label}.sites.{site} has bad token or byte counts")
        entry = record["images"]
        if (images is None) != (entry is None):
            problems.append(f"{where}: {label} {'has' if entry else 'lacks'} images, unlike the manifest")
        elif entry is not None:
            if not isinstance(entry, dict) or set(entry) - {_FAST_HASH} != _IMAGE_FIELDS:
                problems.append(f"{where}: {label}.images is not an images entry")
                continue
            _entry_file(path, root, entry, f"{label}.images.file", f"{IMAGES_DIR}/{_chunk_name(index)}.safetensors")
            expected_shape = [record["prompt_ids"][1] - record["prompt_ids"][0], images["height"], images["width"], 3]
            if entry["shape"] != expected_shape or not _is_count(entry["bytes"], 1):
                problems.append(f"{where}: {label}.images has shape {entry['shape']}, expected {expected_shape}")
        if read_records:
            record_path = path / CHUNKS_DIR / f"{_chunk_name(index)}.json"
            try:
                on_disk = json.loads(record_path.read_text())
            except (OSError, ValueError):
                on_disk = None
            if on_disk != record:
                problems.append(f"chunk record {record_path} is missing or does not match the manifest")
    if problems:
        return problems
    for site, entry in sorted(sites.items()):
        for field in ("tokens", "bytes"):
            total = sum(r["sites"][site][field] for r in chunks)
            if entry[field] != total:
                problems.append(f"{where}: sites.{site}.{field} is {entry[field]!r}; its chunk records add up to {total}")
    if _compute_digest(manifest, chunks) != manifest["digest"]:
        problems.append(f"{where}: digest does not match its chunk records")
    images_digest = _compute_digest(manifest, chunks, "images") if images is not None else None
    if manifest["images_digest"] != images_digest:
        problems.append(f"{where}: images_digest does not match its chunk records")
    return problems


def _raise_first(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DiffdictError(problems[0] + more)


# --------------------------------------------------------------------------- verification on read

_HASH_PIECE = 1 << 20  # bytes read, then hashed, at a time: hashed while still in the CPU cache
_verify_reads: contextvars.ContextVar[bool] = contextvars.ContextVar("diffdict_verify_reads", default=True)


@contextlib.contextmanager
def verification(enabled: bool):
    """Within the block, :func:`open_store` checks (``True``, the default) or skips
    (``False``, the commands' ``--no-verify``) the hash of each file it reads."""
    token = _verify_reads.set(bool(enabled))
    try:
        yield
    finally:
        _verify_reads.reset(token)


class _FileHash:
    """The hash of one file, computed from its bytes in file order as a reader reads them.

    The bytes ``[0, position)`` are hashed. :func:`_pread` feeds it the bytes the loader
    reads anyway; :meth:`advance` reads and hashes those before ``to`` that the loader did
    not read (the header, other tensors, blocks it reads later), through a small buffer;
    :meth:`finish` hashes the rest of the file and compares.
    """

    def __init__(self, file: Path, expected: tuple[str, str]):
        self.file = file
        self.algorithm, self.expected = expected
        self.digest = xxhash.xxh3_128() if self.algorithm == _FAST_HASH else hashlib.sha256()
        self.position = 0

    def feed(self, offset: int, data: memoryview) -> None:
        """Hash what ``data`` (the file's bytes at ``offset``) adds; ``offset <= position``."""
        skip = self.position - offset
        if 0 <= skip < len(data):
            self.digest.update(data[skip:])
            self.position = offset + len(data)

    def advance(self, fd: int, to: int | None) -> None:
        """Read and hash the bytes ``[position, to)`` (``None``: to the end of the file)."""
        if to is not None and to <= self.position:
            return
        scratch = memoryview(bytearray(_HASH_PIECE))
        while to is None or self.position < to:
            want = _HASH_PIECE if to is None else min(_HASH_PIECE, to - self.position)
            n = os.preadv(fd, [scratch[:want]], self.position)
            if n == 0:
                if to is None:
                    return
                raise OSError(errno.EIO, "unexpected end of file")
            self.digest.update(scratch[:n])
            self.position += n

    def finish(self) -> str | None:
        """None if the whole file hashes to the expected digest, else the problem in words."""
        try:
            fd = os.open(self.file, os.O_RDONLY)
            try:
                self.advance(fd, None)
            finally:
                os.close(fd)
        except OSError as error:
            return f"cannot read {self.file}: {_describe_os_error(error)}"
        if self.digest.hexdigest() != self.expected:
            return (f"corrupt file {self.file}: {self.algorithm} does not match the manifest; "
                    "run `diffdict store verify` on the store")
        return None


def _hash_problem(file: Path, expected: tuple[str, str]) -> str | None:
    """None if ``file`` hashes to ``expected`` = (algorithm, hex digest), else the problem in words."""
    return _FileHash(file, expected).finish()


def _expected_hash(entry: dict) -> tuple[str, str]:
    return (_FAST_HASH, entry[_FAST_HASH]) if _FAST_HASH in entry else ("sha256", entry["sha256"])


def _pread(fd: int, view: memoryview, offset: int, file_hash: _FileHash | None = None) -> None:
    """Fill ``view`` with the file's bytes at ``offset``. With ``file_hash``, the bytes are
    hashed as they are read, a piece at a time while the piece is still in the CPU cache,
    after any bytes before ``offset`` that the hash still lacks."""
    if file_hash is not None and file_hash.position >= offset + len(view):
        file_hash = None  # hashed already
    if file_hash is not None:
        file_hash.advance(fd, offset)
    piece = _HASH_PIECE if file_hash is not None else len(view)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:done + piece]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, "unexpected end of file")
        if file_hash is not None:
            file_hash.feed(offset + done, view[done:done + n])
        done += n


class _FileVerifier:
    """Checks each file of a store against the hash its manifest records, once per file.

    The loader's reads feed each file's hash (:meth:`hashing`), so a file read in order is
    read once, not twice; ``confirm(files)`` hashes what the reads left out, compares, and
    raises the first problem. The loader confirms every file it has read from before it
    hands out a batch, so no batch ever holds unverified data.
    """

    def __init__(self, expected: dict[Path, tuple[str, str]]):
        self._expected = expected
        self._hashes: dict[Path, _FileHash] = {}  # files read from, not yet confirmed
        self._results: dict[Path, str | None] = {}  # confirmed files: None, or the problem
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hashing(self, file: Path):
        """The running hash of ``file`` for a read to feed (None once the file is confirmed)."""
        with self._lock:
            if file in self._results:
                yield None
            else:
                file_hash = self._hashes.get(file)
                if file_hash is None:
                    file_hash = self._hashes[file] = _FileHash(file, self._expected[file])
                yield file_hash

    def confirm(self, files: Iterable[Path]) -> None:
        for file in files:
            with self._lock:
                if file not in self._results:
                    file_hash = self._hashes.pop(file, None) or _FileHash(file, self._expected[file])
                    self._results[file] = file_hash.finish()
                problem = self._results[file]
            if problem:
                raise DiffdictError(problem)


def _wrap_read_error(file: Path, error: Exception) -> DiffdictError:
    return DiffdictError(f"cannot read shard {file}: {error}; run `diffdict store verify` on the store")


_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8}


class _ShardFile:
    """Reads row ranges of a safetensors file with pread(2) straight into a tensor.

    No mmap and no intermediate copy: the loader reads blocks directly into its buffer.
    A header that does not fit the file (truncation) is an error naming the file.
    """

    def __init__(self, path: Path, expect: dict[str, tuple[torch.dtype, list[int]]]):
        self.path = path
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise ValueError("file shorter than a safetensors header")
                length = int.from_bytes(prefix, "little")
                if length > min(size - 8, 100 << 20):
                    raise ValueError("header length exceeds the file")
                header = json.loads(handle.read(length))
        except FileNotFoundError:
            raise DiffdictError(f"missing shard {path}; run `diffdict store verify` on the store") from None
        except (OSError, ValueError) as error:
            raise _wrap_read_error(path, error) from None
        self.data_start = 8 + length
        self.tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = [int(v) for v in info["shape"]]
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise _wrap_read_error(path, ValueError(f"bad header entry for {name!r}")) from None
            if self.data_start + end > size:
                raise DiffdictError(
                    f"shard {path} is truncated ({size} bytes, its header needs {self.data_start + end}); "
                    "run `diffdict store verify` on the store"
                )
            self.tensors[name] = (dtype, shape, begin)
        described = {name: (dtype, shape) for name, (dtype, shape, _) in self.tensors.items()}
        if described != expect:
            have = ", ".join(f"{n} {str(d).removeprefix('torch.')}{tuple(s)}" for n, (d, s) in sorted(described.items()))
            want = ", ".join(f"{n} {str(d).removeprefix('torch.')}{tuple(s)}" for n, (d, s) in sorted(expect.items()))
            raise DiffdictError(f"shard {path} holds {have}; the manifest describes {want}; "
                                "run `diffdict store verify` on the store")

    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor | None = None,
                  file_hash: _FileHash | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name``, into ``out`` when given; the bytes read
        feed ``file_hash`` when given (see :func:`_pread`)."""
        if name not in self.tensors:
            raise _wrap_read_error(self.path, KeyError(f"no tensor {name!r}"))
        dtype, shape, begin = self.tensors[name]
        if not 0 <= start <= stop <= shape[0]:
            raise _wrap_read_error(self.path, IndexError(f"rows {start}:{stop} of {shape[0]}"))
        if out is None:
            out = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        elif out.dtype != dtype or tuple(out.shape) != (stop - start, *shape[1:]) or not out.is_contiguous():
            raise ValueError(f"bad output tensor for rows of {name!r} of {self.path}")
        if stop == start or out.numel() == 0:
            return out
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        offset = self.data_start + begin + start * row_bytes
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                _pread(fd, view, offset, file_hash)
            finally:
                os.close(fd)
        except OSError as error:
            raise _wrap_read_error(self.path, error) from None
        return out


class Store(_Described):
    """A finalized activation store, read-only. Obtain with :func:`open_store`."""

    def __init__(self, path: Path, manifest: dict, verify: bool = True):
        self.path = path
        self.manifest = manifest
        self.verify = verify
        self._shards: dict[str, list[tuple[Path, int, int]]] = {}
        self._files: dict[Path, _ShardFile] = {}
        # what each file must hold, from the manifest: tensor dtypes and shapes, hash
        self._expect: dict[Path, dict[str, tuple[torch.dtype, list[int]]]] = {}
        expected: dict[Path, tuple[str, str]] = {}  # file -> (hash algorithm, hex digest)
        store_dtype = DTYPES[manifest["dtype"]]
        for record in manifest["chunks"]:
            for site, entry in record["sites"].items():
                file = path / entry["file"]
                d, n = manifest["sites"][site]["d"], entry["tokens"]
                self._expect[file] = {"acts": (store_dtype, [n, d]), "meta": (torch.int32, [n, len(META_FIELDS)])}
                expected[file] = _expected_hash(entry)
            if record["images"]:
                file = path / record["images"]["file"]
                self._expect[file] = {"images": (torch.uint8, list(record["images"]["shape"]))}
                expected[file] = _expected_hash(record["images"])
        self._verifier = _FileVerifier(expected) if verify else None

    @property
    def _description(self) -> dict:
        return self.manifest

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, sites={self.sites}, dtype={self.dtype!r})"

    # -- description ---------------------------------------------------------------

    @property
    def sites(self) -> list[str]:
        return sorted(self.manifest["sites"])

    def _site(self, site: str) -> dict:
        entry = self.manifest["sites"].get(site)
        if entry is None:
            raise DiffdictError(f"unknown site {site!r}; the store has {', '.join(self.sites)}")
        return entry

    def d(self, site: str) -> int:
        return self._site(site)["d"]

    def num_tokens(self, site: str) -> int:
        return self._site(site)["tokens"]

    def grid(self, site: str) -> tuple[int, int]:
        return tuple(self._site(site)["grid"])

    @property
    def num_chunks(self) -> int:
        return self.manifest["num_chunks"]

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def has_images(self) -> bool:
        return self.manifest.get("images") is not None

    @property
    def image_size(self) -> tuple[int, int] | None:
        info = self.manifest.get("images")
        return (info["height"], info["width"]) if info else None

    def shards(self, site: str) -> list[tuple[Path, int, int]]:
        """(file, first token, token count) of each shard of ``site`` in canonical order."""
        self._site(site)
        if site not in self._shards:
            shards = []
            offset = 0
            for record in self.manifest["chunks"]:
                entry = record["sites"][site]
                file = self.path / entry["file"]
                try:
                    size = os.stat(file).st_size
                except OSError:
                    raise DiffdictError(f"missing shard {file}; run `diffdict store verify` on the store") from None
                if size != entry["bytes"]:
                    raise DiffdictError(
                        f"shard {file} has {size} bytes, expected {entry['bytes']} (truncated or replaced); "
                        "run `diffdict store verify` on the store"
                    )
                shards.append((file, offset, entry["tokens"]))
                offset += entry["tokens"]
            self._shards[site] = shards
        return self._shards[site]

    # -- reading -------------------------------------------------------------------

    def _shard_file(self, file: Path) -> "_ShardFile":
        shard = self._files.get(file)
        if shard is None:
            shard = self._files[file] = _ShardFile(file, self._expect[file])
        return shard

    def _read_rows(self, file: Path, name: str, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` of a shard, read straight into ``out``.

        Not yet checked against the manifest's hash: callers confirm the file
        (:meth:`_confirm`) before anything read from it leaves the store. When verifying,
        the bytes read feed the file's hash, so that a file read in order is read once.
        """
        shard = self._shard_file(file)
        if self._verifier is None:
            return shard.read_rows(name, start, stop, out)
        with self._verifier.hashing(file) as file_hash:
            return shard.read_rows(name, start, stop, out, file_hash)

    def _confirm(self, files: Iterable[Path]) -> None:
        """Raise, naming the file, unless each file hashes to what the manifest records (when verifying)."""
        if self._verifier is not None:
            self._verifier.confirm(files)

    def _read_block(self, file: Path, start: int, stop: int, with_meta: bool, dtype: torch.dtype):
        x = self._read_rows(file, "acts", start, stop)
        m = self._read_rows(file, "meta", start, stop) if with_meta else None
        return x.to(dtype), m

    def read(self, site: str, start: int = 0, stop: int | None = None, dtype: torch.dtype = torch.float32):
        """Tokens ``start:stop`` of ``site`` in canonical order: ``(acts (n, d), meta)``.

        ``meta`` maps prompt_id, step, row, col to int32 tensors (n,).
        """
        total = self.num_tokens(site)
        stop = total if stop is None else stop
        if not (isinstance(start, int) and isinstance(stop, int)) or not 0 <= start <= stop <= total:
            raise DiffdictError(f"bad token range {start}:{stop} for site {site!r}; it has {total} tokens")
        parts, metas = [], []
        for file, offset, count in self.shards(site):
            a, b = max(start, offset), min(stop, offset + count)
            if a >= b:
                continue
            x, m = self._read_block(file, a - offset, b - offset, True, dtype)
            self._confirm([file])  # before the rows leave the store
            parts.append(x)
            metas.append(m)
        d = self.d(site)
        acts = torch.cat(parts) if parts else torch.empty(0, d, dtype=dtype)
        meta = torch.cat(metas) if metas else torch.empty(0, len(META_FIELDS), dtype=torch.int32)
        return acts, _meta_dict(meta)

    def iter_batches(
        self,
        site: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
        with_meta: bool = False,
        *,
        block_tokens: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> "BatchIterator":
        """Stream batches (B, d) of ``site``; every token exactly once per epoch.

        With ``shuffle`` the shards are cut into blocks of ``block_tokens`` (default
        buffer_tokens // 32), read in a random order determined by (seed, epoch), and mixed
        in a buffer of at most ``buffer_tokens`` tokens: memory is bounded by the buffer
        (buffer_tokens x d in the store dtype, plus one block and one batch), not by the
        store. Batches are converted to ``dtype`` (float32) as they are emitted. ``rank``/``world_size``
        give each data-parallel process a disjoint share of the blocks. Yields a tensor, or
        ``(tensor, meta)`` with ``with_meta``.
        """
        return BatchIterator(
            self, site, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, buffer_tokens=buffer_tokens,
            with_meta=with_meta, block_tokens=block_tokens, drop_last=drop_last, rank=rank,
            world_size=world_size, dtype=dtype,
        )

    def images(self, prompt_ids: Iterable[int] | int) -> np.ndarray:
        """Generated images of the given prompt ids: uint8 (n, H, W, 3)."""
        if not self.has_images:
            raise DiffdictError(f"store {self.path} has no images")
        if isinstance(prompt_ids, (int, np.integer)):
            prompt_ids = [int(prompt_ids)]
        if isinstance(prompt_ids, torch.Tensor):
            prompt_ids = prompt_ids.tolist()
        ids = [int(i) for i in np.asarray(list(prompt_ids)).reshape(-1)]
        height, width = self.image_size
        out = np.empty((len(ids), height, width, 3), dtype=np.uint8)
        by_chunk: dict[int, list[int]] = {}
        for position, pid in enumerate(ids):
            if not 0 <= pid < self.num_prompts:
                raise DiffdictError(f"prompt id {pid} out of range: the store has prompts 0..{self.num_prompts - 1}")
            by_chunk.setdefault(pid // self.chunk_size, []).append(position)
        for chunk, positions in by_chunk.items():
            entry = self.manifest["chunks"][chunk]["images"]
            file = self.path / entry["file"]
            self._confirm([file])
            base = chunk * self.chunk_size
            for position in positions:
                row = ids[position] - base
                self._read_rows(file, "images", row, row + 1, torch.from_numpy(out[position : position + 1]))
        return out


def _meta_dict(meta: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: meta[:, i].contiguous() for i, name in enumerate(META_FIELDS)}


class BatchIterator:
    """Iterator over batches of one site; see :meth:`Store.iter_batches`.

    Exposes what it holds: ``buffer_tokens`` (rows of its buffer), ``block_tokens`` (the
    most tokens read at once), ``peak_buffered`` (most tokens held so far), ``num_tokens``
    (tokens it will yield) and ``len()`` (batches it will yield).
    """

    def __init__(self, store: Store, site: str, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                 buffer_tokens: int, with_meta: bool, block_tokens: int | None, drop_last: bool,
                 rank: int, world_size: int, dtype: torch.dtype):
        for name, value, low in (("batch size", batch_size, 1), ("buffer_tokens", buffer_tokens, 1),
                                 ("seed", seed, 0), ("epoch", epoch, 0), ("world size", world_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise DiffdictError(f"bad {name} {value!r}: expected an integer >= {low}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DiffdictError(f"bad rank {rank!r}: expected 0..{world_size - 1}")
        if shuffle and buffer_tokens < batch_size:
            raise DiffdictError(f"buffer_tokens ({buffer_tokens}) must be at least the batch size ({batch_size})")
        if block_tokens is not None and (not isinstance(block_tokens, int) or block_tokens < 1):
            raise DiffdictError(f"bad block_tokens {block_tokens!r}: expected a positive integer")
        self.store = store
        self.site = site
        self.d = store.d(site)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.with_meta = with_meta
        self.drop_last = drop_last
        self.dtype = dtype
        shards = store.shards(site)
        total = sum(count for _, _, count in shards)
        if shuffle:
            self.buffer_tokens = max(1, min(int(buffer_tokens), total))
            default_block = max(1, self.buffer_tokens // 32)
            self.block_tokens = max(1, min(block_tokens or default_block, max(1, self.buffer_tokens // 2)))
        else:
            self.block_tokens = block_tokens or max(self.batch_size, min(int(buffer_tokens), 1 << 14))
            self.buffer_tokens = 0
        blocks = []
        for shard_index, (_, _, count) in enumerate(shards):
            for a in range(0, count, self.block_tokens):
                blocks.append((shard_index, a, min(a + self.block_tokens, count)))
        if shuffle:
            order = np.random.default_rng([int(seed), int(epoch)]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        self._blocks = blocks[rank::world_size]
        self.num_tokens = sum(b - a for _, a, b in self._blocks)
        self.peak_buffered = 0
        state = np.random.SeedSequence([int(seed), int(epoch), int(rank), 1]).generate_state(2)
        self._generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        self._iterator = self._shuffled() if shuffle else self._sequential()
        # files read since the last batch was handed out: confirmed against the manifest
        # before the next one is
        self._unconfirmed: set[Path] = set()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_tokens // self.batch_size
        return math.ceil(self.num_tokens / self.batch_size)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self):
        batch = next(self._iterator)
        if self._unconfirmed:
            self.store._confirm(sorted(self._unconfirmed))
            self._unconfirmed.clear()
        return batch

    def _read(self, block, out=None, mout=None):
        """Read a block in the store dtype, into ``out``/``mout`` when given."""
        shard_index, a, b = block
        file = self.store.shards(self.site)[shard_index][0]
        self._unconfirmed.add(file)
        x = self.store._read_rows(file, "acts", a, b, out)
        m = self.store._read_rows(file, "meta", a, b, mout) if self.with_meta else None
        return x, m

    def _out(self, x: torch.Tensor, m: torch.Tensor | None, copy: bool = False):
        x = x.to(self.dtype, copy=copy)
        if self.with_meta:
            return x, _meta_dict(m.clone() if copy else m)
        return x

    def _sequential(self):
        """Canonical order; blocks are read into one reused staging tensor."""
        B = self.batch_size
        store_dtype = DTYPES[self.store.dtype]
        stage = torch.empty(self.block_tokens, self.d, dtype=store_dtype)
        mstage = torch.empty(self.block_tokens, len(META_FIELDS), dtype=torch.int32) if self.with_meta else None
        carry_x, carry_m = None, None  # fewer than B tokens left over from the previous block
        for block in self._blocks:
            s = block[2] - block[1]
            x, m = self._read(block, stage[:s], mstage[:s] if mstage is not None else None)
            j = 0
            if carry_x is not None:
                j = min(B - carry_x.shape[0], s)
                carry_x = torch.cat([carry_x, x[:j]])
                carry_m = torch.cat([carry_m, m[:j]]) if m is not None else None
                if carry_x.shape[0] == B:
                    yield self._out(carry_x, carry_m)
                    carry_x = carry_m = None
            while j + B <= s:
                yield self._out(x[j:j + B], m[j:j + B] if m is not None else None, copy=True)
                j += B
            if j < s:
                carry_x = x[j:s].clone()
                carry_m = m[j:s].clone() if m is not None else None
            held = s + (carry_x.shape[0] if carry_x is not None else 0)
            self.peak_buffered = max(self.peak_buffered, held)
        if carry_x is not None and not self.drop_last:
            yield self._out(carry_x, carry_m)

    def _shuffled(self):
        """A shuffle buffer with random eviction.

        Fill the buffer with blocks (read in a random order straight into it); then
        repeatedly emit about half of the buffered tokens, chosen uniformly at random, as
        batches, and read new blocks into the freed positions. Each token enters the
        buffer once and leaves it once. Memory: the buffer (buffer_tokens x d in the store
        dtype), one staging block and one batch.
        """
        blocks, B, cap, g = self._blocks, self.batch_size, self.buffer_tokens, self._generator
        if not blocks:
            return
        store_dtype = DTYPES[self.store.dtype]
        buf = torch.empty(cap, self.d, dtype=store_dtype)
        mbuf = torch.empty(cap, len(META_FIELDS), dtype=torch.int32) if self.with_meta else None
        stage = torch.empty(self.block_tokens, self.d, dtype=store_dtype)
        mstage = torch.empty(self.block_tokens, len(META_FIELDS), dtype=torch.int32) if self.with_meta else None
        # gathers and scatters move whole rows: do them on the widest integer view of a row
        row_bytes = self.d * store_dtype.itemsize
        raw = next(t for t in (torch.int64, torch.int32, torch.int16, torch.uint8) if row_bytes % t.itemsize == 0)
        rbuf, rstage = buf.view(raw), stage.view(raw)
        size = [b - a for _, a, b in blocks]
        n = 0
        bi = 0

        def emit(index):
            x = rbuf.index_select(0, index).view(store_dtype)
            return self._out(x, mbuf.index_select(0, index) if mbuf is not None else None)

        def append():
            nonlocal n, bi
            while bi < len(blocks) and n + size[bi] <= cap:
                s = size[bi]
                self._read(blocks[bi], buf[n:n + s], mbuf[n:n + s] if mbuf is not None else None)
                n += s
                bi += 1
            self.peak_buffered = max(self.peak_buffered, n)

        append()
        while bi < len(blocks):
            need = size[bi] - (cap - n)  # > 0: the next block does not fit
            k = -(-max(need, n // 2) // B) * B
            if k > n:
                k = n // B * B if n // B * B >= need else n
            out = torch.randperm(n, generator=g)[:k]
            for j in range(0, k, B):
                yield emit(out[j:j + B])
            # the emitted positions are holes: fill them with new blocks
            h = 0
            while bi < len(blocks) and size[bi] <= k - h:
                s = size[bi]
                _, m = self._read(blocks[bi], stage[:s], mstage[:s] if mstage is not None else None)
                rbuf.index_copy_(0, out[h:h + s], rstage[:s])
                if mbuf is not None:
                    mbuf.index_copy_(0, out[h:h + s], m)
                h += s
                bi += 1
            if h < k:  # compact the remaining holes away, then append at the end
                holes = out[h:]
                new_n = n - holes.numel()
                keep = torch.ones(n, dtype=torch.bool)
                keep[holes] = False
                source = torch.arange(new_n, n)[keep[new_n:]]
                target = holes[holes < new_n]
                if source.numel():
                    rbuf.index_copy_(0, target, rbuf.index_select(0, source))
                    if mbuf is not None:
                        mbuf.index_copy_(0, target, mbuf.index_select(0, source))
                n = new_n
                append()
        order = torch.randperm(n, generator=g)
        for j in range(0, n, B):
            index = order[j:j + B]
            if index.numel() < B and self.drop_last:
                break
            yield emit(index)


def open_store(path: str | Path, verify: bool | None = None) -> Store:
    """Open a finalized store for reading; :class:`DiffdictError` if ``path`` is not one.

    Every manifest field is cross-checked with ``store.json``, the chunk records and the
    digest, and every file path must lie inside the store. With ``verify`` (default: on,
    or as set by :func:`verification`) each file is also checked against its recorded hash
    (xxh3-128; sha256 for stores written before xxh3 was recorded) the first time it is read, so a damaged store stops the reader with one error naming the
    file. ``verify=False`` skips the hashing (for a store verified once already).
    """
    verify = _verify_reads.get() if verify is None else bool(verify)
    path, manifest = _load_manifest(path)
    _raise_first(_manifest_problems(path, manifest, read_records=verify))
    return Store(path, manifest, verify=verify)


# --------------------------------------------------------------------------- import


def _open_array(path: Path):
    """(array-like supporting [a:b] -> numpy/torch, shape, dtype name) without loading it all."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise DiffdictError(f"array file not found: {path}")
    if suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise DiffdictError(f"cannot read {path} as a .npy array: {error}") from None
        if array.dtype.kind != "f":
            raise DiffdictError(f"{path} holds {array.dtype} values; expected a floating point (N, d) array")
        return array, tuple(array.shape), str(array.dtype)
    if suffix == ".safetensors":
        try:
            handle = safe_open(str(path), framework="pt")
            keys = list(handle.keys())
        except (SafetensorError, OSError) as error:
            raise DiffdictError(f"cannot read {path} as safetensors: {error}") from None
        if len(keys) != 1:
            raise DiffdictError(f"{path} holds {len(keys)} tensors ({', '.join(keys[:5])}); expected exactly one (N, d) tensor")
        slice_ = handle.get_slice(keys[0])
        dtype = slice_.get_dtype()
        if dtype not in ("F16", "BF16", "F32", "F64"):
            raise DiffdictError(f"{path} holds {dtype} values; expected a floating point (N, d) tensor")
        return slice_, tuple(slice_.get_shape()), dtype
    raise DiffdictError(f"cannot import {path}: expected a .npy or .safetensors file with one (N, d) array")


def import_array(
    array_path: str | Path,
    out_path: str | Path,
    site: str = "acts",
    dtype: str = "float16",
    chunk_tokens: int = 65536,
    progress: bool | None = None,
) -> Store:
    """Import a user's (N, d) ``.npy`` or ``.safetensors`` array as a store (no host model, no images).

    Each row becomes one token whose ``prompt_id`` is its row index (step, row, col are 0;
    grid 1x1); ``chunk_tokens`` rows make a chunk. Streams the array (memory-mapped), and
    resumes an interrupted import of the same file into the same folder.
    """
    array_path = Path(array_path)
    array, shape, source_dtype = _open_array(array_path)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise DiffdictError(f"{array_path} has shape {shape}; expected a non-empty (N, d) array")
    n, d = shape
    settings = {
        "source": "import",
        "array": array_path.name,
        "array_sha256": sha256_file(array_path),
        "array_shape": [n, d],
        "array_dtype": source_dtype,
    }
    header = _make_header(settings, {site: d}, {site: (1, 1)}, None, chunk_tokens, dtype, num_prompts=n)
    writer = StoreWriter._open_header(out_path, header)
    pending = writer.pending_chunks()
    from tqdm import tqdm

    bar = tqdm(total=n, initial=n - sum(len(writer.chunk_prompt_ids(i)) for i in pending), unit="tok",
               unit_scale=True, desc="import", disable=(not sys.stderr.isatty()) if progress is None else not progress)
    try:
        for index in pending:
            rows = writer.chunk_prompt_ids(index)
            part = array[rows.start:rows.stop]
            x = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.array(part))  # a copy: the memmap is read-only
            zeros = torch.zeros(len(rows), dtype=torch.int32)
            meta = {"prompt_id": torch.arange(rows.start, rows.stop, dtype=torch.int32),
                    "step": zeros, "row": zeros, "col": zeros}
            writer.write_chunk(index, {site: x}, {site: meta}, None)
            bar.update(len(rows))
    finally:
        bar.close()
    writer.finalize()
    return open_store(out_path)


# --------------------------------------------------------------------------- info / verify


def store_info(path: str | Path) -> dict:
    """Summary of a store: tokens per site, d, dtype, grid, prompts, model, digest.

    For a store still being written, returns what is known with ``finalized: False``.
    """
    path = Path(path)
    if not (path / MANIFEST_FILE).exists() and (path / HEADER_FILE).exists():
        header = _read_json_file(path / HEADER_FILE)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise DiffdictError(f"{path / HEADER_FILE} is not a diffdict store header")
        writer = StoreWriter(path, header)
        done = writer.completed_chunks()
        return {
            "path": str(path),
            "finalized": False,
            "chunks_complete": len(done),
            "num_chunks": writer.num_chunks,
            "model": header["settings"].get("model"),
            "settings": header["settings"],
            "dtype": header["dtype"],
            "n_prompts": header["num_prompts"],
            "sites": {s: {"d": e["d"], "grid": e["grid"]} for s, e in header["sites"].items()},
            "digest": None,
        }
    path, manifest = _load_manifest(path)
    sites = {
        site: {"d": e["d"], "grid": e["grid"], "tokens": e["tokens"], "bytes": e["bytes"]}
        for site, e in sorted(manifest["sites"].items())
    }
    return {
        "path": str(path),
        "finalized": True,
        "model": manifest["settings"].get("model"),
        "settings": manifest["settings"],
        "dtype": manifest["dtype"],
        "sites": sites,
        "tokens": {site: e["tokens"] for site, e in sites.items()},
        "d": {site: e["d"] for site, e in sites.items()},
        "grid": {site: e["grid"] for site, e in sites.items()},
        "n_prompts": manifest["num_prompts"],
        "num_chunks": manifest["num_chunks"],
        "chunk_size": manifest["chunk_size"],
        "images": manifest["images"],
        "bytes": sum(e["bytes"] for e in sites.values())
        + sum(r["images"]["bytes"] for r in manifest["chunks"] if r.get("images")),
        "digest": manifest["digest"],
        "images_digest": manifest.get("images_digest"),
    }


def _verify_file(path: Path, entry: dict, tensors: list[str]) -> str | None:
    file = path / entry["file"]
    try:
        size = os.stat(file).st_size
    except FileNotFoundError:
        return f"missing file {file}"
    except OSError as error:
        return f"cannot read {file}: {_describe_os_error(error)}"
    if size < entry["bytes"]:
        return f"truncated file {file}: {size} bytes, expected {entry['bytes']}"
    if size != entry["bytes"]:
        return f"wrong size of {file}: {size} bytes, expected {entry['bytes']}"
    try:
        if sha256_file(file) != entry["sha256"]:
            return f"corrupt file {file}: sha256 does not match the manifest"
        if _FAST_HASH in entry and _hash_problem(file, _expected_hash(entry)):
            return f"corrupt file {file}: {_FAST_HASH} does not match the manifest"
        with safe_open(str(file), framework="pt") as handle:
            content = _content_sha256([handle.get_tensor(name) for name in tensors])
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        return f"corrupt file {file}: {error}"
    if content != entry["content_sha256"]:
        return f"corrupt file {file}: content does not match the manifest"
    return None


def verify_store(path: str | Path) -> None:
    """Check every manifest field (against ``store.json``, the chunk records, the digest) and
    every file (size, sha256, content) against the manifest; the first problem raises, naming it."""
    path, manifest = _load_manifest(path)
    problems = _manifest_problems(path, manifest, read_records=True)
    if not problems:
        for record in manifest["chunks"]:
            for site in sorted(record["sites"]):
                problems.append(_verify_file(path, record["sites"][site], ["acts", "meta"]))
            if record["images"]:
                problems.append(_verify_file(path, record["images"], ["images"]))
    _raise_first([problem for problem in problems if problem])
