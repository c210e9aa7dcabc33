"""Verification on read hashes the bytes the loader reads: a file read in order is read
once per store (while the loader reads it, or just ahead of it on a background thread),
and a damaged byte anywhere in a file (header, a tensor, a block read later or never)
still stops the reader before any of that file's data leaves the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from diffdict.errors import DiffdictError
from diffdict.store import StoreWriter, open_store

TOKENS_PER_PROMPT, PROMPTS, CHUNK, D = 16, 8, 4, 8  # two shards of 64 tokens


def build(path: Path, dtype: str) -> list[Path]:
    writer = StoreWriter.open(path, {"model": "synthetic"}, {"s": D}, {"s": (4, 4)},
                              [f"prompt {i}" for i in range(PROMPTS)], chunk_size=CHUNK, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    for index in writer.pending_chunks():
        ids = writer.chunk_prompt_ids(index)
        n = len(ids) * TOKENS_PER_PROMPT
        pid = torch.arange(ids.start, ids.stop).repeat_interleave(TOKENS_PER_PROMPT)
        pos = torch.arange(TOKENS_PER_PROMPT).repeat(len(ids))
        meta = {"prompt_id": pid, "step": torch.zeros_like(pid), "row": pos // 4, "col": pos % 4}
        writer.write_chunk(index, {"s": torch.randn(n, D, generator=gen)}, {"s": meta}, None)
    writer.finalize()
    return [file for file, _, _ in open_store(path).shards("s")]


def flip(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("dtype", ["float16", "float32"])  # meta before acts in the file, and after
@pytest.mark.parametrize("where", ["header", "first data byte", "middle", "last byte"])
def test_a_flipped_byte_anywhere_stops_every_read_path(tmp_path, dtype, where):
    files = build(tmp_path / "store", dtype)
    size = files[1].stat().st_size
    header = 8 + int.from_bytes(files[1].read_bytes()[:8], "little")
    flip(files[1], {"header": 20, "first data byte": header, "middle": size // 2, "last byte": size - 1}[where])
    name = str(files[1])

    store = open_store(tmp_path / "store")
    seen = []
    with pytest.raises(DiffdictError, match=name):
        for _, meta in store.iter_batches("s", 8, shuffle=False, with_meta=True, block_tokens=8):
            seen += meta["prompt_id"].tolist()
    assert seen and max(seen) < CHUNK  # every batch of the good shard, none of the damaged one
    for block_tokens in (8, 32):
        with pytest.raises(DiffdictError, match=name):
            list(open_store(tmp_path / "store").iter_batches("s", 8, seed=0, buffer_tokens=64, block_tokens=block_tokens))
    store = open_store(tmp_path / "store")
    store.read("s", 0, 64)  # the good shard
    with pytest.raises(DiffdictError, match=name):
        store.read("s", 64, 66)  # two rows of the damaged one: the rest of the file is hashed too


def test_each_file_is_hashed_once_per_store_and_the_loader_reads_only_its_rows(tmp_path, monkeypatch):
    from diffdict.store import loader

    files = build(tmp_path / "store", "float16")
    hashed, read = [], []
    real_hash, real_preadv = loader.xxhash.xxh3_128, os.preadv

    class CountingHash:
        def __init__(self):
            self.inner = real_hash()

        def update(self, data):
            hashed.append(len(memoryview(data).cast("B")))
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    def counting_preadv(fd, buffers, offset):
        n = real_preadv(fd, buffers, offset)
        read.append(n)
        return n

    monkeypatch.setattr(loader.xxhash, "xxh3_128", CountingHash)
    monkeypatch.setattr(os, "preadv", counting_preadv)
    store = open_store(tmp_path / "store")
    tokens = sum(batch.shape[0] for batch in store.iter_batches("s", 8, shuffle=False))
    assert tokens == PROMPTS * TOKENS_PER_PROMPT
    assert sum(hashed) == sum(file.stat().st_size for file in files)  # every byte of every file, once
    assert sum(read) <= sum(file.stat().st_size for file in files)
    hashed.clear()
    read.clear()
    list(store.iter_batches("s", 8, shuffle=False))  # a second epoch: files are hashed once per store
    assert sum(hashed) == 0
    assert sum(read) == PROMPTS * TOKENS_PER_PROMPT * D * 2  # the activation rows, nothing else
