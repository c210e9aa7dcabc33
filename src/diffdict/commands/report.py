"""``diffdict report``: the static HTML feature browser."""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a static HTML feature browser (opens from disk)",
        description="Writes OUT/index.html (a sortable, filterable table of features) and a page per feature "
                    "(top images with heatmaps, icon, interventions, histogram, scores).")
    parser.add_argument("--run", required=True, metavar="DICT", help="dictionary folder (or a training run)")
    parser.add_argument("--member", help="the dictionary of a run with several members")
    parser.add_argument("--out", required=True, metavar="DIR", type=validate.out_folder, help="output folder of the site")
    parser.add_argument("--interpret", metavar="DIR", help="an output folder of 'diffdict interpret'")
    parser.add_argument("--store", metavar="STORE",
                        help="without --interpret: compute statistics and top images from this store "
                             "(default: the one the dictionary was trained on)")
    parser.add_argument("--site", help="site of the store (with --store)")
    parser.add_argument("--top-n", type=validate.positive_int, default=16, help="top images per feature (with --store)")
    parser.add_argument("--seed", type=validate.nonnegative_int, default=0,
                        help="unused by the site itself (kept for uniformity)")
    common.add_verify_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from diffdict.report.site import build_report

    from diffdict.io import claim_output_folder

    claim_output_folder(args.out, "report", own_files=("index.html",))
    with common.verifying(args.no_verify):
        index = build_report(args.run, args.out, interpret_dir=args.interpret, store=args.store, site=args.site,
                             member=args.member, seed=args.seed, top_n=args.top_n,
                             progress=(lambda message: print(message, file=sys.stderr)) if sys.stderr.isatty() else None)
    print(f"wrote {index} (open it in a browser; no server needed)")
    return 0
