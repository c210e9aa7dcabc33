"""``diffdict collect``: capture site activations of a host model into an activation store.

    diffdict collect --model toy --sites mid.0,up.0.0 --prompts 20000 --capture update \\
        --steps 0 --seed 0 --out STORE
    torchrun --nproc_per_node=N -m diffdict collect ...   # chunks split by rank

Rerunning the same command resumes (complete chunks are skipped); a different model,
site set or capture setting on the same STORE is refused. ``--what`` is the former
name of ``--capture`` and still works.
"""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate
from diffdict.errors import DiffdictError


def register(subparsers) -> None:
    from diffdict.hosts import DEFAULT_HOST
    from diffdict.store import DTYPES

    parser = subparsers.add_parser(
        "collect", help="capture site activations of a model over prompts into a store (resumable)",
        description="Capture what chosen sites of a text-to-image model compute, over many prompts, into a "
                    "sharded, resumable activation store. Run under torchrun to split the work by rank.",
    )
    common.add_host_arguments(parser, DEFAULT_HOST)
    parser.add_argument("--sites", required=True, help="comma-separated sites, e.g. mid.0,up.0.0")
    parser.add_argument("--prompts", required=True,
                        help="a count (sampled from the shapes world) or a text file with one prompt a line")
    parser.add_argument("--split", default="train", help="world split when --prompts is a count (default: train)")
    common.add_capture_option(parser, "update", "capture mode: update (block output - input), output "
                                                  "(residual stream) or mlp (neurons) (default: update)")
    parser.add_argument("--steps", default="all", help="denoising steps to capture: all, 0-3, or 0,2 (default: all)")
    common.add_denoise_steps(parser)
    parser.add_argument("--guidance", type=validate.finite_float(low=0), default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--seed", type=validate.nonnegative_int, default=0, help="prompt sampling seed; prompt i's noise seed is seed + i")
    parser.add_argument("--out", required=True, type=validate.out_folder, help="store folder (created, or resumed)")
    parser.add_argument("--dtype", default="float16", choices=list(DTYPES), help="stored dtype (default: float16)")
    parser.add_argument("--batch-size", type=validate.positive_int, default=16, help="prompts per generation batch (default: 16)")
    parser.add_argument("--chunk-size", type=validate.positive_int, default=64, help="prompts per store chunk (default: 64)")
    parser.add_argument("--no-images", action="store_true", help="do not keep the generated images")
    common.add_progress_option(parser)
    parser.set_defaults(func=run)


def host_options(args: argparse.Namespace, local_rank: int = 0) -> dict:
    import torch

    device = args.device
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return {"model": args.model_path, "device": device, "dtype": args.model_dtype, "quantize": args.quantize,
            "image_size": args.image_size}


def run(args: argparse.Namespace) -> int:
    from diffdict.collect import collect, distributed_from_env, read_prompts
    from diffdict.hosts import host_class, load_host

    host_class(args.model)  # unknown model: fail before reading anything
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    if not sites:
        raise DiffdictError(f"no sites given in --sites {args.sites!r}")
    prompts = read_prompts(args.prompts, seed=args.seed, split=args.split)
    dist = distributed_from_env()
    try:
        host = load_host(args.model, **host_options(args, dist.local_rank))
        info = collect(
            host, prompts, sites, args.out, capture=args.capture, steps=args.steps, seed=args.seed,
            num_steps=args.denoise_steps, guidance=args.guidance, dtype=args.dtype, chunk_size=args.chunk_size,
            batch_size=args.batch_size, images=not args.no_images, progress=args.progress, dist=dist,
        )
    finally:
        dist.close()
    if info is not None:
        tokens = ", ".join(f"{site} {n:,}" for site, n in info["tokens"].items())
        print(f"wrote {args.out}: {info['n_prompts']} prompts; tokens {tokens}; digest {info['digest']}")
    return 0
