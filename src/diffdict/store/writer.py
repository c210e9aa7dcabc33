"""Writing a store: :class:`StoreWriter` creates or reopens it, writes chunks durably
(temporary file, fsync, rename: :func:`diffdict.io.atomic_target`) and marks each
complete; ``finalize`` assembles the manifest. See :mod:`diffdict.store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash
from safetensors.torch import save as _st_save

from diffdict.errors import DiffdictError, require_int
from diffdict.io import atomic_target
from diffdict.store.format import (
    CHUNKS_DIR, DEFAULT_CHUNK_SIZE, DTYPES, FORMAT, HEADER_FILE, IMAGES_DIR, MANIFEST_FILE, META_FIELDS,
    SHARDS_DIR, _TMP_SUFFIX, _build_manifest, _content_sha256, _Described, _describe_os_error, _file_metadata,
    _header_differences, _header_key, _images_rel, _make_header, _read_described, _record_rel, _shard_rel,
)


# --------------------------------------------------------------------------- durable writes


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
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (refused if it exists) holding ``data``, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, rename it over ``path``
    (:func:`diffdict.io.atomic_target`: on any error the temporary file is removed)."""
    with atomic_target(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _remove_temps(folder: Path, prefix: str = ".") -> None:
    """Remove the temporary files (``prefix``...``.tmp``) that killed writers left in ``folder``."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(prefix) and path.name.endswith(_TMP_SUFFIX):
                _remove_quietly(path)


def _first_non_finite(x: torch.Tensor) -> int | None:
    """The first row of ``x`` holding a NaN or an infinity, or None."""
    finite = torch.isfinite(x).all(dim=1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


# --------------------------------------------------------------------------- writer


class StoreWriter(_Described):
    """Create or reopen a store and write its chunks; see the module docstring."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self._header = self._description = header
        self._key = _header_key(header)

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
            if path.is_dir() and any(not p.name.startswith(f".{HEADER_FILE}.") for p in path.iterdir()):
                raise DiffdictError(
                    f"{path} exists, is not empty and is not a diffdict store (no {HEADER_FILE}); "
                    "choose a new or empty folder"
                )
            try:
                path.mkdir(parents=True, exist_ok=True)
                cls._create_header(header_path, header)
            except OSError as error:
                raise DiffdictError(f"cannot create store {path}: {_describe_os_error(error)}") from None
        existing = _read_described(path, header_path, "header")
        diffs = _header_differences(existing, header)
        if diffs:
            more = f" (and {len(diffs) - 2} more differences)" if len(diffs) > 2 else ""
            raise DiffdictError(f"store {path} refuses to mix: {'; '.join(diffs[:2])}{more}; use a new output folder")
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
        tmp = header_path.parent / f".{header_path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        _write_new(tmp, data)
        try:
            os.link(tmp, header_path)
        except FileExistsError:
            pass
        except OSError:  # file systems without hard links: fall back to an exclusive create
            with contextlib.suppress(FileExistsError):
                _write_new(header_path, data)
        finally:
            _remove_quietly(tmp)
        _fsync_dir(header_path.parent)

    @property
    def sites(self) -> dict[str, int]:
        return {site: entry["d"] for site, entry in self._header["sites"].items()}

    @property
    def grid(self) -> dict[str, tuple[int, int]]:
        return {site: tuple(entry["grid"]) for site, entry in self._header["sites"].items()}

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_prompts / self.chunk_size)

    def _check_index(self, chunk_index: int) -> int:
        return require_int(chunk_index, "chunk index", 0, self.num_chunks - 1,
                           f" (the store has {self.num_chunks} chunks)")

    def chunk_prompt_ids(self, chunk_index: int) -> range:
        index = self._check_index(chunk_index)
        start = index * self.chunk_size
        return range(start, min(start + self.chunk_size, self.num_prompts))

    def read_record(self, chunk_index: int) -> dict | None:
        """The chunk's completion record if the chunk is complete, else None."""
        index = self._check_index(chunk_index)
        try:
            record = json.loads((self.path / _record_rel(index)).read_text())
        except (OSError, ValueError):
            return None
        ids = self.chunk_prompt_ids(index)
        if (not isinstance(record, dict) or record.get("store_key") != self._key or record.get("chunk") != index
                or record.get("prompt_ids") != [ids.start, ids.stop] or not isinstance(record.get("sites"), dict)
                or set(record["sites"]) != set(self._header["sites"])):
            return None
        entries = list(record["sites"].values()) + ([record["images"]] if record.get("images") else [])
        try:
            sizes_match = all(os.stat(self.path / entry["file"]).st_size == entry["bytes"] for entry in entries)
        except (OSError, KeyError, TypeError):
            return None
        return record if sizes_match else None

    def is_complete(self, chunk_index: int) -> bool:
        """True iff the chunk's record exists, belongs to this store, and its files have the recorded sizes."""
        return self.read_record(chunk_index) is not None

    def pending_chunks(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Chunk indices this rank still has to write (those with ``index % world_size == rank``)."""
        require_int(world_size, "world size")
        require_int(rank, "rank", 0, world_size - 1)
        return [i for i in range(rank, self.num_chunks, world_size) if not self.is_complete(i)]

    def _prepare(self, index: int, ids: range, acts: dict, meta: dict, images: Any) -> tuple[dict, Any]:
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
        store_dtype = DTYPES[self.dtype]
        label = "prompt id" if self._header["prompts"] is not None else "row"
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
            for column, low, high, what in (
                    (pid, ids.start, ids.stop, f"{label} (chunk {index} holds {ids.start}..{ids.stop - 1})"),
                    (step, 0, 2**31, "step (expected >= 0)"),
                    (row, 0, rows, f"row (grid {rows}x{cols})"),
                    (col, 0, cols, f"col (grid {rows}x{cols})")):
                bad = (column < low) | (column >= high)  # nothing for an empty chunk
                if bool(bad.any()):
                    first = int(bad.nonzero()[0, 0])
                    raise DiffdictError(f"site {site!r}: bad {what}: {int(column[first])} at token {first}")
            x = x.detach().cpu()
            first = _first_non_finite(x)
            if first is not None:
                kind = "NaN" if bool(torch.isnan(x[first]).any()) else "inf"
                raise DiffdictError(
                    f"non-finite activations ({kind}) at site {site!r} for {label} {int(pid[first])} "
                    f"(chunk {index}, token {first}); nothing was written"
                )
            stored = x.to(store_dtype)
            if store_dtype != x.dtype:
                first = _first_non_finite(stored)
                if first is not None:
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
        ids = self.chunk_prompt_ids(index)
        prepared, image_tensor = self._prepare(index, ids, acts, meta, images)
        record: dict[str, Any] = {"format": FORMAT, "store_key": self._key, "chunk": index,
                                  "prompt_ids": [ids.start, ids.stop], "sites": {}, "images": None}
        finals: list[Path] = []
        record_path = self.path / _record_rel(index)
        try:
            # 1. un-mark the chunk before touching its files
            if record_path.exists():
                os.unlink(record_path)
                _fsync_dir(record_path.parent)
            # 2. shards, then images: temp name, fsync, rename
            for site, (x, m) in prepared.items():
                entry = self._write_file(_shard_rel(site, index), {"acts": x, "meta": m},
                                         _file_metadata(site=site, chunk=index), finals)
                record["sites"][site] = {**entry, "tokens": int(x.shape[0])}
            if image_tensor is not None:
                entry = self._write_file(_images_rel(index), {"images": image_tensor},
                                         _file_metadata(chunk=index), finals)
                record["images"] = {**entry, "shape": list(image_tensor.shape)}
            for folder in {p.parent for p in finals}:
                _fsync_dir(folder)
            # 3. only now: the completion record
            data = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
            _durable_write(record_path, data)
            _fsync_dir(record_path.parent)
        except OSError as error:
            for path in finals:
                _remove_quietly(path)
            _remove_quietly(record_path)
            raise DiffdictError(
                f"could not write chunk {index} of store {self.path}: {_describe_os_error(error)}; "
                "the chunk is not marked complete"
            ) from None
        return record

    def _write_file(self, rel: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                    finals: list[Path]) -> dict:
        """Durably write one safetensors file of a chunk (``rel`` in the store, listed in
        ``finals`` before it is written); its record entry: file, bytes, hashes."""
        target = self.path / rel
        _remove_temps(target.parent, f".{target.name}.")
        data = _st_save(tensors, metadata=metadata)
        finals.append(target)
        _durable_write(target, data)
        return {
            "file": rel,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "xxh3": xxhash.xxh3_128_hexdigest(data),
            "content_sha256": _content_sha256(list(tensors.values())),
        }

    def finalize(self) -> None:
        """Write ``manifest.json`` from the chunk records once every chunk is complete (idempotent)."""
        records = [self.read_record(index) for index in range(self.num_chunks)]
        missing = [index for index, record in enumerate(records) if record is None]
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
            if not (manifest_path.exists() and manifest_path.read_bytes() == data):
                _durable_write(manifest_path, data)
                _fsync_dir(self.path)
            # leftovers of killed writers (nobody writes chunks once every chunk is complete;
            # the store folder itself is left alone: a concurrent finalize has its temp there)
            for folder in [CHUNKS_DIR, IMAGES_DIR] + [f"{SHARDS_DIR}/{site}" for site in self._header["sites"]]:
                _remove_temps(self.path / folder)
        except OSError as error:
            raise DiffdictError(f"could not write the manifest of store {self.path}: {_describe_os_error(error)}") from None
