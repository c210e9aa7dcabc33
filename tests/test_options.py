"""diffdict.options: one declaration of an option gives its flag, its TOML key, its
conversion from text or Python values, and one clear line for a bad value."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from diffdict.errors import DiffdictError
from diffdict.options import add_arguments, check, convert, load_config_file, option, resolve


@dataclasses.dataclass
class Config:
    size: int = option(8, "a size", quick=2, minimum=1)
    rate: float = option(0.5, "a rate", minimum=0.0, maximum=1.0)
    name: str = option("a", "a name", choices=("a", "b"), aliases=("label",))
    fast: bool = option(False, "go fast")
    fused: bool | None = option(None, "fuse: on, off or auto (default: auto)")
    limit: int | None = option(None, "a limit")
    ks: tuple[int, ...] = option((5, 10), "values of k", minimum=1)
    tags: list[str] = option([], "tags")
    box: tuple[float, ...] = option((0.25, 0.25, 0.75, 0.75), "a box", distinct=False)
    quick: bool = option(False, cli=False)

    def check(self) -> None:
        if self.size > 100:
            raise DiffdictError("--size: too big for this config")


def test_text_and_python_values_convert_alike():
    text = convert(Config, {"size": " 3 ", "rate": "0.25", "fast": "yes", "fused": "auto", "limit": "none",
                            "ks": "1, 2", "tags": "x,y"})
    python = convert(Config, {"size": 3.0, "rate": 0.25, "fast": True, "fused": None, "limit": None,
                              "ks": [1, "2"], "tags": ["x", "y"]})
    assert text == python == {"size": 3, "rate": 0.25, "fast": True, "fused": None, "limit": None,
                              "ks": (1, 2), "tags": ["x", "y"]}
    assert convert(Config, {"fused": "off", "ks": 7, "tags": ""}) == {"fused": False, "ks": (7,), "tags": []}
    assert convert(Config, {"box": "0.2,0.2,0.6,0.6"}) == {"box": (0.2, 0.2, 0.6, 0.6)}  # repeats allowed here


@pytest.mark.parametrize("values, message", [
    ({"size": "x"}, "--size: expected an integer, got 'x'"),
    ({"size": True}, "--size: expected an integer, got True"),
    ({"size": 0}, "--size: 0 must be at least 1"),
    ({"rate": "nan"}, "--rate: expected a finite number, got 'nan'"),
    ({"rate": 2}, "--rate: 2.0 must be at most 1.0"),
    ({"name": "c"}, "--name: 'c' is not one of a, b"),
    ({"name": " "}, "--name: expected a non-empty string, got ' '"),
    ({"fast": "maybe"}, "--fast: expected on or off, got 'maybe'"),
    ({"fused": "maybe"}, "--fused: expected on, off or auto, got 'maybe'"),
    ({"ks": "5,ten"}, "--ks member 2 ('ten'): expected an integer"),
    ({"ks": [5, 0]}, "--ks: 0 must be at least 1"),
    ({"ks": "5,5"}, "--ks: a value is given twice in 5, 5"),
    ({"ks": ""}, "--ks: give at least one value"),
    ({"size": None}, "--size: a value is required"),
    ({"sizes": 3}, "unknown option --sizes; options: --box, --fast,"),
])
def test_a_bad_value_is_one_line_naming_the_flag(values, message):
    with pytest.raises(DiffdictError) as error:
        convert(Config, values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_resolve_applies_quick_overrides_aliases_and_the_configs_check():
    assert resolve(Config) == Config()
    config = resolve(Config, {"label": "b", "rate": None}, quick=True)
    assert (config.size, config.name, config.rate, config.quick) == (2, "b", 0.5, True)
    assert resolve(Config, {"size": "5"}, quick=True).size == 5  # an override beats the --quick value
    with pytest.raises(DiffdictError, match="--label is the former name of --name; give one of them"):
        resolve(Config, {"label": "a", "name": "b"})
    with pytest.raises(DiffdictError, match="--size: too big"):
        resolve(Config, {"size": 101})


def test_check_converts_an_instance_in_place():
    config = Config(size="4", ks=[3])
    check(config)
    assert (config.size, config.ks) == (4, (3,))
    with pytest.raises(DiffdictError, match="--rate: -1.0 must be at least 0.0"):
        check(Config(rate=-1))


def test_flags_keep_their_text_with_help_defaults_and_hidden_former_names():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Config, Config)  # an option two configs share is one flag
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    assert "--quick" not in actions
    assert actions["--size"].help == "a size (default: 8)" and actions["--size"].metavar == "INT"
    assert actions["--ks"].help == "values of k (default: 5,10)" and actions["--ks"].metavar == "A,B,..."
    assert actions["--fast"].help == "go fast (default: off)" and actions["--rate"].help == "a rate (default: 0.5)"
    assert actions["--fused"].help == "fuse: on, off or auto (default: auto)"  # says its default itself
    assert actions["--tags"].help == "tags" and actions["--limit"].help == "a limit"  # no default to show
    assert actions["--label"].help == argparse.SUPPRESS and actions["--label"].dest == "name"
    assert vars(parser.parse_args(["--size", "3", "--label", "b"])) == {
        **{f.name: None for f in dataclasses.fields(Config) if f.name != "quick"}, "size": "3", "name": "b"}


def test_a_toml_file_gives_the_options_by_name(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('size = 3\nks = [1, 2]\nfused = "auto"\nlabel = "b"\nextra-thing = 1\n')
    options = load_config_file(path, Config, extra=["extra_thing"])
    assert options == {"size": 3, "ks": [1, 2], "fused": "auto", "name": "b", "extra_thing": 1}
    with pytest.raises(DiffdictError, match=r"config.toml: unknown option 'extra-thing'; the keys are"):
        load_config_file(path, Config)
    path.write_text("size = \n")
    with pytest.raises(DiffdictError, match=r"config.toml: not valid TOML: .*line 1"):
        load_config_file(path, Config)
    with pytest.raises(DiffdictError, match=r"cannot read it"):
        load_config_file(tmp_path, Config)
