"""Loader throughput of the activation store, with and without verification on read.

Builds a synthetic store of ``2 x buffer`` tokens (so the shuffling loader cannot hold it;
``--store-tokens`` for a bigger one, whose longer epochs time more steadily),
then measures one epoch of

* loader (shuffled): ``Store.iter_batches(shuffle=True, buffer_tokens=buffer)``,
* loader (sequential): ``Store.iter_batches(shuffle=False)``,

each on a store opened for the run with verification off (``--no-verify``) and on (every
file checked against its recorded hash before any batch holding its data is handed out;
the default), "cold" (the store's pages evicted first) and "warm" (every file read just
before). The variants take turns within each repeat (in a rotating order), so a change of
machine load during the run falls on all of them alike; each row is the median of the
repeats. "verify cost" is the median over repeats of the verified epoch's time over the
unverified one's of the same repeat, minus one,
in wall time and in CPU time (user + system of the loading process, less sensitive to
other jobs on the machine). MB/s counts stored activation bytes (tokens x d x itemsize of
the store dtype), the same bytes for every row.

With ``--old-src DIR`` (a checkout holding ``src/diffdict``, e.g. ``git worktree add
/tmp/old-src HEAD`` made before a change) the same epochs also run on that source, taking
turns with this one's, so a change is measured side by side in one run. Each source runs
in its own worker process (``PYTHONPATH=<src>``); the parent evicts and warms the cache.

Cold cache: dropping the whole page cache needs root and slows every other job on the
machine, so the store's own pages are evicted with ``posix_fadvise(POSIX_FADV_DONTNEED)``
(on a virtual disk the host may still cache them: "cold" is the guest's page cache).

    nice -n 5 python benchmarks/loader_throughput.py --d 1280 --buffer-tokens 65536 --batch-size 4096 --threads 1 --repeat 9 --old-src /tmp/old-src
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SRC = HERE.parent.parent / "src"


# --------------------------------------------------------------------------- worker (one per source)


def worker(args) -> int:
    """Answer one JSON request per line on stdin: an epoch of the loader, or hashing every file."""
    import torch

    from diffdict.store import _expected_hash, _hash_problem, open_store

    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.store)
    for line in sys.stdin:
        request = json.loads(line)
        wall, cpu = time.perf_counter(), time.process_time()
        if request["op"] == "epoch":
            store = open_store(path, verify=request["verify"])  # a fresh store: every file is checked
            tokens = 0
            for batch in store.iter_batches("site", args.batch_size, shuffle=request["shuffle"], seed=0, epoch=0,
                                            buffer_tokens=args.buffer_tokens):
                tokens += batch.shape[0]
        else:  # "hash": the verification's own work, every file hashed on its own
            store = open_store(path)
            for record in store.manifest["chunks"]:
                entry = record["sites"]["site"]
                assert _hash_problem(path / entry["file"], _expected_hash(entry)) is None
            tokens = store.num_tokens("site")
        result = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "tokens": tokens}
        print(json.dumps(result), flush=True)
    return 0


class Worker:
    def __init__(self, src: Path, args, store: Path):
        command = [sys.executable, str(HERE), "--worker", "--store", str(store), "--batch-size", str(args.batch_size),
                   "--buffer-tokens", str(args.buffer_tokens)] + (["--threads", str(args.threads)] if args.threads else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


# --------------------------------------------------------------------------- the store and the cache


def build_store(path: Path, d: int, tokens: int, tokens_per_prompt: int, prompts_per_chunk: int, dtype: str) -> None:
    import torch

    from diffdict.store import StoreWriter

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
    """Plain sequential reads of every file (the disk / page-cache ceiling); also warms the cache."""
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


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1280)
    parser.add_argument("--buffer-tokens", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--tokens-per-prompt", type=int, default=256, help="16x16 grid like SDXL Turbo at 512px")
    parser.add_argument("--prompts-per-chunk", type=int, default=64)
    parser.add_argument("--store-tokens", type=int, default=None,
                        help="tokens in the store (default: twice the buffer); more makes each timing longer and steadier")
    parser.add_argument("--dir", default=None, help="where to build the store (default: a temp folder, removed)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per row; the median is reported")
    parser.add_argument("--old-src", default=None, help="also measure this checkout's src/ (before a change)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(SRC))
    sources = {"current": SRC}
    if args.old_src:
        old = Path(args.old_src).resolve()
        sources = {"old": old / "src" if (old / "src" / "diffdict").is_dir() else old, **sources}
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="diffdict-bench-"))
    path = root / "store"
    workers: dict[str, Worker] = {}
    try:
        tokens = args.store_tokens or 2 * args.buffer_tokens
        start = time.perf_counter()
        build_store(path, args.d, tokens, args.tokens_per_prompt, args.prompts_per_chunk, args.dtype)
        build_s = time.perf_counter() - start
        from diffdict.store import DTYPES, open_store

        store = open_store(path)
        files = [file for file, _, _ in store.shards("site")]
        n = store.num_tokens("site")
        act_bytes = n * args.d * DTYPES[args.dtype].itemsize
        workers = {name: Worker(src, args, path) for name, src in sources.items()}
        load_before = os.getloadavg()[0]

        variants = [(name, verify) for name in sources for verify in (False, True)]
        rows = []
        for cold in (True, False):
            cache = "cold" if cold else "warm"
            # references: the page-cache / disk ceiling, and hashing every file on its own
            raw, hashed = [], []
            for _ in range(args.repeat):
                if cold:
                    evict(files)
                t0 = time.perf_counter()
                raw_read(files)
                raw.append(time.perf_counter() - t0)
                if cold:
                    evict(files)
                hashed.append(workers["current"].ask(op="hash")["wall"])
            for what, times in (("raw sequential read", raw), ("hash every file", hashed)):
                seconds = float(np.median(times))
                rows.append({"what": what, "cache": cache, "seconds": round(seconds, 3),
                             "MB/s": round(act_bytes / seconds / 1e6, 1)})
            for shuffle in (True, False):
                kind = "shuffled" if shuffle else "sequential"
                results = {variant: [] for variant in variants}
                for r in range(args.repeat):
                    for i in range(len(variants)):
                        variant = variants[(i + r) % len(variants)]  # rotate who goes first
                        if cold:
                            evict(files)
                        else:
                            raw_read(files)
                        result = workers[variant[0]].ask(op="epoch", shuffle=shuffle, verify=variant[1])
                        assert result["tokens"] == n
                        results[variant].append(result)
                for name in sources:
                    for verify in (False, True):
                        wall = float(np.median([x["wall"] for x in results[(name, verify)]]))
                        cpu = float(np.median([x["cpu"] for x in results[(name, verify)]]))
                        row = {"what": f"loader {kind}" + (" verified" if verify else ""), "source": name,
                               "cache": cache, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
                               "MB/s": round(act_bytes / wall / 1e6, 1)}
                        if verify:  # the median of each repeat's own ratio: both ran back to back
                            pairs = zip(results[(name, True)], results[(name, False)])
                            ratios = [(v["wall"] / u["wall"], v["cpu"] / u["cpu"]) for v, u in pairs]
                            row["verify cost"] = f"{float(np.median([w for w, _ in ratios])) - 1:+.1%}"
                            row["verify cost (cpu)"] = f"{float(np.median([c for _, c in ratios])) - 1:+.1%}"
                        rows.append(row)

        result = {
            "store_tokens": n, "buffer_tokens": args.buffer_tokens, "d": args.d, "dtype": args.dtype,
            "batch_size": args.batch_size, "store_MB": round(sum(f.stat().st_size for f in files) / 1e6, 1),
            "shards": len(files), "buffer_MB": round(args.buffer_tokens * args.d * DTYPES[args.dtype].itemsize / 1e6, 1),
            "build_seconds": round(build_s, 2), "torch_threads": args.threads or "torch's choice", "repeat": args.repeat,
            "sources": {name: str(src) for name, src in sources.items()},
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)], "rows": rows,
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"store: {n:,} tokens x d={args.d} {args.dtype} = {result['store_MB']} MB in {len(files)} shards; "
                  f"buffer {args.buffer_tokens:,} tokens ({result['buffer_MB']} MB); batch {args.batch_size}; "
                  f"torch threads {result['torch_threads']}; median of {args.repeat}; "
                  f"load average {result['load_average'][0]} at the start, {result['load_average'][1]} at the end")
            for name, src in sources.items():
                print(f"  {name}: {src}")
            print(f"{'what':<28}{'source':<9}{'cache':<6}{'seconds':>8}{'cpu s':>8}{'MB/s':>9}"
                  f"{'verify cost':>13}{'(cpu)':>9}")
            for r in rows:
                print(f"{r['what']:<28}{r.get('source', ''):<9}{r['cache']:<6}{r['seconds']:>8.3f}"
                      f"{r['cpu_seconds'] if 'cpu_seconds' in r else '':>8}{r['MB/s']:>9.1f}"
                      f"{r.get('verify cost', ''):>13}{r.get('verify cost (cpu)', ''):>9}")
    finally:
        for w in workers.values():
            w.close()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
