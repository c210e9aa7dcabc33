"""``diffdict world ...``: the shapes world and its shipped models (train, evaluate, render)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffdict.commands import common, validate


def register(subparsers) -> None:
    parser = subparsers.add_parser("world", help="the shapes world: render, train and evaluate its models")
    sub = parser.add_subparsers(dest="world_command", metavar="WORLD_COMMAND")
    sub.required = True

    p = _training_parser(sub, "train-model", "train the toy text-to-image model (resumable)", 3500, 64, 1e-3)
    p.add_argument("--extend", action="store_true", help="continue a finished run in --out to a larger --steps")
    p.set_defaults(func=run_train_model)
    _training_parser(sub, "train-clip", "train shapes-clip (resumable)", 1500, 96, 2e-3).set_defaults(func=run_train_clip)

    p = sub.add_parser("eval-model", help="accuracy of the toy model's generations, read by shapes-clip")
    p.add_argument("--prompts", type=validate.positive_int, default=500)
    p.add_argument("--seed", type=validate.nonnegative_int, default=0)
    common.add_denoise_steps(p, "--steps", default=10, help="denoising steps per image (default: 10)")
    p.add_argument("--guidance", type=validate.finite_float(low=0), default=3.0)
    p.add_argument("--model-path", type=Path)
    p.add_argument("--clip-path", type=Path)
    p.add_argument("--out", type=validate.out_folder, required=True)
    p.set_defaults(func=run_eval_model)

    p = sub.add_parser("render", help="render sampled scenes to a PNG grid and print their captions")
    p.add_argument("--count", type=validate.positive_int, default=16)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=validate.nonnegative_int, default=0)
    p.add_argument("--size", type=validate.positive_int, default=32)
    p.add_argument("--out", type=validate.out_file, required=True)
    p.set_defaults(func=run_render)


def _training_parser(sub, name: str, help: str, steps: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help)
    p.add_argument("--steps", type=validate.positive_int, default=steps)
    p.add_argument("--batch-size", type=validate.positive_int, default=batch_size)
    p.add_argument("--lr", type=validate.finite_float(above=0), default=lr)
    p.add_argument("--seed", type=validate.nonnegative_int, default=0)
    p.add_argument("--threads", type=validate.positive_int, default=None)
    p.add_argument("--out", type=validate.out_folder, required=True, help="run folder (checkpoint, log, exported model/)")
    p.add_argument("--export", type=validate.out_folder,
                   help="also export the EMA weights to this folder (e.g. the package's weights/toy)")
    return p


def run_train_model(args: argparse.Namespace) -> int:
    from diffdict.models.train_toy import train_toy_model

    train_toy_model(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    export_to=args.export, threads=args.threads, extend=args.extend)
    print(f"toy model written to {args.out / 'model'}")
    return 0


def run_train_clip(args: argparse.Namespace) -> int:
    from diffdict.models.train_clip import train_shapes_clip

    train_shapes_clip(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      export_to=args.export, threads=args.threads)
    print(f"shapes-clip written to {args.out / 'model'}")
    return 0


def run_eval_model(args: argparse.Namespace) -> int:
    from diffdict.models import ShapesClip, ToyDiffusion
    from diffdict.models.quality import evaluate_toy_model

    toy = ToyDiffusion.from_pretrained(args.model_path)
    clip = ShapesClip.from_pretrained(args.clip_path)
    metrics = evaluate_toy_model(toy, clip, prompts=args.prompts, seed=args.seed, steps=args.denoise_steps,
                                 guidance=args.guidance, out=args.out)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return 0


def run_render(args: argparse.Namespace) -> int:
    from diffdict.imaging import image_grid, save_png
    from diffdict.world import caption, render_batch, sample_scenes

    scale = max(1, 128 // args.size)
    # the rendered images, their concept masks and the upscaled grid, all held at once
    validate.require_memory(args.count * args.size ** 2 * (3 * (1 + scale ** 2) + 16),
                            f"world render --count {args.count} --size {args.size}")
    scenes = sample_scenes(args.count, seed=args.seed, split=args.split)
    save_png(args.out, image_grid(render_batch(scenes, args.size), scale=scale))
    for i, scene in enumerate(scenes):
        print(f"{i}\t{caption(scene)}")
    return 0
