"""``diffdict intervene``: steer a host model with one dictionary feature and measure it.

    diffdict intervene --run DICT --feature 12 --mode add --strength 5 --mask 8,8,24,24 \\
        --steps 0-3 --prompts 16 --target color:red --seed 0 --out DIR

writes ``DIR/grid.png`` (per prompt: original | edited | difference heatmap, the mask
outlined), ``DIR/control.png`` (the random-direction control, with ``--target``) and
``DIR/metrics.json`` (per image and aggregated).
"""

from __future__ import annotations

import argparse

from diffdict.errors import DiffdictError


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    from diffdict.hosts import HOSTS

    parser.add_argument("--model", default=None,
                        help=f"host model: {', '.join(HOSTS)} (default: the one the dictionary was trained on, else toy)")
    parser.add_argument("--model-path", default=None, help="toy: a saved model folder (default: shipped weights); "
                                                           "real models: a hub id or local folder")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--model-dtype", default=None, choices=["float16", "bfloat16", "float32"],
                        help="compute dtype of a real model")
    parser.add_argument("--quantize", default=None, choices=["nf4"], help="real models: load in 4-bit NF4")
    parser.add_argument("--image-size", type=int, default=None, help="real models: image size")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    source.add_argument("--prompts", help="a count (sampled from the shapes world) or a text file, one prompt a line")
    parser.add_argument("--split", default="test", help="world split when --prompts is a count (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling seed; image i's noise seed is seed + i")
    parser.add_argument("--num-steps", type=int, default=None, help="denoising steps per image (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (default: 16)")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor of the written PNGs (default: 4)")
    parser.add_argument("--out", required=True, help="output folder")


def load_host_from_args(args: argparse.Namespace, default_model: str | None = None):
    import torch

    from diffdict.hosts import host_class, load_host

    name = args.model or default_model or "toy"
    host_class(name)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "toy":
        options = {"path": args.model_path, "device": device, "dtype": args.model_dtype, "image_size": args.image_size}
    else:
        options = {"model": args.model_path, "device": device, "dtype": args.model_dtype, "quantize": args.quantize,
                   "image_size": args.image_size}
    return load_host(name, **options)


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    from diffdict.collect import read_prompts

    if args.prompt:
        return list(args.prompt)
    return read_prompts(args.prompts, seed=args.seed, split=args.split)


def check_positive(name: str, value: int) -> None:
    if value < 1:
        raise DiffdictError(f"{name} must be at least 1, got {value}")


def register(subparsers) -> None:
    from diffdict.interventions import LATENT_OPS

    parser = subparsers.add_parser(
        "intervene", help="steer a model with a dictionary feature; images and metrics",
        description="Add a feature's decoder direction to a site (--mode add) or edit its code (--mode latent), "
                    "optionally inside a pixel mask and at chosen denoising steps; writes original | edited | "
                    "difference grids and metrics.json (distances, locality, causal strength with --target).",
    )
    parser.add_argument("--run", required=True, help="dictionary folder (or a run folder with one dictionary)")
    parser.add_argument("--feature", type=int, required=True, help="feature index")
    parser.add_argument("--mode", default="add", choices=["add", "latent"], help="add (dense) or latent edit (default: add)")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="add: s in s*a_i*d_i; latent set/add: s*a_i; latent scale: the factor (default: 1)")
    parser.add_argument("--op", default="set", choices=list(LATENT_OPS), help="latent edit: set, scale or add (default: set)")
    parser.add_argument("--drop-error", action="store_true", help="latent: drop the reconstruction error (x - x_hat)")
    parser.add_argument("--activation", type=float, default=None,
                        help="the feature's typical activation a_i (default: from its feature statistics)")
    parser.add_argument("--mask", default=None, help="pixel box x0,y0,x1,y1 (end exclusive; default: the whole image)")
    parser.add_argument("--steps", default="all", help="denoising steps to edit: all, 0-3, or 0,2 (default: all)")
    parser.add_argument("--site", default=None, help="site to edit (default: the one the dictionary was trained on)")
    parser.add_argument("--what", default=None, choices=["update", "output", "mlp"],
                        help="what to edit at the site (default: what the dictionary was trained on, else update)")
    parser.add_argument("--target", default=None,
                        help="concept (e.g. color:red) or explanation text: its probability, CLIP similarity and causal strength")
    parser.add_argument("--backbone", default="auto",
                        help="shapes-clip, open-clip, none, or auto (shapes-clip when its weights are shipped; default)")
    parser.add_argument("--no-control", action="store_true", help="skip the random-direction control")
    parser.add_argument("--control-seed", type=int, default=None, help="seed of the random directions (default: --seed)")
    parser.add_argument("--locality-threshold", type=float, default=0.0,
                        help="ignore pixel changes at or below this (0..1) in the locality metric")
    add_generation_arguments(parser)
    add_host_arguments(parser)
    parser.set_defaults(func=run)


def resolve_backbone(name: str, needed: bool):
    from diffdict.metrics import backbone_available

    if name == "none":
        if needed:
            raise DiffdictError("--target needs a backbone to read it; drop --backbone none")
        return None
    if name == "auto":
        ok, reason = backbone_available("shapes-clip")
        if ok:
            return "shapes-clip"
        if needed:
            raise DiffdictError(f"--target needs a backbone, but {reason}; pass --backbone")
        print(f"note: {reason}; pixel metrics only")
        return None
    return name


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import dictionary_metadata, load_feature_stats, single_dictionary_folder
    from diffdict.interventions import Add, LatentEdit
    from diffdict.steering import format_summary, run_intervention, save_intervention_report

    check_positive("--batch-size", args.batch_size)
    check_positive("--scale", args.scale)
    folder = single_dictionary_folder(args.run)
    dictionary = load_dictionary(folder)
    stats = load_feature_stats(folder, dictionary, required=False)
    meta = dictionary_metadata(folder)
    site = args.site or meta.get("site")
    if site is None:
        raise DiffdictError(f"{folder} does not record the site it was trained on; pass --site")
    what = args.what or meta.get("what")
    backbone = resolve_backbone(args.backbone, args.target is not None)
    prompts = prompts_from_args(args)
    host = load_host_from_args(args, meta.get("model"))
    common = dict(mask=args.mask, steps=args.steps, what=what, activation=args.activation, stats=stats)
    if args.mode == "add":
        intervention = Add(site, dictionary, args.feature, args.strength, **common)
    else:
        intervention = LatentEdit(site, dictionary, args.feature, args.strength, args.op,
                                  keep_error=not args.drop_error, **common)
    report = run_intervention(
        host, intervention, prompts, seed=args.seed, num_steps=args.num_steps, guidance=args.guidance,
        target=args.target, backbone=backbone, control=not args.no_control, control_seed=args.control_seed,
        batch_size=args.batch_size, locality_threshold=args.locality_threshold,
    )
    report.settings["dictionary"] = str(folder)
    path = save_intervention_report(report, Path(args.out), scale=args.scale)
    print(format_summary(report))
    print(f"wrote {path.parent}")
    return 0
