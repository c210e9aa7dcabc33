"""Collection overhead on the toy model: capture on vs plain generation.

Three ways over the same prompts, batches and seeds, interleaved ``--repeats`` times
(median reported, so background load hits all three alike):

- ``plain``: ``host.generate`` only;
- ``capture``: the same with the read hooks installed and the activations assembled per
  token with prompt id / step / row / col (``Recorder``), i.e. capture on, no disk;
- ``collect``: ``diffdict.collect.collect`` into a fresh store (capture + fp16 shards,
  checksums, fsync, images).

Target: ``capture`` at most 5% slower than ``plain``.

    nice -n 15 python benchmarks/collect_overhead.py --prompts 64 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffdict.capture import Recorder
from diffdict.collect import collect, parse_steps
from diffdict.hosts import load_host

capture_module = importlib.import_module("diffdict.capture")  # the module (diffdict.capture is the function)
from diffdict.models.toy import ToyConfig, ToyDiffusion
from diffdict.world import sample_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sites", default="mid.0,up.0.0")
    parser.add_argument("--capture", "--what", dest="capture", default="update", help="capture mode (--what: former name)")
    parser.add_argument("--steps", default="all", help="captured steps")
    parser.add_argument("--denoise-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        model = ToyDiffusion.from_pretrained()
        weights = "shipped"
    except Exception:  # weights not trained yet: same architecture, random init
        torch.manual_seed(0)
        model = ToyDiffusion(ToyConfig())
        weights = "random init"
    host = load_host("toy", model=model)
    prompts = sample_prompts(args.prompts, seed=args.seed)
    sites = args.sites.split(",")
    steps = parse_steps(args.steps, args.denoise_steps)
    batches = [list(range(i, min(i + args.batch_size, len(prompts)))) for i in range(0, len(prompts), args.batch_size)]

    def plain() -> None:
        for batch in batches:
            host.generate([prompts[i] for i in batch], seeds=[args.seed + i for i in batch], steps=args.denoise_steps)

    recorder = Recorder(host, sites, args.capture, steps)
    tokens = {"n": 0}

    def collected() -> None:
        folder = Path(tempfile.mkdtemp(prefix="diffdict-bench-"))
        try:
            collect(host, prompts, sites, folder / "store", capture=args.capture, steps=steps, seed=args.seed,
                    num_steps=args.denoise_steps, batch_size=args.batch_size, chunk_size=args.batch_size * 4,
                    progress=False)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # time spent inside the capture hooks and in assembling tokens (contention scales it
    # like everything else, so its share of the run is a steadier figure than a difference)
    in_hooks = {"s": 0.0}
    make_dispatcher = capture_module._dispatcher

    def timed_dispatcher(*a, **k):
        hook = make_dispatcher(*a, **k)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                in_hooks["s"] += time.perf_counter() - start

        return timed

    capture_module._dispatcher = timed_dispatcher
    real_take = recorder.take

    def timed_take(ids):
        start = time.perf_counter()
        try:
            return real_take(ids)
        finally:
            in_hooks["s"] += time.perf_counter() - start

    recorder.take = timed_take
    plain()  # warm-up (first calls are slow)
    # 1. capture on vs off, interleaved batch by batch (alternating which goes first), so
    #    that background load drifts hit both alike; overhead from the sums and the median
    #    of per-batch ratios
    pair_plain, pair_capture = [], []
    for r in range(args.repeats):
        for b, batch in enumerate(batches):
            order = ("plain", "capture") if (r + b) % 2 == 0 else ("capture", "plain")
            for name in order:
                start = time.perf_counter()
                if name == "plain":
                    host.generate([prompts[i] for i in batch], seeds=[args.seed + i for i in batch],
                                  steps=args.denoise_steps)
                    pair_plain.append(time.perf_counter() - start)
                else:
                    with host.hooks(recorder.hooks()):
                        host.generate([prompts[i] for i in batch], seeds=[args.seed + i for i in batch],
                                      steps=args.denoise_steps)
                        acts, _ = recorder.take(batch)
                    pair_capture.append(time.perf_counter() - start)
                    tokens["n"] += sum(a.shape[0] for a in acts.values())
    hook_seconds = in_hooks["s"]
    ratios = sorted(c / p for c, p in zip(pair_capture, pair_plain))
    # 2. whole runs: plain generation vs collect into a store (fp16 shards, checksums, fsync, images)
    times: dict[str, list[float]] = {"plain": [], "collect": []}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("collect", collected)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    tokens_per_run = tokens["n"] / args.repeats
    result = {
        "weights": weights,
        "prompts": args.prompts,
        "batch_size": args.batch_size,
        "denoise_steps": args.denoise_steps,
        "captured_steps": steps,
        "sites": sites,
        "threads": torch.get_num_threads(),
        "batch_seconds": {"plain": pair_plain, "capture": pair_capture},
        "capture_overhead_sum": sum(pair_capture) / sum(pair_plain) - 1,
        "capture_overhead_median_ratio": statistics.median(ratios) - 1,
        "capture_seconds_in_hooks": hook_seconds,
        "capture_hook_share": hook_seconds / sum(pair_plain),
        "run_seconds": times,
        "collect_overhead": median["collect"] / median["plain"] - 1,
        "tokens_per_s_collect": tokens_per_run / median["collect"],
    }
    print(f"toy model ({weights}), {args.prompts} prompts x {args.denoise_steps} steps, batch {args.batch_size}, "
          f"sites {args.sites}, capture {args.capture} at {len(steps)} step(s), {torch.get_num_threads()} thread(s), "
          f"{args.repeats} repeats")
    print(f"  batches: plain {sum(pair_plain):.2f} s, capture {sum(pair_capture):.2f} s -> capture overhead "
          f"{100 * result['capture_overhead_sum']:+.1f}% (median per-batch {100 * result['capture_overhead_median_ratio']:+.1f}%, "
          f"quartiles {100 * (ratios[len(ratios) // 4] - 1):+.1f}% .. {100 * (ratios[3 * len(ratios) // 4] - 1):+.1f}%)")
    print(f"  time inside the capture hooks and token assembly: {hook_seconds:.2f} s = "
          f"{100 * result['capture_hook_share']:.1f}% of plain generation")
    for name in times:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  whole run {name:8s} median {median[name]:7.2f} s   runs: {runs}")
    print(f"  collect into a store vs plain generation: {100 * result['collect_overhead']:+.1f}% "
          f"({result['tokens_per_s_collect']:,.0f} tokens/s collected)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
