"""Command line: a thin argparse layer over the public API.

Each sub-command lives in its own module under ``diffdict.commands`` and exposes
``register(subparsers)``; the module adds its parser and sets ``func`` to a function
taking the parsed arguments. To add a command, write the module and list it in
``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch loads OpenMP: threads that wait for work by spinning hold their cores, so
# where another process shares the machine two spinning threads ran the toy model slower
# than one (1.5 against 2.7 images/s); waiting passively, two threads are as fast as one
# there (2.5) and 1.6x faster on idle cores (README, "Findings"). A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from diffdict.errors import DiffdictError  # noqa: E402

COMMAND_MODULES = [f"diffdict.commands.{name}" for name in (
    "collect", "generate", "world", "store", "feature_stats", "intervene", "ablate_block", "train", "export",
    "evaluate", "bench", "interpret", "report", "app", "study")]


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser that takes no abbreviations (``--model`` is never read as
    ``--model-path``); sub-command parsers are made of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        # one line, like every other diffdict error (argparse would print the usage first)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="diffdict",
        description="Dictionary learning for text-to-image diffusion models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except DiffdictError as error:
        print(f"diffdict: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("diffdict: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (MemoryError, OSError, RuntimeError) as error:
        from diffdict.commands.validate import resource_error

        message = resource_error(error, f"diffdict {args.command}")
        if message is None:
            raise
        print(f"diffdict: error: {message}", file=sys.stderr)
        return 1
    if os.environ.get("DIFFDICT_TRACE"):
        print(f"diffdict: {args.command} done", file=sys.stderr)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
