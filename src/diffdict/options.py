"""Options of a configuration dataclass (``TrainSettings``, a study's config), declared once.

A field declared with :func:`option` carries its help, its ``--quick`` value, the checks
its value must pass and its former names. Its type comes from the annotation: int,
float, str, bool (on/off, true/false, yes/no, 1/0), ``X | None`` (none, auto or empty:
None) and ``list[X]`` or ``tuple[X, ...]`` (comma-separated in a flag). From the fields:

- :func:`add_arguments` makes the argparse flags (``--batch-size`` for ``batch_size``);
  they keep the text they are given;
- :func:`load_config_file` reads the same options from a TOML file (``--config FILE``);
- :func:`convert` turns values, a flag's text or a Python value (from a file or a
  caller), into the options' types and checks them: a bad value is one DiffdictError
  line naming the flag, the value and what was expected, however it was given;
- :func:`resolve` builds a config from its defaults, ``--quick`` values and overrides.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from typing import Any, Callable, Iterable, Sequence

from diffdict.errors import DiffdictError

MISSING = dataclasses.MISSING
_TRUE, _FALSE = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
_EXPECTED = {int: "an integer", float: "a finite number", str: "a non-empty string", bool: "on or off"}


def option(default: Any = MISSING, help: str = "", *, quick: Any = MISSING,
           choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None, minimum: float | None = None,
           maximum: float | None = None, cli: bool = True, aliases: Sequence[str] = (), distinct: bool = True) -> Any:
    """A config field. ``help``: its flag's help, to which "(default: …)" is added unless
    it states the default itself (as it must where None stands for a computed value);
    ``quick``: its value under ``--quick``; ``choices`` (or a function returning them),
    ``minimum`` and ``maximum`` are checked for the value, or for each member of a list;
    ``cli=False``: no flag, set from Python only; ``aliases``: former names, still
    accepted but not listed; ``distinct=False``: a list may repeat a value (a box's
    coordinates; by default a repeat is a mistake, e.g. a site given twice)."""
    metadata = {"help": help, "quick": quick, "choices": choices, "minimum": minimum, "maximum": maximum,
                "cli": cli, "aliases": tuple(aliases), "distinct": distinct}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# base: int, float, str or bool; sequence: list or tuple for a list-valued option, else None
_Kind = collections.namedtuple("_Kind", "base sequence optional")


def _kind(annotation: Any, where: str) -> _Kind:
    kind, args = annotation, typing.get_args(annotation)
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args
    if optional:
        kind = next(a for a in args if a is not type(None))
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    sequence = None
    if origin is list and len(args) == 1 or origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        sequence, kind = origin, args[0]
    if kind not in _EXPECTED:
        raise TypeError(f"{where}: no flag reads {annotation}; declare it with cli=False")
    return _Kind(kind, sequence, optional)


def options_of(config_class: type) -> dict[str, tuple[dataclasses.Field, _Kind]]:
    """The options of ``config_class`` by name: its fields not declared ``cli=False``."""
    hints = typing.get_type_hints(config_class)
    return {f.name: (f, _kind(hints[f.name], f"{config_class.__name__}.{f.name}"))
            for f in dataclasses.fields(config_class) if f.metadata.get("cli", True)}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _scalar(value: Any, base: type, where: str, optional: bool = False) -> Any:
    """One value of type ``base`` from a flag's text or a Python value."""
    text = value.strip() if isinstance(value, str) else None
    if base is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
    elif base is int and not isinstance(value, bool):
        if isinstance(value, int) or isinstance(value, float) and value.is_integer():
            return int(value)
        with contextlib.suppress(TypeError, ValueError):
            return int(text)
    elif base is float and not isinstance(value, bool):
        with contextlib.suppress(TypeError, ValueError):
            if math.isfinite(number := float(value)):
                return number
    elif base is str and text:
        return text
    expected = "on, off or auto" if base is bool and optional else _EXPECTED[base]
    raise DiffdictError(f"{where}: expected {expected}, got {value!r}")


def _check(value: Any, metadata: Any, where: str) -> None:
    choices = metadata.get("choices")
    choices = choices() if callable(choices) else choices
    if choices is not None and value not in choices:
        raise DiffdictError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if metadata.get("minimum") is not None and value < metadata["minimum"]:
        raise DiffdictError(f"{where}: {value!r} must be at least {metadata['minimum']}")
    if metadata.get("maximum") is not None and value > metadata["maximum"]:
        raise DiffdictError(f"{where}: {value!r} must be at most {metadata['maximum']}")


def _value(f: dataclasses.Field, kind: _Kind, value: Any) -> Any:
    where = flag(f.name)
    if value is None or kind.optional and isinstance(value, str) and value.strip().lower() in ("", "none", "auto"):
        if kind.optional:
            return None
        raise DiffdictError(f"{where}: a value is required")
    if kind.sequence is None:
        value = _scalar(value, kind.base, where, kind.optional)
        _check(value, f.metadata, where)
        return value
    if isinstance(value, str):
        members = [m.strip() for m in value.split(",") if m.strip()]
    else:
        members = list(value) if isinstance(value, (list, tuple)) else [value]
    if not members:
        if _default(f) == kind.sequence():  # an empty list means the default, e.g. --sites
            return kind.sequence()
        raise DiffdictError(f"{where}: give at least one value")
    out = []
    for i, member in enumerate(members, 1):
        out.append(_scalar(member, kind.base, f"{where} member {i} ({member!r})"))
        _check(out[-1], f.metadata, where)
    if f.metadata.get("distinct", True) and len(set(out)) != len(out):
        raise DiffdictError(f"{where}: a value is given twice in {', '.join(map(str, out))}")
    return kind.sequence(out)


def convert(config_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (option name -> a flag's text or a Python value) in the options' types,
    each checked; a name that is not an option of ``config_class`` is refused."""
    known = options_of(config_class)
    converted = {}
    for name, value in values.items():
        if name not in known:
            raise DiffdictError(f"unknown option {flag(name)}; options: {', '.join(flag(n) for n in sorted(known))}")
        converted[name] = _value(*known[name], value)
    return converted


def check(config: Any) -> None:
    """Convert and check every option of the dataclass instance ``config``, in place."""
    names = options_of(type(config))
    for name, value in convert(type(config), {name: getattr(config, name) for name in names}).items():
        setattr(config, name, value)


def canonical_options(config_classes: Iterable[type], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with each former name of an option (its ``aliases``, e.g. ``what`` for
    ``capture``) replaced by the option's name; both names with different values are refused."""
    renamed = dict(options)
    for f in (f for config_class in config_classes for f in dataclasses.fields(config_class)):
        for alias in f.metadata.get("aliases", ()):
            value = renamed.pop(alias, None)
            if value is not None and renamed.get(f.name) not in (None, value):
                raise DiffdictError(f"{flag(alias)} is the former name of {flag(f.name)}; give one of them")
            if value is not None:
                renamed[f.name] = value
    return renamed


def resolve(config_class: type, overrides: dict[str, Any] | None = None, quick: bool = False) -> Any:
    """The config: its defaults, then with ``quick`` the ``--quick`` values, then
    ``overrides`` (flag texts or Python values; None leaves the default; an option's
    former name works too), each converted and checked; a ``quick`` field is set to
    ``quick``, and the config's ``check()`` runs last. Defaults are trusted (declared)."""
    values = {name: f.metadata["quick"] for name, (f, _) in options_of(config_class).items()
              if quick and f.metadata.get("quick", MISSING) is not MISSING}
    overrides = canonical_options([config_class], overrides or {})
    values = convert(config_class, {**values, **{k: v for k, v in overrides.items() if v is not None}})
    if "quick" in {f.name for f in dataclasses.fields(config_class)}:
        values["quick"] = bool(quick)
    config = config_class(**values)
    if hasattr(config, "check"):
        config.check()
    return config


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return format(value, "g") if isinstance(value, float) else str(value)


def add_arguments(parser: argparse.ArgumentParser, *config_classes: type, placeholders: dict[str, str] | None = None,
                  metavars: bool = True) -> None:
    """A flag for each option of ``config_classes`` (one for an option several share),
    ``--batch-size`` for ``batch_size``, keeping its text (None when not given). Its help
    is the field's, with ``{key}`` replaced by ``placeholders[key]`` and "(default: …)"
    added; ``metavars``: INT, FLOAT, STR or A,B,... (else argparse's, the dest in capitals).
    Former names are accepted but not listed."""
    seen: set[str] = set()
    for config_class in config_classes:
        for name, (f, kind) in options_of(config_class).items():
            if name in seen:
                continue
            seen.add(name)
            text = f.metadata.get("help", "")
            for key, value in (placeholders or {}).items():
                text = text.replace("{" + key + "}", value)
            default = _default(f)
            shown = "" if default is None or default is MISSING else _shown(default)
            if shown and "(default:" not in text:
                text = f"{text} (default: {shown})".strip()
            extra = {"metavar": "A,B,..." if kind.sequence else kind.base.__name__.upper()} if metavars else {}
            parser.add_argument(flag(name), dest=name, default=None, help=text.replace("%", "%%"), **extra)
            for alias in f.metadata.get("aliases", ()):
                if alias not in seen:
                    seen.add(alias)
                    parser.add_argument(flag(alias), dest=name, default=None, help=argparse.SUPPRESS, **extra)


def load_config_file(path: Any, *config_classes: type, extra: Iterable[str] = ()) -> dict[str, Any]:
    """The options a TOML file sets, by name: its keys are options of ``config_classes``
    (``batch_size`` or ``batch-size``; a former name works too) or names in ``extra``,
    its values what the flags take (``k = [16, 32]`` or ``k = "16,32"``). The values are
    not converted here: :func:`convert` does that, as for a flag's text."""
    where = f"--config {path}"
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise DiffdictError(f"{where}: no such file") from None
    except OSError as error:
        raise DiffdictError(f"{where}: cannot read it ({error.strerror or error})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DiffdictError(f"{where}: not valid TOML: {error}") from None
    known = set(extra)
    for config_class in config_classes:
        for name, (f, _) in options_of(config_class).items():
            known.update((name, *f.metadata.get("aliases", ())))
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; the keys are the command's options (see --help)"
            raise DiffdictError(f"{where}: unknown option {key!r}{hint}")
        if name in options:
            raise DiffdictError(f"{where}: {key!r} sets {name} a second time")
        options[name] = value
    return canonical_options(config_classes, options)


__all__ = ["add_arguments", "canonical_options", "check", "convert", "flag", "load_config_file", "option",
           "options_of", "resolve"]
