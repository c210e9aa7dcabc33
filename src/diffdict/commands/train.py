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
import dataclasses
import os
import types
import typing
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


def _parser(name: str, annotation):
    """How a flag reads a field of this type: int, float, str; ``bool | None`` as
    on/off/auto; ``list[X]`` as comma-separated values."""
    members = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in members:
        if set(members) == {bool, type(None)}:
            return _switch_or_auto
        rest = [a for a in members if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else annotation
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if item in (int, float, str, bool):
            return _list_of(_switch if item is bool else item)
    elif annotation in (int, float, str, bool):
        return _switch if annotation is bool else annotation
    raise TypeError(f"TrainSettings.{name}: no flag reads {annotation}; declare it with cli=False")


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return format(value, "g") if isinstance(value, float) else str(value)


def settings_options(settings: type | None = None) -> dict[str, tuple]:
    """CLI option -> (parser, help) for every field of ``settings`` (TrainSettings) not
    declared ``cli=False``: the parser from the field's annotation, the help from its
    metadata, with "(default: …)" from its default unless the help says one."""
    from diffdict.dictionaries.sparsity import MECHANISMS
    from diffdict.train.settings import TrainSettings

    settings = settings or TrainSettings
    hints = typing.get_type_hints(settings)
    options = {}
    for f in dataclasses.fields(settings):
        if not f.metadata.get("cli", True):
            continue
        text = f.metadata.get("help", "").replace("{mechanisms}", ", ".join(MECHANISMS))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if default is not None and default is not dataclasses.MISSING and "(default:" not in text:
            text = f"{text} (default: {_shown(default)})".strip()
        options[f.name] = (_parser(f.name, hints[f.name]), text)
    return options


def _mechanism_flags() -> dict:
    """Flags the sparsity mechanisms declare themselves (``Mechanism.flags``), beyond the settings' own."""
    from diffdict.train import mechanism_flags

    options = settings_options()
    return {name: flag for name, flag in mechanism_flags().items() if name not in options}


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
    for name, (kind, text) in settings_options().items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                            help=text.replace("%", "%%"))
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
    from diffdict.train import load_run_settings
    from diffdict.train.settings import TrainSettings

    given = {name: getattr(args, name) for name in settings_options() if getattr(args, name) is not None}
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
