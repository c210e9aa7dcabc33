"""Reading a finalized store: the manifest loaded and cross-checked (fields, chunk records,
digest, path containment), then :class:`Store` and :func:`open_store`."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from diffdict.errors import DiffdictError
from diffdict.store.format import (
    CHUNKS_DIR, DTYPES, FORMAT, HEADER_FILE, MANIFEST_FILE, META_FIELDS, _FAST_HASH,
    _HEADER_FIELDS, _IMAGE_FIELDS, _MANIFEST_FIELDS, _RECORD_FIELDS, _SHARD_FIELDS, _compute_digest, _Described,
    _described, _header_key, _images_rel, _meta_dict, _read_described, _read_json_file, _record_rel, _shard_rel,
)
from diffdict.store.loader import BatchIterator, _expected_hash, _FileVerifier, _ShardFile, _verify_reads


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
    return path, _read_described(path, manifest_path, "manifest")


# --------------------------------------------------------------------------- manifest checks


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
            _entry_file(path, root, entry, f"{label}.sites.{site}.file", _shard_rel(site, index))
            if not (_is_count(entry["tokens"]) and _is_count(entry["bytes"], 1)):
                problems.append(f"{where}: {label}.sites.{site} has bad token or byte counts")
        entry = record["images"]
        if (images is None) != (entry is None):
            problems.append(f"{where}: {label} {'has' if entry else 'lacks'} images, unlike the manifest")
        elif entry is not None:
            if not isinstance(entry, dict) or set(entry) - {_FAST_HASH} != _IMAGE_FIELDS:
                problems.append(f"{where}: {label}.images is not an images entry")
                continue
            _entry_file(path, root, entry, f"{label}.images.file", _images_rel(index))
            expected_shape = [record["prompt_ids"][1] - record["prompt_ids"][0], images["height"], images["width"], 3]
            if entry["shape"] != expected_shape or not _is_count(entry["bytes"], 1):
                problems.append(f"{where}: {label}.images has shape {entry['shape']}, expected {expected_shape}")
        if read_records:
            record_path = path / _record_rel(index)
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


# --------------------------------------------------------------------------- the store


class Store(_Described):
    """A finalized activation store, read-only. Obtain with :func:`open_store`."""

    num_chunks: int = _described("num_chunks")
    digest: str = _described("digest")

    def __init__(self, path: Path, manifest: dict, verify: bool = True):
        self.path = path
        self.manifest = self._description = manifest
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

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, sites={self.sites}, dtype={self.dtype!r})"

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

    def _read_rows(self, file: Path, name: str, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` of a shard, read straight into ``out``.

        Not yet checked against the manifest's hash: callers confirm the file
        (:meth:`_confirm`) before anything read from it leaves the store. When verifying,
        the bytes read feed the file's hash (unless it is being hashed in the background),
        so that a file read in order is read once.
        """
        if file not in self._files:
            self._files[file] = _ShardFile(file, self._expect[file])
        shard = self._files[file]
        if self._verifier is None:
            return shard.read_rows(name, start, stop, out)
        with self._verifier.hashing(file) as file_hash:
            return shard.read_rows(name, start, stop, out, file_hash)

    def _hash_ahead(self, files: list[Path]) -> None:
        """Start hashing files a loader will read soon, in the background (when verifying)."""
        if self._verifier is not None and files:
            self._verifier.hash_ahead(files)

    def _confirm(self, files: Iterable[Path]) -> None:
        """Raise, naming the file, unless each file hashes to what the manifest records (when verifying)."""
        if self._verifier is not None:
            self._verifier.confirm(files)

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
            parts.append(self._read_rows(file, "acts", a - offset, b - offset).to(dtype))
            metas.append(self._read_rows(file, "meta", a - offset, b - offset))
            self._confirm([file])  # before the rows leave the store
        acts = torch.cat(parts) if parts else torch.empty(0, self.d(site), dtype=dtype)
        meta = torch.cat(metas) if metas else torch.empty(0, len(META_FIELDS), dtype=torch.int32)
        return acts, _meta_dict(meta)

    iter_batches = functools.partialmethod(BatchIterator)  # store.iter_batches(site, batch_size, ...)

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
        for pid in ids:
            if not 0 <= pid < self.num_prompts:
                raise DiffdictError(f"prompt id {pid} out of range: the store has prompts 0..{self.num_prompts - 1}")
        for position, pid in enumerate(ids):
            chunk, row = divmod(pid, self.chunk_size)
            file = self.path / self.manifest["chunks"][chunk]["images"]["file"]
            self._confirm([file])  # before the image leaves the store
            self._read_rows(file, "images", row, row + 1, torch.from_numpy(out[position : position + 1]))
        return out


def open_store(path: str | Path, verify: bool | None = None) -> Store:
    """Open a finalized store for reading; :class:`DiffdictError` if ``path`` is not one.

    Every manifest field is cross-checked with ``store.json``, the chunk records and the
    digest, and every file path must lie inside the store. With ``verify`` (default: on,
    or as set by :func:`verification`) each file is also checked against its recorded hash
    (xxh3-128; sha256 for stores written before xxh3 was recorded) the first time it is read,
    so a damaged store stops the reader with one error naming the file. ``verify=False``
    skips the hashing (for a store verified once already).
    """
    verify = _verify_reads.get() if verify is None else bool(verify)
    path, manifest = _load_manifest(path)
    _raise_first(_manifest_problems(path, manifest, read_records=verify))
    return Store(path, manifest, verify=verify)
