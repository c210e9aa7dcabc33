"""``diffdict generate``: images from prompts with any host model.

    diffdict generate --prompt "a red circle at the left" --out grid.png              # the toy model
    diffdict generate --model sdxl-turbo --model-path DIR --prompt "a photo of a dog" --out dog.png

The toy model takes shapes-world captions only (its vocabulary is checked before
anything loads); real models take free text, checked against their tokenizers.
"""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate
from diffdict.imaging import display_scale, image_grid, save_png


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="generate images from prompts (toy, sd, sdxl-turbo, sdxl, flux-schnell)",
        description="Generate images with a host model: the shipped toy model (shapes-world captions), or a real "
                    "one (free text) from a hub id or a save_pretrained folder (--model-path).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for a batch)")
    source.add_argument("--prompts-file", type=validate.text_file, help="a text file with one prompt per line")
    source.add_argument("--sample", type=validate.positive_int, metavar="N", help="N prompts sampled from the shapes world")
    parser.add_argument("--split", default="test", help="world split for --sample (train, test, heldout, all)")
    parser.add_argument("--seed", type=int, default=0, help="image i starts from the noise of seed + i")
    common.add_denoise_steps(parser, "--steps", help="denoising steps (default: the model's; toy 10)")
    parser.add_argument("--guidance", type=validate.finite_float(low=0), default=None,
                        help="classifier-free guidance scale (default: the model's; toy 3)")
    common.add_batch_and_scale(parser)
    common.add_host_arguments(parser)
    parser.add_argument("--size", dest="image_size", type=validate.positive_int, default=None, help=argparse.SUPPRESS)  # older name
    parser.add_argument("--out", type=validate.out_file, required=True, help="PNG file (one image, or a grid for several)")
    parser.add_argument("--out-dir", type=validate.out_folder, help="also write each image as its own PNG here")
    parser.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    from diffdict.collect import read_prompts
    from diffdict.world import sample_prompts

    if args.prompt:
        return list(args.prompt)
    if args.prompts_file is not None:  # validate.text_file checked that it is an existing UTF-8 file
        return read_prompts(str(args.prompts_file))
    return sample_prompts(args.sample, seed=args.seed, split=args.split)


def run(args: argparse.Namespace) -> int:
    from diffdict.hosts import DEFAULT_HOST, is_real_host
    from diffdict.interventions import generate

    prompts = read_prompts(args)
    if not is_real_host(args.model or DEFAULT_HOST):
        from diffdict.world import encode_prompts

        encode_prompts(prompts)  # the shapes world's vocabulary: fail before loading anything
    host = common.host_from_args(args)
    host.check_prompts(prompts)
    images = generate(host, prompts, [], seed=args.seed, num_steps=args.denoise_steps, guidance=args.guidance,
                      batch_size=args.batch_size)
    scale = args.scale if args.scale is not None else display_scale(max(images.shape[1:3]))
    grid = image_grid(images, scale=scale) if len(images) > 1 else image_grid(images, 1, scale, 0)
    save_png(args.out, grid)
    if args.out_dir is not None:
        for i, image in enumerate(images):
            save_png(args.out_dir / f"{i:05d}.png", image)
        (args.out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
    print(f"wrote {len(images)} image(s) of {host.name} to {args.out}")
    return 0
