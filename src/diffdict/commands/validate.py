"""Checks of command-line values at the edge, shared by every command.

Argparse ``type=`` functions (a bad value becomes one ``argparse`` error line naming the
option and what was expected), and :func:`resource_error` that turns out-of-memory and
disk-full failures into one line saying what was asked for and what is available.
"""

from __future__ import annotations

import argparse
import errno
import math
import re
import shutil
from pathlib import Path

from diffdict.errors import DiffdictError

_GIB = 1 << 30


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def int_at_least(low: int, high: int | None = None):
    """An integer in ``low..high`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value < low or (high is not None and value > high):
            expected = f"at least {low}" if high is None else f"between {low} and {high:,}"
            raise argparse.ArgumentTypeError(f"expected an integer {expected}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(low: float | None = None, high: float | None = None, above: float | None = None):
    """A finite number in ``[low, high]`` and ``> above`` (any bound may be None)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and value < low) or (high is not None and value > high) or (
                above is not None and value <= above):
            bounds = " and ".join(p for p in (f">= {low:g}" if low is not None else "",
                                             f"> {above:g}" if above is not None else "",
                                             f"<= {high:g}" if high is not None else "") if p)
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


_DEVICE_RE = re.compile(r"^(cpu|mps|cuda)(:(\d+))?$")


def device(text: str) -> str:
    """cpu, cuda, cuda:N or mps, and present on this machine."""
    match = _DEVICE_RE.match(text.strip().lower())
    if not match or (match.group(1) != "cuda" and match.group(2)):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: expected cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(3)
    if kind == "cpu":
        return "cpu"
    import torch

    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("device 'mps' is not available on this machine (cpu is)")
        return "mps"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise argparse.ArgumentTypeError(f"device {text!r} is not available: this machine has no CUDA device (cpu is)")
    if index is not None and int(index) >= count:
        raise argparse.ArgumentTypeError(f"device {text!r} is not available: this machine has cuda:0..cuda:{count - 1}")
    return match.group(0)


def out_folder(text: str) -> Path:
    """A folder to write: new, or an existing folder; never an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing file; expected a folder to write into")
    _check_parents(path, text)
    return path


def out_file(text: str) -> Path:
    """A file to write: new, or an existing file to replace; never an existing folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is an existing folder; expected a file name")
    _check_parents(path, text)
    return path


def _check_parents(path: Path, text: str) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            return


def text_file(text: str) -> Path:
    """An existing UTF-8 text file."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} not found; expected a text file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is a folder; expected a text file")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror or error}") from None
    return path


# --------------------------------------------------------------------------- resources


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / _GIB:,.1f} GiB" if n >= _GIB / 10 else f"{n / (1 << 20):,.1f} MiB"


def require_memory(needed: int, what: str) -> None:
    """Refuse up front (one line) when ``what`` needs more memory than is available."""
    available = available_memory()
    if available is not None and needed > available:
        raise DiffdictError(f"{what} needs about {_gib(needed)} of memory; {_gib(available)} is available")


_ALLOC_RE = re.compile(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)?", re.IGNORECASE)
_UNITS = {"bytes": 1, None: 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def resource_error(error: BaseException, command: str) -> str | None:
    """One line for an out-of-memory or disk-full failure of ``command``; None for anything else."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = Path(error.filename).parent if getattr(error, "filename", None) else Path.cwd()
        try:
            free = f"; {_gib(shutil.disk_usage(where).free)} free in {where}"
        except OSError:
            free = ""
        return f"{command}: disk full while writing {error.filename or 'its output'}{free}"
    text = str(error)
    out_of_memory = isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text))
    if not out_of_memory:
        return None
    match = _ALLOC_RE.search(text)
    asked = ""
    if match:
        asked = f" asked for {_gib(float(match.group(1)) * _UNITS[(match.group(2) or 'bytes').lower()])} more;"
    available = available_memory()
    have = f" {_gib(available)} of memory is available" if available is not None else " memory is exhausted"
    if "cuda" in text.lower():
        have = " the GPU's memory is exhausted"
    return f"{command} ran out of memory:{asked}{have}; use smaller sizes (batch, width, count)"


__all__ = ["available_memory", "device", "finite_float", "int_at_least", "nonnegative_int", "out_file", "out_folder",
           "positive_int", "require_memory", "resource_error", "text_file"]
