"""Images per second of the toy model generating the same edited rows in one call
against calls of a few rows each (the benchmark's steering makes one call per concept,
strength and method). Run side by side, alternating. On the 2-core CPU the difference was
within noise (1.01x-1.03x), which is why steering keeps its simpler per-concept calls.

    python benchmarks/generation_batching.py --rows 72 --group 6 --repeat 2 --seed 0
"""

from __future__ import annotations

import argparse
import time

import torch

from diffdict.bench.steering import RowwiseAdd
from diffdict.hosts import load_host
from diffdict.interventions import generate
from diffdict.world import sample_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=72)
    parser.add_argument("--group", type=int, default=6, help="rows per call in the per-group run")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch of the one-call run")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--site", default="up.1.1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    host = load_host("toy")
    d = host.site(args.site).d
    prompts = sample_prompts(args.rows, seed=args.seed, split="test")
    seeds = [args.seed + i for i in range(args.rows)]
    deltas = torch.randn(args.rows, d, generator=torch.Generator().manual_seed(args.seed))

    def one_call():
        return generate(host, prompts, [RowwiseAdd(args.site, deltas=deltas)], seeds=seeds, batch_size=args.batch_size)

    def per_group():
        out = []
        for start in range(0, args.rows, args.group):
            rows = slice(start, start + args.group)
            out.append(generate(host, prompts[rows], [RowwiseAdd(args.site, deltas=deltas[rows])], seeds=seeds[rows],
                                batch_size=args.batch_size))
        return out

    times = {"one call": [], f"calls of {args.group}": []}
    for _ in range(args.repeat):
        for name, run in (("one call", one_call), (f"calls of {args.group}", per_group)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    for name, t in best.items():
        print(f"{name:>12}: {args.rows / t:6.2f} images/s (best of {args.repeat})")
    print(f"ratio: {best[f'calls of {args.group}'] / best['one call']:.2f}x faster in one call")


if __name__ == "__main__":
    main()
