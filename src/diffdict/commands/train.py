"""``diffdict train``: fit a grid of dictionaries (SAEs, ITDA) in one pass over activations.

    diffdict train --acts STORE|acts.npy [--site mid.0] --arch topk,relu-l1 --k 5,10,20 \\
        --expansion 4 --batch-size 4096 --tokens 2000000 --seed 0 --out RUN
    torchrun --nproc_per_node=N -m diffdict train ...      # data parallel
    diffdict train --out RUN --resume                        # continue RUN as it was started

Comma-separated values make a grid. Rerunning the same command resumes from the last
checkpoint; other settings on an existing RUN are refused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from diffdict.commands import validate
from diffdict.errors import DiffdictError


def _list_of(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    return parse


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("on", "true", "yes", "1"):
        return True
    if lowered in ("off", "false", "no", "0"):
        return False
    raise ValueError(text)


_switch.__name__ = "on/off"


def _switch_or_auto(text: str) -> bool | None:
    return None if text.strip().lower() == "auto" else _switch(text)


_switch_or_auto.__name__ = "on/off/auto"

# CLI option -> (type, help); names match TrainSettings fields.
OPTIONS = {
    "acts": (str, "activations: a store folder, or an (N, d) .npy / .safetensors file"),
    "site": (str, "the store site (required when the store has several), or the tensor of a safetensors file"),
    "arch": (_list_of(str), "architectures: {mechanisms}, itda (default: topk)"),
    "k": (_list_of(int), "codes per token for topk / batchtopk / matryoshka-batchtopk (default: 32)"),
    "expansion": (_list_of(float), "width as a multiple of d (default: 4)"),
    "width": (_list_of(int), "width in features (replaces --expansion)"),
    "lr": (_list_of(float), "Adam learning rate (default: 2e-4 / sqrt(width / 16384), sparsify's width-scaled "
                            "rule: 1.1e-3 at 512 features, 3.6e-4 at 5120)"),
    "normalization": (_list_of(str), "input normalisation: none, standardise (per dimension), scalar (default: none)"),
    "auxk": (_list_of(_switch), "AuxK loss on dead features: on, off or on,off (default: on)"),
    "l1": (_list_of(float), "relu-l1 / soft-threshold: L1 coefficient (default: 1e-3 / 0)"),
    "l0_coef": (_list_of(float), "jumprelu: L0 coefficient (default: 1e-3)"),
    "theta": (_list_of(float), "soft-threshold / jumprelu: (initial) threshold (default: 0.1 / 1e-3)"),
    "learn_theta": (_list_of(_switch), "soft-threshold: learn θ per feature: on/off (default: off)"),
    "bandwidth": (float, "jumprelu: pseudo-derivative bandwidth ε (default: 1e-3)"),
    "threshold_decay": (float, "batchtopk: EMA decay of the inference threshold (default: 0.99)"),
    "auxk_coef": (float, "AuxK coefficient α (default: 1/32)"),
    "k_aux": (int, "AuxK codes per token (default: d/2)"),
    "dead_window": (int, "tokens without firing after which a feature is dead (default: 10M)"),
    "b_dec_init": (str, "b_dec initialisation: geometric-median, mean, zeros (default: geometric-median)"),
    "init_tokens": (int, "tokens sampled for the normalisation and b_dec initialisation (default: 16384)"),
    "bf16": (_switch_or_auto, "TopK encoder matmul in bfloat16: on, off, or auto: on where the device computes "
                              "bf16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX) (default: auto)"),
    "tau": (_list_of(float), "itda: normalised error above which an activation becomes an atom (default: 0.3)"),
    "l0": (_list_of(int), "itda: pursuit steps per token (default: 10)"),
    "pursuit": (str, "itda encoding: mp (signed matching pursuit) or gp (non-negative gradient pursuit)"),
    "itda_tokens": (int, "itda: build from the first this many tokens only (default: all)"),
    "itda_chunk": (int, "itda: tokens encoded before adding atoms (default: 256)"),
    "max_atoms": (int, "itda: stop adding atoms at this many"),
    "batch_size": (int, "global batch size in tokens (default: 4096)"),
    "tokens": (int, "tokens to train on (default: 2000000)"),
    "seed": (int, "seed of the initialisation and the data order (default: 0)"),
    "warmup_steps": (int, "linear learning-rate warmup steps (default: 0)"),
    "decay_fraction": (float, "linear learning-rate decay to 0 over this last fraction of steps (default: 0)"),
}


def _mechanism_flags() -> dict:
    """Flags the sparsity mechanisms declare themselves (``Mechanism.flags``), beyond the table."""
    from diffdict.train import mechanism_flags

    return {name: flag for name, flag in mechanism_flags().items() if name not in OPTIONS}


def _flag_parser(flag):
    def parse(text: str):
        try:
            return [flag.parse(part.strip()) for part in text.split(",") if part.strip()] if flag.grid else flag.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {text!r}") from None
    parse.__name__ = "value"
    return parse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a grid of dictionaries (SAEs, ITDA) in one pass (resumable, torchrun-ready)",
        description="Train every combination of the comma-separated options in one pass over the activations; "
                    "each dictionary goes to RUN/<member>/. Rerun the same command to resume.",
    )
    from diffdict.dictionaries.sparsity import MECHANISMS

    for name, (kind, text) in OPTIONS.items():
        text = text.format(mechanisms=", ".join(MECHANISMS)) if name == "arch" else text
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    for name, flag in _mechanism_flags().items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=_flag_parser(flag), default=None,
                            help=flag.help)
    parser.add_argument("--out", required=True, type=validate.out_folder, help="run folder (created, or resumed)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    parser.add_argument("--checkpoint-every", type=validate.positive_int, default=500,
                        help="steps between checkpoints (default: 500)")
    parser.add_argument("--log-every", type=validate.positive_int, default=50, help="steps between metrics lines (default: 50)")
    parser.add_argument("--device", default="cpu", type=validate.device, help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=validate.positive_int, default=None,
                        help="torch CPU threads (default: 1 when a step is small, as at the toy model's scale; "
                             "else torch's choice)")
    validate.add_verify_option(parser)
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show the progress bar")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from diffdict.train import TrainSettings, load_run_settings

    given = {name: getattr(args, name) for name in OPTIONS if getattr(args, name) is not None}
    mechanism_options = {name: getattr(args, name) for name in _mechanism_flags() if getattr(args, name) is not None}
    if "acts" in given:
        given["acts"] = str(Path(given["acts"]).resolve())
    if args.resume:
        settings = load_run_settings(args.out)
        stored = {**{name: getattr(settings, name) for name in given}, **settings.mechanism_options}
        for name, value in {**given, **mechanism_options}.items():
            if stored.get(name) != value:
                raise DiffdictError(
                    f"--{name.replace('_', '-')} {value} differs from the run's {stored.get(name)}; "
                    "--resume continues a run with its own settings"
                )
        return settings
    if "acts" not in given:
        raise DiffdictError("--acts is required (or --resume to continue an existing run)")
    return TrainSettings(**given, mechanism_options=mechanism_options)


def run(args: argparse.Namespace) -> int:
    import torch

    from diffdict.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = settings_from_args(args)
    with validate.verifying(args.no_verify):
        _check_memory(settings)
        folders = train(settings, args.out, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                        progress=args.progress, device=args.device, threads=args.threads)
    if folders and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {len(folders)} dictionaries in {args.out}: {', '.join(folders)}")
    return 0


def _check_memory(settings) -> None:
    """Refuse a grid whose SAE weights, gradients and Adam moments cannot fit in memory."""
    from diffdict.dictionaries.data import open_activations
    from diffdict.train import members_of

    settings.validate()
    d = open_activations(settings.acts, settings.site).d
    widths = [m.options.get("width") or int(m.options["expansion"] * d) for m in members_of(settings) if m.arch != "itda"]
    # W_enc and W_dec (d x width each, fp32), each with a gradient and two Adam moments
    needed = sum(2 * d * width * 4 * 4 for width in widths)
    if widths:
        validate.require_memory(needed, f"training {len(widths)} dictionaries of widths up to {max(widths):,} (d = {d})")
