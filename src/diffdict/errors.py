"""User-facing errors: the CLI prints these as one line and exits non-zero."""

import numbers


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
