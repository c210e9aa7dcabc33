"""User-facing errors (the CLI prints these as one line and exits non-zero) and the argument
checks every layer shares, from the shipped models up."""

import numbers
from typing import Sequence


class DiffdictError(Exception):
    """Bad input or a broken file, reported to the user as one clear line."""

    exit_code = 2


def require_int(value, what: str, low: int = 1, high: int | None = None, context: str = "") -> int:
    """``value`` as an ``int`` when it is an integer (Python or numpy; a bool is not one)
    in ``low..high``; else the one-line error "bad WHAT VALUE: expected ...", with
    ``context`` (e.g. " (the dictionary has 32 features)") at its end."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        expected = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        raise DiffdictError(f"bad {what} {value!r}: expected {expected}{context}")
    return int(value)


def noise_seeds(prompts: Sequence[str], seed: int = 0, seeds: Sequence[int] | None = None) -> list[int]:
    """Image i's noise seed: ``seeds[i]``, default ``seed + i`` (so an image does not depend on its batch)."""
    if not prompts:
        raise DiffdictError("no prompts to generate")
    seeds = [int(s) for s in seeds] if seeds is not None else [seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise DiffdictError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    return seeds
