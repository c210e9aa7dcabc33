import pytest

import diffdict


def test_every_public_name_resolves():
    for name in diffdict.__all__:
        assert getattr(diffdict, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffdict.nope


def test_exports_are_not_hidden_by_submodules_of_the_same_name():
    """``diffdict.train`` is the function even after another export imported the module
    ``diffdict.train`` (evaluate_run does); the same for every export, in any order."""
    import inspect
    import subprocess
    import sys

    script = ("import diffdict, inspect, sys\n"
              "names = [n for n in diffdict.__all__ if n not in ('world', 'DiffdictError', '__version__')]\n"
              "for first in names: getattr(diffdict, first)\n"
              "bad = [n for n in names if inspect.ismodule(getattr(diffdict, n))]\n"
              "print(', '.join(bad), file=sys.stderr)\n"
              "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert callable(diffdict.evaluate_run) and callable(diffdict.train) and callable(diffdict.capture)
    assert not inspect.ismodule(diffdict.train) and not inspect.ismodule(diffdict.capture)


def test_cli_lists_every_command(capsys):
    from diffdict.cli import build_parser

    text = build_parser().format_help()
    for command in ("generate", "world", "collect", "store", "train", "evaluate", "feature-stats",
                    "intervene", "ablate-block", "interpret", "report", "app", "study", "export"):
        assert command in text
