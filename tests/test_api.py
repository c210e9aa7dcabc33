import pytest

import diffdict


def test_every_public_name_resolves():
    for name in diffdict.__all__:
        assert getattr(diffdict, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffdict.nope


def test_cli_lists_every_command(capsys):
    from diffdict.cli import build_parser

    text = build_parser().format_help()
    for command in ("generate", "world", "collect", "store", "train", "evaluate", "feature-stats",
                    "intervene", "ablate-block", "interpret", "report", "app", "study", "export"):
        assert command in text
