"""``diffdict intervene``: edit a host model's site with a dictionary and measure it.

    diffdict intervene --run DICT --feature 12 --mode add --strength 5 --mask 8,8,24,24 \\
        --steps 0-3 --prompts 16 --target color:red --seed 0 --out DIR

Modes: ``add`` (s * a_i * d_i), ``latent`` (edit feature i's code), ``splice`` (the site
replaced by the dictionary's reconstruction), ``ablate`` (the block's update scaled by
``--ablate-scale``, 0 removes it) and ``icon`` (the empty prompt with the site replaced
by the feature direction). The host is rebuilt as the dictionary's store recorded it
(model folder, image size, dtype), and a feature's typical activation comes from its
feature statistics, computed from that store on first use and cached with the dictionary.

writes ``DIR/grid.png`` (per prompt: original | edited | difference heatmap, the mask
outlined), ``DIR/control.png`` (the random-direction control, with ``--target``) and
``DIR/metrics.json`` (per image and aggregated).
"""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate
from diffdict.errors import DiffdictError
from diffdict.options import flag


#: the options each mode reads (beyond site, mask, steps and capture); the rest are refused
MODE_OPTIONS = {
    "add": ("feature", "strength", "activation"),
    "latent": ("feature", "strength", "activation", "op", "drop_error"),
    "splice": (),
    "ablate": ("ablate_scale",),
    "icon": ("feature", "strength", "activation", "count"),
}
_MODE_DEFAULTS = {"strength": 1.0, "op": "set", "drop_error": False, "ablate_scale": 0.0, "count": 4}


def register(subparsers) -> None:
    from diffdict.interventions import LATENT_OPS, MODES

    parser = subparsers.add_parser(
        "intervene", help="edit a model's site with a dictionary (add, latent, splice, ablate, icon); images and metrics",
        description="Add a feature's decoder direction to a site (--mode add), edit its code (latent), replace the "
                    "site by the dictionary's reconstruction (splice), remove the block's update (ablate) or draw the "
                    "feature's icon (icon: the empty prompt, the site replaced by the feature direction); optionally "
                    "inside a pixel mask and at chosen denoising steps. Writes original | edited | difference grids "
                    "and metrics.json (distances, locality, causal strength with --target).",
    )
    parser.add_argument("--run", default=None,
                        help="dictionary folder (or a run folder with one dictionary); every mode but ablate")
    parser.add_argument("--mode", default="add", choices=list(MODES), help="the edit (default: add)")
    parser.add_argument("--feature", type=int, default=None, help="add, latent, icon: feature index")
    parser.add_argument("--strength", type=float, default=None,
                        help="add, icon: s in s*a_i*d_i; latent set/add: s*a_i; latent scale: the factor (default: 1)")
    parser.add_argument("--op", default=None, choices=list(LATENT_OPS), help="latent: set, scale or add (default: set)")
    parser.add_argument("--drop-error", action="store_true", default=None,
                        help="latent: drop the reconstruction error (x - x_hat)")
    parser.add_argument("--activation", type=float, default=None,
                        help="add, latent, icon: the feature's typical activation a_i (default: from its feature "
                             "statistics, computed from the dictionary's store when missing)")
    parser.add_argument("--ablate-scale", type=float, default=None,
                        help="ablate: factor on the block's update (default: 0, removing it)")
    parser.add_argument("--count", type=validate.positive_int, default=None,
                        help="icon without --prompt/--prompts: images of the empty prompt (default: 4)")
    parser.add_argument("--store", default=None,
                        help="store to compute feature statistics from (default: the one the dictionary was trained on)")
    parser.add_argument("--mask", default=None, help="pixel box x0,y0,x1,y1 (end exclusive; default: the whole image)")
    parser.add_argument("--steps", default="all", help="denoising steps to edit: all, 0-3, or 0,2 (default: all)")
    parser.add_argument("--site", default=None, help="site to edit (default: the one the dictionary was trained on)")
    common.add_capture_option(parser, None, "capture mode to edit at the site: update, output or mlp (default: "
                                              "the one the dictionary was trained on, else update)")
    parser.add_argument("--target", default=None,
                        help="what the edit should bring about: a shapes-world concept (color:red) or free text "
                             "('a photo of a dog', read by the CLIP backbone on real models): its probability, "
                             "CLIP similarity and causal strength")
    parser.add_argument("--backbone", default="auto",
                        help="shapes-clip, open-clip, clip (a transformers CLIP model), none, or auto (default: "
                             "shapes-clip on the toy model, open-clip on real models when installed)")
    parser.add_argument("--backbone-path", default=None,
                        help="clip: a CLIP folder or hub id (default: openai/clip-vit-base-patch32); "
                             "shapes-clip: a shapes-clip folder")
    parser.add_argument("--no-control", action="store_true", help="skip the random-direction control")
    parser.add_argument("--control-seed", type=int, default=None, help="seed of the random directions (default: --seed)")
    parser.add_argument("--locality-threshold", type=float, default=0.0,
                        help="ignore pixel changes at or below this (0..1) in the locality metric")
    common.add_generation_arguments(parser, required=False)
    common.add_host_arguments(parser)
    parser.set_defaults(func=run)


def check_mode_options(args: argparse.Namespace) -> None:
    """Refuse options the mode does not read, fill in the defaults of those it does."""
    wanted = MODE_OPTIONS[args.mode]
    count_given = args.count is not None
    for option in ("feature", "strength", "activation", "op", "drop_error", "ablate_scale", "count"):
        value = getattr(args, option)
        if value is not None and option not in wanted:
            takes = ", ".join(map(flag, wanted)) or "no feature options"
            raise DiffdictError(f"{flag(option)} does not apply to --mode {args.mode} (it takes {takes})")
        if value is None and option in _MODE_DEFAULTS:
            setattr(args, option, _MODE_DEFAULTS[option])
    if "feature" in wanted and args.feature is None:
        raise DiffdictError(f"--mode {args.mode} needs --feature N")
    if args.mode != "ablate" and args.run is None:
        raise DiffdictError(f"--mode {args.mode} needs --run DICT (a dictionary folder)")
    if args.mode != "icon" and not (args.prompt or args.prompts):
        raise DiffdictError(f"--mode {args.mode} needs prompts: --prompt TEXT or --prompts N|FILE")
    if count_given and (args.prompt or args.prompts):
        raise DiffdictError("--count gives the number of empty-prompt icons; drop it with --prompt/--prompts")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffdict.capture import capture_mode_of
    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import (dictionary_metadata, ensure_feature_stats, load_feature_stats, recorded_host,
                                        recorded_store, require_recorded_store, single_dictionary_folder)
    from diffdict.hosts import DEFAULT_HOST
    from diffdict.interventions import MODES, Ablate, LatentEdit, Splice
    from diffdict.io import claim_output_folder
    from diffdict.metrics.backbones import load_backbone, resolve_backbone
    from diffdict.interventions.experiments import format_summary, run_intervention, save_intervention_report

    check_mode_options(args)
    claim_output_folder(args.out, "intervene", own_files=("metrics.json",))
    folder = dictionary = None
    meta: dict = {}
    recorded: dict = {}
    if args.run is not None:
        folder = single_dictionary_folder(args.run)
        dictionary = load_dictionary(folder)
        meta = dictionary_metadata(folder)
        recorded = recorded_host(folder)
    site = args.site or meta.get("site")
    if site is None and folder is not None and recorded_store(folder) is not None:
        require_recorded_store(folder)  # the site is unknown because the store moved: say that
    if site is None:
        raise DiffdictError(f"{folder or '--mode ablate'} records no site to edit; pass --site")
    capture = args.capture or capture_mode_of(meta)
    host_name = args.model or recorded.get("model") or meta.get("model") or DEFAULT_HOST
    backbone = resolve_backbone(args.backbone, host_name, needed=args.target is not None)
    if args.backbone_path is not None:
        if backbone not in ("clip", "shapes-clip"):
            raise DiffdictError(f"--backbone-path applies to --backbone clip or shapes-clip, not {backbone}")
        backbone = load_backbone(backbone, path=args.backbone_path)
    prompts = common.prompts_from_args(args) if (args.prompt or args.prompts) else [""] * args.count
    stats = None
    if folder is not None:
        needs_activation = args.mode in ("add", "icon") or (args.mode == "latent" and args.op != "scale")
        if needs_activation and args.activation is None:
            stats = ensure_feature_stats(folder, dictionary, store=args.store, site=meta.get("site"))
        else:
            stats = load_feature_stats(folder, dictionary, required=False)
    host = common.host_from_args(args, meta.get("model"), recorded if host_name == recorded.get("model") else None)
    if host.name == recorded.get("model"):  # generate as the store did unless told otherwise
        generation = recorded.get("generation") or {}
        args.denoise_steps = args.denoise_steps if args.denoise_steps is not None else generation.get("num_steps")
        args.guidance = args.guidance if args.guidance is not None else generation.get("guidance")
    if not host.shapes_world and args.prompts and not args.prompt and str(args.prompts).strip().isdigit():
        print(f"note: --prompts {args.prompts} samples shapes-world captions; give real prompts with --prompt or a file")
    placement = dict(mask=args.mask, steps=args.steps, capture=capture)
    feature = dict(activation=args.activation, stats=stats)
    if args.mode in ("add", "icon"):
        intervention = MODES[args.mode](site, dictionary, args.feature, args.strength, **feature, **placement)
    elif args.mode == "latent":
        intervention = LatentEdit(site, dictionary, args.feature, args.strength, args.op,
                                  keep_error=not args.drop_error, **feature, **placement)
    elif args.mode == "splice":
        intervention = Splice(site, dictionary, stats=stats, **placement)
    else:
        intervention = Ablate(site, args.ablate_scale, **placement)
    report = run_intervention(
        host, intervention, prompts, seed=args.seed, num_steps=args.denoise_steps, guidance=args.guidance,
        target=args.target, backbone=backbone, control=not args.no_control, control_seed=args.control_seed,
        batch_size=args.batch_size, locality_threshold=args.locality_threshold,
    )
    report.settings["dictionary"] = str(folder) if folder is not None else None
    path = save_intervention_report(report, Path(args.out), scale=args.scale)
    print(format_summary(report))
    print(f"wrote {path.parent}")
    return 0
