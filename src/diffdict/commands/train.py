"""``diffdict train``: fit a grid of dictionaries (SAEs, ITDA) in one pass over activations.

    diffdict train --acts STORE|acts.npy [--site mid.0] --arch topk,relu-l1 --k 5,10,20 \\
        --expansion 4 --batch-size 4096 --tokens 2000000 --seed 0 --out RUN
    torchrun --nproc_per_node=N -m diffdict train ...      # data parallel
    diffdict train --out RUN --resume                        # continue RUN as it was started

Comma-separated values make a grid. ``--config run.toml`` reads options from a TOML file
(``k = [5, 10]``, ``batch_size = 4096``); flags given as well override it. Rerunning the
same command resumes from the last checkpoint; other settings on an existing RUN are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from diffdict.commands import common, validate
from diffdict.errors import DiffdictError
from diffdict.options import add_arguments, convert, flag as option_flag, load_config_file, options_of


def _mechanism_flags() -> dict:
    """Flags the sparsity mechanisms declare themselves (``Mechanism.flags``), beyond the settings' own."""
    from diffdict.train import mechanism_flags
    from diffdict.train.settings import TrainSettings

    own = {f.name for f in dataclasses.fields(TrainSettings)}
    return {name: flag for name, flag in mechanism_flags().items() if name not in own}


def _mechanism_option(name: str, flag, value):
    """A mechanism flag's value from its text (a file's value is read as the same text)."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    try:
        return [flag.parse(part.strip()) for part in text.split(",") if part.strip()] if flag.grid else flag.parse(text)
    except ValueError:
        raise DiffdictError(f"{option_flag(name)}: cannot read {text!r}") from None


def register(subparsers) -> None:
    from diffdict.dictionaries.sparsity import MECHANISMS
    from diffdict.train.settings import TrainSettings

    parser = subparsers.add_parser(
        "train", help="train a grid of dictionaries (SAEs, ITDA) in one pass (resumable, torchrun-ready)",
        description="Train every combination of the comma-separated options in one pass over the activations; "
                    "each dictionary goes to RUN/<member>/. Rerun the same command to resume.",
    )
    add_arguments(parser, TrainSettings, placeholders={"mechanisms": ", ".join(MECHANISMS)}, metavars=False)
    for name, flag in _mechanism_flags().items():
        parser.add_argument(option_flag(name), dest=name, default=None, help=flag.help)
    parser.add_argument("--config", metavar="FILE",
                        help="a TOML file of the options above (batch_size = 4096, k = [16, 32]); flags override it")
    parser.add_argument("--out", required=True, type=validate.out_folder, help="run folder (created, or resumed)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out with its own settings")
    parser.add_argument("--checkpoint-every", type=validate.positive_int, default=500,
                        help="steps between checkpoints (default: 500)")
    parser.add_argument("--log-every", type=validate.positive_int, default=50, help="steps between metrics lines (default: 50)")
    parser.add_argument("--device", default="cpu", type=validate.device, help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=validate.positive_int, default=None,
                        help="torch CPU threads (default: 1 when a step is small, as at the toy model's scale; "
                             "else torch's choice)")
    common.add_verify_option(parser)
    common.add_progress_option(parser)
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace):
    from diffdict.train import load_run_settings
    from diffdict.train.settings import TrainSettings

    mechanisms = _mechanism_flags()
    given = load_config_file(args.config, TrainSettings, extra=mechanisms) if args.config else {}
    given.update({name: getattr(args, name) for name in [*options_of(TrainSettings), *mechanisms]
                  if getattr(args, name) is not None})
    mechanism_options = {name: _mechanism_option(name, flag, given.pop(name))
                         for name, flag in mechanisms.items() if name in given}
    given = convert(TrainSettings, given)
    if "acts" in given:
        given["acts"] = str(Path(given["acts"]).resolve())
    if args.resume:
        settings = load_run_settings(args.out)
        stored = {**{name: getattr(settings, name) for name in given}, **settings.mechanism_options}
        for name, value in {**given, **mechanism_options}.items():
            if stored.get(name) != value:
                raise DiffdictError(
                    f"{option_flag(name)} {value} differs from the run's {stored.get(name)}; "
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
    with common.verifying(args.no_verify):
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
