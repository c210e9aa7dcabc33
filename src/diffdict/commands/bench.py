"""``diffdict bench``: the ground-truth benchmark of one dictionary at a site of the toy model.

    diffdict bench --run DICT [--site up.1.1] [--store STORE | --prompts 256] [--compare RUN2,RUN3] --out DIR

Writes ``DIR/bench.json`` (every score, per concept and per feature), ``DIR/table.md``
and plots (``detection.png``, ``steering.png``). Without ``--store`` it first collects
``--prompts`` held-out (test-split) prompts at the site into ``DIR/store`` (resumable).
"""

from __future__ import annotations

import argparse

from diffdict.commands import validate
from diffdict.errors import DiffdictError

#: what a benchmark folder holds (an earlier run's folder is reused)
OUTPUTS = ("bench.json", "table.md", "detection.png", "steering.png", "store")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="ground-truth benchmark: detection, purity, absorption, steering, erasure, fidelity, stability",
        description="Score a dictionary against the shapes world's ground truth at a site of the toy model, beside "
                    "a random-init twin and the site's raw basis, each score with a 95%% interval. Reads a "
                    "diffdict, SAE Lens or sparsify dictionary folder.",
    )
    parser.add_argument("--run", required=True, help="dictionary folder (diffdict, SAE Lens or sparsify)")
    parser.add_argument("--site", default=None, help="toy-model site (default: the one the dictionary records)")
    parser.add_argument("--store", default=None, help="a held-out store with images at the site (default: collect one)")
    parser.add_argument("--prompts", type=validate.positive_int, default=256, help="test-split prompts collected without --store (default: 256)")
    parser.add_argument("--compare", default=None,
                        help="comma-separated dictionaries of the same configuration, other seeds (stability)")
    parser.add_argument("--concepts", default=None,
                        help="concepts steered and erased (default: every colour, shape, background colour, texture)")
    parser.add_argument("--steer-prompts", type=int, default=32, help="prompts per steered concept (default: 32)")
    parser.add_argument("--strengths", default="1,2,4", help="steering strengths s, comma-separated (adds s * n * d, "
                        "n the norm of the concept's supervised direction, d a unit direction; default: 1,2,4; "
                        "with several, each prompt is scored at the strength chosen on the other half)")
    parser.add_argument("--steer-feature", choices=("writer", "reader", "both"), default="writer",
                        help="the feature steered per concept: the one closest to the concept's direction (writer, "
                             "default), the one detection chose (reader), or the one that does both best: the "
                             "largest cosine x selection-half F1 (both)")
    parser.add_argument("--erase-prompts", type=int, default=16, help="prompts per erased concept (default: 16)")
    parser.add_argument("--fidelity-prompts", type=int, default=16, help="prompts for spliced fidelity (default: 16)")
    parser.add_argument("--baselines", default="random-init,raw-basis", help="baselines (default: random-init,raw-basis)")
    parser.add_argument("--no-causal", action="store_true", help="skip the scores that generate images")
    parser.add_argument("--model-path", default=None, help="toy model folder (default: the one the store recorded, else the shipped weights)")
    parser.add_argument("--batch-size", type=validate.positive_int, default=64, help="images per generation batch (default: 64)")
    parser.add_argument("--threads", type=validate.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt split, prompts, noise and controls")
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(func=run)


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiffdictError(f"{name} must be comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from diffdict.bench import BenchConfig, run_bench, write_bench
    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import dictionary_metadata
    from diffdict.hosts import is_real_host
    from diffdict.io import claim_output_folder
    from diffdict.store import open_store

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    concepts = None if args.concepts is None else [c.strip() for c in args.concepts.split(",") if c.strip()]
    config = BenchConfig(seed=args.seed, causal=not args.no_causal, steer_prompts=args.steer_prompts,
                         strengths=_floats(args.strengths, "--strengths"), erase_prompts=args.erase_prompts,
                         fidelity_prompts=args.fidelity_prompts, batch_size=args.batch_size,
                         steer_feature=args.steer_feature,
                         baselines=[b.strip() for b in args.baselines.split(",") if b.strip()],
                         **({"concepts": concepts} if concepts is not None else {}))
    dictionary = load_dictionary(args.run)
    out = claim_output_folder(args.out, "bench", own_files=OUTPUTS)
    others = [load_dictionary(p.strip()) for p in (args.compare or "").split(",") if p.strip()]
    site = args.site or dictionary_metadata(args.run).get("site")
    if site is None:
        raise DiffdictError(f"{args.run} does not record its site; give --site (e.g. up.1.1)")
    host = None
    if args.store is None:
        if not isinstance(args.prompts, int) or args.prompts < 4:
            raise DiffdictError(f"--prompts must be at least 4, got {args.prompts}")
        host = _toy_host(args.model_path)
        if site not in host.sites():
            raise DiffdictError(f"unknown site {site!r} of the toy model; expected one of {', '.join(host.sites())}")
        from diffdict.collect import collect
        from diffdict.world import sample_prompts

        prompts = sample_prompts(args.prompts, seed=args.seed + 1, split="test")
        collect(host, prompts, [site], out / "store", seed=args.seed + 1, dtype="float32", images=True, progress=False)
        store = open_store(out / "store")
    else:
        store = open_store(args.store)
        if is_real_host(store.settings.get("model")):
            raise DiffdictError(f"store {args.store} was made by model {store.settings.get('model')!r}; the benchmark "
                                f"scores against the shapes world's ground truth, which only the toy model draws")
        if site not in store.sites:
            raise DiffdictError(f"unknown site {site!r}; the store {args.store} has {', '.join(store.sites)}")
    judge = None
    if config.causal:
        from diffdict.metrics import load_backbone

        if host is None:  # the toy model the store recorded (its weights checked), else the given or shipped one
            from diffdict.hosts import host_for_store

            host = host_for_store(store, args.model_path) if store.settings.get("model") else _toy_host(args.model_path)
        judge = load_backbone("shapes-clip")
    results = run_bench(dictionary, store, site, config, host=host, judge=judge, others=others,
                        log=lambda line: print(line, flush=True))
    results["run"] = str(args.run)
    write_bench(results, out)
    summary = results["dictionary"]["summary"]
    print(f"{out / 'bench.json'}: detection F1 token {summary['token_f1']['mean']:.3f}, image {summary['image_f1']['mean']:.3f}; "
          f"purity {summary['token_purity']['mean']:.3f}" +
          (f"; steering {summary['steer_feature']['mean']:.3f} (random {summary['steer_random']['mean']:.3f})"
           if "steer_feature" in summary else ""))
    return 0


def _toy_host(model_path):
    from diffdict.hosts import load_host

    return load_host("toy", model=model_path)
