"""Loader throughput of the activation store against raw sequential reads of its files.

Builds a synthetic store of ``2 x buffer`` tokens (so the shuffling loader cannot hold it),
then measures one epoch of

* raw: plain sequential ``readinto`` of every shard file (the disk / page-cache ceiling),
* loader (shuffled): ``Store.iter_batches(shuffle=True, buffer_tokens=buffer)``,
* loader (sequential): ``Store.iter_batches(shuffle=False)``,

each loader row twice, on a store opened for each run with verification on (every file
checked against its sha256, hashed in the background while the loader reads; the
default) and off (``--no-verify``), and each "cold" (the store's pages evicted with
posix_fadvise(DONTNEED) first) and "warm" (a second pass straight after). MB/s counts
stored activation bytes (tokens x d x itemsize of the store dtype), the same bytes for
every row, so rows compare directly; "verify cost" is the verified run's time over the
unverified one's, minus one (the two take turns within each repeat). "hash every file"
is the verification's own work, which its background thread does while the loader reads.

    nice -n 15 python benchmarks/loader_throughput.py --d 1280 --buffer-tokens 65536 --batch-size 4096 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffdict.store import DTYPES, StoreWriter, _expected_hash, _hash_problem, open_store


def build_store(path: Path, d: int, tokens: int, tokens_per_prompt: int, prompts_per_chunk: int, dtype: str) -> None:
    side = int(round(tokens_per_prompt ** 0.5))
    n_prompts = tokens // (side * side)
    writer = StoreWriter.open(path, {"model": "synthetic", "benchmark": "loader_throughput"}, {"site": d},
                              {"site": (side, side)}, [f"prompt {i}" for i in range(n_prompts)],
                              chunk_size=prompts_per_chunk, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    for index in writer.pending_chunks():
        ids = writer.chunk_prompt_ids(index)
        n = len(ids) * side * side
        pid = torch.arange(ids.start, ids.stop).repeat_interleave(side * side)
        pos = torch.arange(side * side).repeat(len(ids))
        meta = {"prompt_id": pid, "step": torch.zeros_like(pid), "row": pos // side, "col": pos % side}
        writer.write_chunk(index, {"site": torch.randn(n, d, generator=gen)}, {"site": meta}, None)
    writer.finalize()


def evict(files: list[Path]) -> None:
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_read(files: list[Path]) -> int:
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    total = 0
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while True:
                n = handle.readinto(view)
                if not n:
                    break
                total += n
    return total


def loader_epoch(path: Path, batch_size: int, buffer_tokens: int, shuffle: bool, verify: bool) -> int:
    store = open_store(path, verify=verify)  # a fresh store: files are verified once per opened store
    tokens = 0
    for batch in store.iter_batches("site", batch_size, shuffle=shuffle, seed=0, epoch=0, buffer_tokens=buffer_tokens):
        tokens += batch.shape[0]
    return tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--buffer-tokens", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=list(DTYPES))
    parser.add_argument("--tokens-per-prompt", type=int, default=256, help="16x16 grid like SDXL Turbo at 512px")
    parser.add_argument("--prompts-per-chunk", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where to build the store (default: a temp folder, removed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="diffdict-bench-"))
    path = root / "store"
    try:
        tokens = 2 * args.buffer_tokens
        start = time.perf_counter()
        build_store(path, args.d, tokens, args.tokens_per_prompt, args.prompts_per_chunk, args.dtype)
        build_s = time.perf_counter() - start
        store = open_store(path)
        files = [file for file, _, _ in store.shards("site")]
        n = store.num_tokens("site")
        act_bytes = n * args.d * DTYPES[args.dtype].itemsize
        rows = []

        def measure(names, fns, cold):
            """Median seconds of each fn; the fns take turns within each repeat, so a change
            of machine load during the run falls on all of them alike."""
            times = [[] for _ in fns]
            for _ in range(args.repeat):
                for fn, spent in zip(fns, times):
                    if cold:
                        evict(files)
                    t0 = time.perf_counter()
                    fn()
                    spent.append(time.perf_counter() - t0)
            for name, spent in zip(names, times):
                seconds = float(np.median(spent))
                rows.append({"what": name, "cache": "cold" if cold else "warm", "seconds": round(seconds, 3),
                             "MB/s": round(act_bytes / seconds / 1e6, 1), "tokens/s": round(n / seconds)})

        def epoch(shuffle, verify):
            return lambda: loader_epoch(path, args.batch_size, args.buffer_tokens, shuffle, verify)

        def hash_all():  # the verification's own work, done by its background thread
            for file, expected in hashes:
                assert _hash_problem(file, expected) is None

        hashes = [(path / r["sites"]["site"]["file"], _expected_hash(r["sites"]["site"])) for r in store.manifest["chunks"]]
        for cold in (True, False):
            measure(["raw sequential read", "hash every file"], [lambda: raw_read(files), hash_all], cold)
            for shuffle in (True, False):
                kind = "shuffled" if shuffle else "sequential"
                measure([f"loader {kind}", f"loader {kind} verified"], [epoch(shuffle, False), epoch(shuffle, True)], cold)
                rows[-1]["verify cost"] = f"{rows[-1]['seconds'] / rows[-2]['seconds'] - 1:+.1%}"

        result = {
            "store_tokens": n, "buffer_tokens": args.buffer_tokens, "d": args.d, "dtype": args.dtype,
            "batch_size": args.batch_size, "store_MB": round(sum(f.stat().st_size for f in files) / 1e6, 1),
            "shards": len(files), "buffer_MB": round(args.buffer_tokens * args.d * DTYPES[args.dtype].itemsize / 1e6, 1),
            "build_seconds": round(build_s, 2), "torch_threads": torch.get_num_threads(), "repeat": args.repeat,
            "load_average": [round(v, 2) for v in os.getloadavg()], "rows": rows,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"store: {n:,} tokens x d={args.d} {args.dtype} = {result['store_MB']} MB in {len(files)} shards; "
                  f"buffer {args.buffer_tokens:,} tokens ({result['buffer_MB']} MB); "
                  f"batch {args.batch_size}; torch threads {result['torch_threads']}; median of {args.repeat}; "
                  f"load average {result['load_average'][0]}")
            print(f"{'what':<29}{'cache':<7}{'seconds':>9}{'MB/s':>10}{'tokens/s':>12}{'verify cost':>13}")
            for r in rows:
                print(f"{r['what']:<29}{r['cache']:<7}{r['seconds']:>9.3f}{r['MB/s']:>10.1f}{r['tokens/s']:>12,}"
                      f"{r.get('verify cost', ''):>13}")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
