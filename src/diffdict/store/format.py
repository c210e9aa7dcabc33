"""The store's layout and the records that describe it: file names, the header
(``store.json``) and how a reopened store is compared with it, the manifest's schema,
how it is built from the chunk records, and the digest.

Also the small helpers every part of the store shares (canonical JSON, content hashes).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from diffdict.capture import META_FIELDS
from diffdict.errors import DiffdictError, require_int
from diffdict.io import describe_os_error as _describe_os_error, read_json as _read_json_file

FORMAT = "diffdict-store"
FORMAT_VERSION = 1
HEADER_FILE = "store.json"
MANIFEST_FILE = "manifest.json"
CHUNKS_DIR = "chunks"
SHARDS_DIR = "shards"
IMAGES_DIR = "images"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_CHUNK_SIZE = 64
DEFAULT_BUFFER_TOKENS = 2**20
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TMP_SUFFIX = ".tmp"


# --------------------------------------------------------------------------- helpers


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _content_sha256(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 over dtypes, shapes and raw bytes: independent of the file format."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{str(tensor.dtype)}{tuple(tensor.shape)}".encode())
        tensor = tensor.detach().contiguous().cpu()
        digest.update((tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy().tobytes())
    return digest.hexdigest()


def _file_metadata(**fields: Any) -> dict[str, str]:
    # one key only: safetensors serialises its metadata map in no fixed order, and shard
    # files should be byte-identical however (and by how many processes) they were written
    return {FORMAT: _canonical_json({"version": FORMAT_VERSION, **fields})}


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


def _shard_rel(site: str, index: int) -> str:
    return f"{SHARDS_DIR}/{site}/{index:06d}.safetensors"


def _images_rel(index: int) -> str:
    return f"{IMAGES_DIR}/{index:06d}.safetensors"


def _record_rel(index: int) -> str:
    return f"{CHUNKS_DIR}/{index:06d}.json"


def _read_described(path: Path, file: Path, what: str) -> dict:
    """The store's header or manifest (``what``) from ``file``, refused unless of this format and version."""
    described = _read_json_file(file)
    if not isinstance(described, dict) or described.get("format") != FORMAT:
        raise DiffdictError(f"{file} is not a diffdict store {what}")
    if described.get("version") != FORMAT_VERSION:
        raise DiffdictError(
            f"store {path} has format version {described.get('version')}, this diffdict reads version {FORMAT_VERSION}"
        )
    return described


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
        require_int(d, "d", context=f" (the width of site {site!r})")
        if not isinstance(grid, dict) or site not in grid:
            raise DiffdictError(f"no token grid given for site {site!r}: expected grid[{site!r}] = (rows, cols)")
        g = grid[site]
        if not isinstance(g, (tuple, list)) or len(g) != 2 or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in g):
            raise DiffdictError(f"bad token grid {g!r} for site {site!r}: expected (rows, cols), positive integers")
        site_entries[site] = {"d": int(d), "grid": [int(g[0]), int(g[1])]}
    extra = sorted(set(grid) - set(sites)) if isinstance(grid, dict) else []
    if extra:
        raise DiffdictError(f"token grid given for unknown site(s) {', '.join(extra)}; sites are {', '.join(sorted(sites))}")
    if prompts is not None:
        if not isinstance(prompts, (list, tuple)):
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
    require_int(chunk_size, "chunk size")
    if dtype not in DTYPES:
        raise DiffdictError(f"unknown store dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "settings": settings,
        "sites": site_entries,
        "dtype": dtype,
        "chunk_size": int(chunk_size),
        "num_prompts": int(num_prompts),
        "prompts": prompts,
    }


def _header_key(header: dict) -> str:
    return hashlib.sha256(_canonical_json(header).encode()).hexdigest()


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
    for field, name in (("dtype", "dtype"), ("chunk_size", "chunk size")):
        if old.get(field) != new[field]:
            diffs.append(f"{name} differs ({old.get(field)} in store, {new[field]} requested)")
    if old.get("num_prompts") != new["num_prompts"]:
        diffs.append(f"prompts differ ({old.get('num_prompts')} in store, {new['num_prompts']} requested)")
    elif old.get("prompts") != new["prompts"]:
        a, b = old.get("prompts") or [], new["prompts"] or []
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if first is None:
            diffs.append("prompts differ (captured prompts vs an imported array)")
        else:
            diffs.append(f"prompts differ (prompt {first}: {_short(a[first])} in store, {_short(b[first])} requested)")
    return diffs


def _described(field: str) -> property:
    return property(lambda self: self._description[field], doc=f"The store's {field}.")


class _Described:
    """The fields a store's header (while writing) and manifest (once finalized) share."""

    _description: dict
    settings: dict = _described("settings")
    dtype: str = _described("dtype")
    chunk_size: int = _described("chunk_size")
    num_prompts: int = _described("num_prompts")

    @property
    def prompts(self) -> list[str]:
        """The prompts by prompt id ([] for an imported array, where prompt_id is the row)."""
        return list(self._description["prompts"] or [])


# --------------------------------------------------------------------------- manifest

_MANIFEST_FIELDS = {"format", "version", "store_key", "settings", "sites", "dtype", "chunk_size", "num_prompts",
                    "num_chunks", "prompts", "images", "meta_fields", "chunks", "digest", "images_digest"}
_RECORD_FIELDS = {"format", "store_key", "chunk", "prompt_ids", "sites", "images"}
_SHARD_FIELDS = {"file", "tokens", "bytes", "sha256", "content_sha256"}
_IMAGE_FIELDS = {"file", "shape", "bytes", "sha256", "content_sha256"}
_FAST_HASH = "xxh3"  # xxh3-128 of the whole file: what readers check (sha256 where a store lacks it)
_HEADER_FIELDS = ("settings", "dtype", "chunk_size", "num_prompts", "prompts")


def _site_totals(header: dict, records: list[dict], fields: tuple[str, ...]) -> dict:
    """Each site's d and grid, and its chunk records' sums of ``fields``."""
    return {site: {"d": entry["d"], "grid": entry["grid"],
                   **{field: sum(r["sites"][site][field] for r in records) for field in fields}}
            for site, entry in header["sites"].items()}


def _compute_digest(header: dict, records: list[dict], kind: str = "sites") -> str:
    digest = hashlib.sha256()
    if kind == "sites":
        summary = {"format": FORMAT, "dtype": header["dtype"], "sites": _site_totals(header, records, ("tokens",))}
        digest.update(_canonical_json(summary).encode())
        for site in sorted(header["sites"]):
            for record in records:
                digest.update(bytes.fromhex(record["sites"][site]["content_sha256"]))
    else:
        for record in records:
            digest.update(bytes.fromhex(record["images"]["content_sha256"]))
    return "sha256:" + digest.hexdigest()


def _build_manifest(header: dict, key: str, records: list[dict], image_info: dict | None) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "store_key": key,
        **{field: header[field] for field in _HEADER_FIELDS},
        "sites": _site_totals(header, records, ("tokens", "bytes")),
        "num_chunks": len(records),
        "images": image_info,
        "meta_fields": list(META_FIELDS),
        "chunks": records,
        "digest": _compute_digest(header, records),
        "images_digest": _compute_digest(header, records, "images") if image_info else None,
    }


def _meta_dict(meta: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: meta[:, i].contiguous() for i, name in enumerate(META_FIELDS)}
