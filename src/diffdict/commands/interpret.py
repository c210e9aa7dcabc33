"""``diffdict interpret``: feature statistics, top images with heatmaps, explanations and scores."""

from __future__ import annotations

import argparse
import sys

from diffdict.commands import common, validate


def register(subparsers) -> None:
    from diffdict.interpret.base import EXPLAINERS, SCORERS
    import diffdict.interpret  # noqa: F401  (registers the built-in explainers and scorers)

    parser = subparsers.add_parser(
        "interpret", help="top images with heatmaps, automated explanations and scores per feature",
        description="One streaming pass over a store (frequency, histogram, top-N images per feature with their "
                    "activation maps), then an explainer and scorers per feature. Writes OUT/interpret.json, "
                    "OUT/features/fNNNNNN.json (one record per feature) and OUT/images/*.png.")
    parser.add_argument("--run", required=True, metavar="DICT", help="dictionary folder (or a training run)")
    parser.add_argument("--member", help="the dictionary of a run with several members")
    parser.add_argument("--store", metavar="STORE",
                        help="activation store with images (default: the one the dictionary was trained on)")
    parser.add_argument("--site", help="site of the store (default: the dictionary's, or the one of matching width)")
    parser.add_argument("--out", required=True, metavar="DIR", type=validate.out_folder, help="output folder")
    parser.add_argument("--explainer", default="auto",
                        help=f"explainer: {', '.join(sorted(EXPLAINERS))}, 'none', or 'auto' (default: the concept "
                             "oracle on shapes-world stores, none on real models)")
    parser.add_argument("--scorer", default="auto",
                        help=f"comma-separated scorers: {', '.join(sorted(SCORERS))}, '' for none, or 'auto' "
                             "(default: concept-oracle on shapes-world stores, none on real models)")
    parser.add_argument("--features", help="features to interpret, e.g. 0,5,10-20 (default: every feature that fires)")
    parser.add_argument("--max-features", type=validate.positive_int, help="a seeded random sample of this many firing features")
    parser.add_argument("--top-n", type=validate.positive_int, default=16, help="top images kept per feature (default 16)")
    parser.add_argument("--rank-by", choices=("max", "mean"), default="max",
                        help="rank an image by the max or the mean of the feature over its token grid")
    parser.add_argument("--min-active", type=validate.positive_int, default=1,
                        help="an image counts only if the feature fires on at least this many of its tokens")
    parser.add_argument("--icons", action="store_true",
                        help="also draw each feature's icon and an 'add' gallery (runs the store's host model)")
    parser.add_argument("--model-path", help="host model folder for --icons (default: the one the store records)")
    vlm = parser.add_argument_group("vlm explainer and judge (any OpenAI-compatible chat endpoint with images)")
    vlm.add_argument("--vlm-url", help="base URL, e.g. http://127.0.0.1:8000/v1 (vLLM) or https://openrouter.ai/api/v1")
    vlm.add_argument("--vlm-model", help="model name")
    vlm.add_argument("--vlm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    vlm.add_argument("--vlm-cache", help="reply cache folder (default OUT/vlm-cache): a rerun costs nothing")
    vlm.add_argument("--vlm-rpm", type=validate.finite_float(low=0), help="at most this many requests per minute (default 60)")
    vlm.add_argument("--vlm-timeout", type=validate.finite_float(low=0.001), help="seconds per request (default 60)")
    vlm.add_argument("--vlm-retries", type=validate.nonnegative_int, help="retries on 429, 5xx, timeouts and malformed replies (default 5)")
    parser.add_argument("--clip-path", help="shapes-clip folder for the clip scorer (default: the shipped weights)")
    parser.add_argument("--seed", type=validate.nonnegative_int, default=0,
                        help="seed of the feature sample and of the detection examples")
    common.add_verify_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffdict.interpret.run import interpret

    explainer = None if args.explainer in ("", "none") else args.explainer
    scorers = [s.strip() for s in (args.scorer or "").split(",") if s.strip() and s.strip() != "none"]
    options = {"base_url": args.vlm_url, "model": args.vlm_model, "api_key_env": args.vlm_key_env,
               "cache_dir": args.vlm_cache, "requests_per_minute": args.vlm_rpm, "timeout": args.vlm_timeout,
               "max_retries": args.vlm_retries}
    clip = None
    if "clip" in scorers and args.clip_path:
        from diffdict.models.shapes_clip import ShapesClip

        clip = ShapesClip.from_pretrained(args.clip_path)
    store = args.store
    if store is None:
        from diffdict.feature_stats import require_recorded_store
        from diffdict.interpret.run import resolve_run

        store = require_recorded_store(resolve_run(args.run, args.member))
    from diffdict.io import claim_output_folder

    claim_output_folder(args.out, "interpret", own_files=("interpret.json", "features", "stats"))
    with common.verifying(args.no_verify):
        index = interpret(
            args.run, store, args.out, explainer=explainer, scorers=scorers, site=args.site, member=args.member,
            features=args.features, max_features=args.max_features, top_n=args.top_n, rank_by=args.rank_by,
            min_active=args.min_active, icons=args.icons, model_path=args.model_path, seed=args.seed,
            options={k: v for k, v in options.items() if v is not None}, clip=clip,
            progress=(lambda message: print(message, file=sys.stderr)) if sys.stderr.isatty() else None,
        )
    rows = index["features"]
    print(f"interpreted {len(rows)} features of {index['run']} at {index['site']} "
          f"({index['num_images']} images); records in {args.out}/features, summary {args.out}/interpret.json")
    for name in index["settings"]["scorers"]:
        values = [r["scores"].get(name) for r in rows if r["scores"].get(name) is not None]
        if values:
            print(f"  {name}: mean score {sum(values) / len(values):.3f} over {len(values)} features")
    return 0
