"""``diffdict evaluate``: reconstruction metrics and spliced fidelity of every dictionary
of a training run.

    diffdict evaluate --run RUN --acts STORE|acts.npy [--site mid.0] [--fidelity-prompts 16] --out metrics.json
"""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="mse, fvu, explained variance, l0, dead fraction and spliced fidelity of each dictionary of a run",
        description="Evaluate every dictionary of a training run on activations (in their stored order). "
                    "When the activations are a store made by a host model, also generate images with the "
                    "site replaced by each dictionary's reconstruction and compare them with the originals "
                    "(pixel distances, perceptual distance, shapes-clip CLIP-score drop).",
    )
    parser.add_argument("--run", required=True, help="training run folder (diffdict train --out)")
    parser.add_argument("--acts", required=True, help="a store folder, or an (N, d) .npy / .safetensors file")
    parser.add_argument("--site", default=None, help="the store site (required when the store has several)")
    parser.add_argument("--out", required=True, type=validate.out_file, help="JSON file for the metrics")
    parser.add_argument("--batch-size", type=validate.positive_int, default=4096, help="tokens per batch (default: 4096)")
    parser.add_argument("--max-tokens", type=validate.positive_int, default=None, help="evaluate on the first this many tokens")
    parser.add_argument("--fidelity-prompts", type=validate.nonnegative_int, default=None,
                        help="spliced fidelity on this many test prompts (default: 16 when the store records "
                             "a host model; 0 skips it)")
    parser.add_argument("--model-path", default=None, help="host model weights for spliced fidelity "
                        "(default: the ones the store records)")
    parser.add_argument("--seed", type=validate.nonnegative_int, default=0, help="seed of the fidelity prompts and noise")
    common.add_verify_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffdict.evaluate import evaluate_run
    from diffdict.io import write_json

    with common.verifying(args.no_verify):
        results = evaluate_run(args.run, args.acts, site=args.site, batch_size=args.batch_size,
                               max_tokens=args.max_tokens, fidelity_prompts=args.fidelity_prompts, seed=args.seed,
                               model_path=args.model_path)
    write_json(args.out, {"run": str(args.run), "acts": str(args.acts), "site": args.site, "members": results})
    for name, metrics in results.items():
        line = f"{name}: fvu {metrics['fvu']:.4f}  l0 {metrics['l0']:.1f}  dead {metrics['dead_fraction']:.3f}"
        if "spliced_pixel_mae" in metrics:
            line += f"  spliced mae {metrics['spliced_pixel_mae']:.4f}"
        if "clip_score_drop" in metrics:
            line += f"  clip drop {metrics['clip_score_drop']:.4f}"
        print(line)
    return 0
