"""``diffdict app``: the interactive feature app (Gradio; the ``app`` extra)."""

from __future__ import annotations

import argparse

from diffdict.commands import validate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "app", help="interactive app: prompt -> image with its most active features; paint a feature in",
        description="A Gradio app (install the 'app' extra: pip install 'diffdict[app]'). Bound to 127.0.0.1 "
                    "unless --host says otherwise.")
    parser.add_argument("--run", required=True, metavar="DICT", help="dictionary folder (or a training run)")
    parser.add_argument("--member", help="the dictionary of a run with several members")
    parser.add_argument("--store", metavar="STORE", help="the store it was trained on (site, host model, top images)")
    parser.add_argument("--interpret", metavar="DIR", help="an output folder of 'diffdict interpret' (top images, explanations)")
    parser.add_argument("--site", help="site to read and edit (default: the dictionary's)")
    parser.add_argument("--model", default=None, help="host model (default: the store's, else toy)")
    parser.add_argument("--model-path", help="host model folder (default: the store's / the shipped toy weights)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=validate.int_at_least(1, 65535), default=7860)
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    parser.add_argument("--seed", type=validate.nonnegative_int, default=0, help="noise seed of generated images")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffdict.report.app import build_app, launch_app, require_gradio

    require_gradio()
    app = build_app(args.run, store=args.store, interpret_dir=args.interpret, site=args.site, member=args.member,
                    model=args.model, model_path=args.model_path, seed=args.seed)
    print(f"diffdict app on http://{args.host}:{args.port} (Ctrl-C to stop)")
    launch_app(app, args.host, args.port, share=args.share)
    return 0
