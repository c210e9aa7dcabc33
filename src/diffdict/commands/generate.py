"""``diffdict generate``: images from prompts with the shipped toy model."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffdict.errors import DiffdictError
from diffdict.imaging import image_grid, save_png


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images from prompts with the toy model")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    source.add_argument("--prompts-file", type=Path, help="a text file with one prompt per line")
    source.add_argument("--sample", type=int, metavar="N", help="N prompts sampled from the shapes world")
    parser.add_argument("--split", default="test", help="world split for --sample (train, test, heldout, all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--model-path", type=Path, help="a toy model folder (default: the shipped weights)")
    parser.add_argument("--size", type=int, default=None, help="image size (the toy model takes 32)")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor of the written PNG")
    parser.add_argument("--out", type=Path, required=True, help="PNG file (one image, or a grid for several)")
    parser.add_argument("--out-dir", type=Path, help="also write each image as its own PNG here")
    parser.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    from diffdict.world import sample_prompts

    if args.prompt:
        return list(args.prompt)
    if args.prompts_file is not None:
        if not args.prompts_file.exists():
            raise DiffdictError(f"prompt file not found: {args.prompts_file}")
        prompts = [line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
        if not prompts:
            raise DiffdictError(f"prompt file {args.prompts_file} has no prompts")
        return prompts
    if args.sample < 1:
        raise DiffdictError(f"--sample must be at least 1, got {args.sample}")
    return sample_prompts(args.sample, seed=args.seed, split=args.split)


def run(args: argparse.Namespace) -> int:
    from diffdict.models import ToyDiffusion
    from diffdict.world import encode_prompts

    prompts = read_prompts(args)
    encode_prompts(prompts)  # fail on a bad prompt before loading anything
    model = ToyDiffusion.from_pretrained(args.model_path)
    images = []
    for start in range(0, len(prompts), 64):
        images.append(model.generate(prompts[start:start + 64], seed=args.seed + start, steps=args.steps,
                                     guidance=args.guidance, image_size=args.size))
    import numpy as np

    images = np.concatenate(images)
    grid = image_grid(images, scale=args.scale) if len(images) > 1 else image_grid(images, 1, args.scale, 0)
    save_png(args.out, grid)
    if args.out_dir is not None:
        for i, image in enumerate(images):
            save_png(args.out_dir / f"{i:05d}.png", image)
        (args.out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
    print(f"wrote {len(images)} image(s) to {args.out}")
    return 0
