"""Importing a user's (N, d) array as a store (``diffdict store import``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from diffdict.errors import DiffdictError
from diffdict.io import sha256_file
from diffdict.store.format import _make_header
from diffdict.store.reader import Store, open_store
from diffdict.store.writer import StoreWriter


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
