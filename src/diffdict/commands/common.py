"""Flags several commands share (the host model, a generation, the progress bar, store
verification) and what the commands build from them."""

from __future__ import annotations

import argparse

from diffdict.commands import validate


def add_host_arguments(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """``--model``, ``--model-path``, ``--device``, ``--model-dtype``, ``--quantize``, ``--image-size``;
    ``default_model`` None: the one the dictionary was trained on, else toy."""
    from diffdict.hosts import HOSTS

    default = default_model or "the one the dictionary was trained on, else toy"
    parser.add_argument("--model", default=default_model, help=f"host model: {', '.join(HOSTS)} (default: {default})")
    parser.add_argument("--model-path", default=None, help="toy: a saved model folder (default: shipped weights); "
                                                           "real models: a hub id or local folder")
    parser.add_argument("--device", default=None, type=validate.device,
                        help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--model-dtype", default=None, choices=["float16", "bfloat16", "float32"],
                        help="compute dtype of a real model (default: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--quantize", default=None, choices=["nf4"], help="real models: load in 4-bit NF4 (bitsandbytes)")
    parser.add_argument("--image-size", type=validate.positive_int, default=None,
                        help="real models: image size (default: the model's)")


def add_generation_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    source.add_argument("--prompts", help="a count (sampled from the shapes world) or a text file, one prompt a line")
    parser.add_argument("--split", default="test", help="world split when --prompts is a count (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling seed; image i's noise seed is seed + i")
    add_denoise_steps(parser, "--num-steps", help="denoising steps per image (default: the model's)")
    parser.add_argument("--guidance", type=validate.finite_float(low=0), default=None,
                        help="guidance scale (default: the model's)")
    add_batch_and_scale(parser)
    parser.add_argument("--out", required=True, type=validate.out_folder, help="output folder")


def add_batch_and_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=validate.positive_int, default=16,
                        help="prompts per generation batch (default: 16)")
    parser.add_argument("--scale", type=validate.positive_int, default=None,
                        help="upscale factor of the written PNGs (default: small images to about 128 px, "
                             "large ones as they are)")


def add_denoise_steps(parser: argparse.ArgumentParser, old_name: str | None = None, default: int | None = None,
                      help: str = "number of denoising steps of each generation (default: the model's)") -> None:
    """``--denoise-steps N``, the one name every command uses for how many denoising steps a
    generation takes (``--steps`` selects steps in collect / intervene / ablate-block);
    ``old_name``, the command's earlier name for it, still works, unlisted."""
    parser.add_argument("--denoise-steps", dest="denoise_steps", type=validate.positive_int, default=default,
                        help=help)
    if old_name:
        parser.add_argument(old_name, dest="denoise_steps", type=validate.positive_int, default=default,
                            help=argparse.SUPPRESS)


def add_capture_option(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """``--capture MODE``: the capture mode read or edited at a site (update, output, mlp),
    into ``args.capture``; ``--what``, its earlier name, still works, unlisted."""
    from diffdict.capture import CAPTURE_MODES

    parser.add_argument("--capture", dest="capture", default=default, choices=list(CAPTURE_MODES), help=help)
    parser.add_argument("--what", dest="capture", default=argparse.SUPPRESS, choices=list(CAPTURE_MODES),
                        help=argparse.SUPPRESS)


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` into ``args.progress`` (None: a bar on a terminal only)."""
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show the progress bar")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")


def add_verify_option(parser: argparse.ArgumentParser) -> None:
    """``--no-verify``: read stores without checking each file's sha256 (see :func:`verifying`)."""
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checking the store's files against their recorded sha256 "
                             "(for a store checked once with 'diffdict store verify')")


def verifying(no_verify: bool):
    """The context in which a command reads stores: verified unless ``--no-verify``."""
    from diffdict.store import verification

    return verification(not no_verify)


def host_from_args(args: argparse.Namespace, default_model: str | None = None, recorded: dict | None = None):
    """The host the options name; without ``--model`` (or with the recorded one), the host
    ``recorded`` describes (a store's ``model`` and ``host``: model folder, image size,
    dtype), with ``--model-path``, ``--device``, ``--model-dtype``, ``--image-size`` and
    ``--quantize`` replacing what was recorded."""
    from diffdict.hosts import DEFAULT_HOST, host_class, load_host, load_recorded_host

    recorded = recorded or {}
    name = args.model or recorded.get("model") or default_model or DEFAULT_HOST
    host_class(name)
    if recorded.get("model") == name:
        return load_recorded_host(recorded, args.model_path, args.device, args.model_dtype,
                                  where="the dictionary's store", image_size=args.image_size, quantize=args.quantize)
    # --quantize applies to real models only: left out for a host that does not take it
    return load_host(name, only_taken=True, model=args.model_path, device=args.device, dtype=args.model_dtype,
                     quantize=args.quantize, image_size=args.image_size)


def prompts_from_args(args: argparse.Namespace) -> list[str]:
    from diffdict.collect import read_prompts

    if args.prompt:
        return list(args.prompt)
    return read_prompts(args.prompts, seed=args.seed, split=args.split)
