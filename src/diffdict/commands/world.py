"""``diffdict world ...``: the shapes world and its shipped models (train, evaluate, render)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffdict.errors import DiffdictError


def register(subparsers) -> None:
    parser = subparsers.add_parser("world", help="the shapes world: render, train and evaluate its models")
    sub = parser.add_subparsers(dest="world_command", metavar="WORLD_COMMAND")
    sub.required = True

    p = sub.add_parser("train-model", help="train the toy text-to-image model (resumable)")
    p.add_argument("--steps", type=int, default=3500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, exported model/)")
    p.add_argument("--export", type=Path, help="also export the EMA weights to this folder (e.g. the package's weights/toy)")
    p.add_argument("--extend", action="store_true", help="continue a finished run in --out to a larger --steps")
    p.set_defaults(func=run_train_model)

    p = sub.add_parser("train-clip", help="train shapes-clip (resumable)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--export", type=Path)
    p.set_defaults(func=run_train_clip)

    p = sub.add_parser("eval-model", help="accuracy of the toy model's generations, read by shapes-clip")
    p.add_argument("--prompts", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--model-path", type=Path)
    p.add_argument("--clip-path", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_eval_model)

    p = sub.add_parser("render", help="render sampled scenes to a PNG grid and print their captions")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--split", default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_render)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise DiffdictError(f"{name} must be at least 1, got {value}")


def run_train_model(args: argparse.Namespace) -> int:
    from diffdict.models.train_toy import train_toy_model

    _positive("--batch-size", args.batch_size)
    train_toy_model(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    export_to=args.export, threads=args.threads, extend=args.extend)
    print(f"toy model written to {args.out / 'model'}")
    return 0


def run_train_clip(args: argparse.Namespace) -> int:
    from diffdict.models.train_clip import train_shapes_clip

    _positive("--batch-size", args.batch_size)
    train_shapes_clip(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      export_to=args.export, threads=args.threads)
    print(f"shapes-clip written to {args.out / 'model'}")
    return 0


def run_eval_model(args: argparse.Namespace) -> int:
    from diffdict.models import ShapesClip, ToyDiffusion
    from diffdict.models.quality import evaluate_toy_model

    _positive("--prompts", args.prompts)
    toy = ToyDiffusion.from_pretrained(args.model_path)
    clip = ShapesClip.from_pretrained(args.clip_path)
    metrics = evaluate_toy_model(toy, clip, prompts=args.prompts, seed=args.seed, steps=args.steps,
                                 guidance=args.guidance, out=args.out)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return 0


def run_render(args: argparse.Namespace) -> int:
    from diffdict.imaging import image_grid, save_png
    from diffdict.world import caption, render_batch, sample_scenes

    _positive("--count", args.count)
    scenes = sample_scenes(args.count, seed=args.seed, split=args.split)
    save_png(args.out, image_grid(render_batch(scenes, args.size), scale=max(1, 128 // args.size)))
    for i, scene in enumerate(scenes):
        print(f"{i}\t{caption(scene)}")
    return 0
