"""``diffdict store info`` and ``diffdict store verify``: a store summarised, and every
manifest field and file checked against the manifest."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from diffdict.errors import DiffdictError
from diffdict.io import sha256_file
from diffdict.store.format import (
    FORMAT, HEADER_FILE, MANIFEST_FILE, _FAST_HASH, _content_sha256, _describe_os_error, _read_json_file,
)
from diffdict.store.loader import _expected_hash, _hash_problem
from diffdict.store.reader import _load_manifest, _manifest_problems, _raise_first
from diffdict.store.writer import StoreWriter


def store_info(path: str | Path) -> dict:
    """Summary of a store: tokens per site, d, dtype, grid, prompts, model, digest.

    For a store still being written, returns what is known with ``finalized: False``.
    """
    path = Path(path)
    unfinished = not (path / MANIFEST_FILE).exists() and (path / HEADER_FILE).exists()
    if unfinished:
        described = _read_json_file(path / HEADER_FILE)
        if not isinstance(described, dict) or described.get("format") != FORMAT:
            raise DiffdictError(f"{path / HEADER_FILE} is not a diffdict store header")
    else:
        path, described = _load_manifest(path)
    info = {"path": str(path), "finalized": not unfinished, "model": described["settings"].get("model"),
            "settings": described["settings"], "dtype": described["dtype"], "n_prompts": described["num_prompts"]}
    if unfinished:
        writer = StoreWriter(path, described)
        return {**info, "chunks_complete": sum(map(writer.is_complete, range(writer.num_chunks))),
                "num_chunks": writer.num_chunks, "digest": None,
                "sites": {s: {"d": e["d"], "grid": e["grid"]} for s, e in described["sites"].items()}}
    sites = {
        site: {"d": e["d"], "grid": e["grid"], "tokens": e["tokens"], "bytes": e["bytes"]}
        for site, e in sorted(described["sites"].items())
    }
    return {
        **info,
        "sites": sites,
        **{field: {site: e[field] for site, e in sites.items()} for field in ("tokens", "d", "grid")},
        "num_chunks": described["num_chunks"],
        "chunk_size": described["chunk_size"],
        "images": described["images"],
        "bytes": sum(e["bytes"] for e in sites.values())
        + sum(r["images"]["bytes"] for r in described["chunks"] if r.get("images")),
        "digest": described["digest"],
        "images_digest": described.get("images_digest"),
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
