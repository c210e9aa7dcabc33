"""A content-addressed cache of the studies' expensive steps.

An entry is a folder ``ROOT/<kind>/<key>/`` where ``key`` is the sha256 of the canonical
JSON of exactly the settings the step depends on (e.g. a dictionary: the store's content
digest, the site, the member's architecture and options, the training settings and the
seed). Changing a setting changes only the keys of the steps that depend on it, so a
rerun recomputes those and reuses the rest. An entry is built in a temporary folder and
renamed into place when complete, so an interrupted run never leaves a half entry;
``entry.json`` beside the results records the settings for inspection.

The cache counts what it served and what it computed per kind (``stats()``), which is
how a study shows that a second run trained nothing, and the seconds spent computing each
kind (a step's own time: a step built inside another counts for its own kind only), which
is where a study's time goes.

Several processes may share one cache (``study --jobs``): an entry is built under an
exclusive lock on ``.<key>.lock`` beside it, so a second process wanting the same entry
waits for it instead of building it again. A process that writes ``stats_file`` keeps its
counts there after every entry it completes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no cross-process locks, concurrent twins are still safe (see _commit)
    fcntl = None

from diffdict.errors import DiffdictError
from diffdict.io import read_json, write_json

CACHE_VERSION = 2
ENTRY_FILE = "entry.json"
RESULT_FILE = "result.json"


def _map_leaves(obj: Any, leaf: Callable[[Any], Any]) -> Any:
    """``obj`` with ``leaf`` applied to every value that is not a dict, list or tuple."""
    if isinstance(obj, dict):
        return {str(k): _map_leaves(v, leaf) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_map_leaves(v, leaf) for v in obj]
    return leaf(obj)


def _jsonable(obj: Any) -> Any:
    """Non-finite floats as their text ("nan", "inf", "-inf": JSON has none), paths as text."""
    return _map_leaves(obj, lambda v: repr(v) if isinstance(v, float) and not math.isfinite(v)
                       else str(v) if isinstance(v, Path) else v)


def settings_key(kind: str, settings: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, "settings": _jsonable(settings)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def text_digest(items: Any) -> str:
    """sha256 of a JSON-able value (e.g. a list of prompts), short."""
    return hashlib.sha256(json.dumps(_jsonable(items), sort_keys=True).encode()).hexdigest()[:16]


class Cache:
    def __init__(self, root: str | Path, stats_file: str | Path | None = None):
        self.root = Path(root)
        self.stats_file = Path(stats_file) if stats_file is not None else None
        self.hits: Counter[str] = Counter()
        self.computed: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()  # each kind's own compute time
        self._nested: list[float] = []  # per build in progress: the time of the builds inside it

    def path(self, kind: str, settings: dict[str, Any]) -> Path:
        return self.root / kind / settings_key(kind, settings)[:24]

    def lookup(self, kind: str, settings: dict[str, Any]) -> Path | None:
        """The entry's folder if it is complete (counted as a hit), else None."""
        path = self.path(kind, settings)
        if (path / ENTRY_FILE).exists():
            self.hits[kind] += 1
            return path
        return None

    def folder(self, kind: str, settings: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The entry's folder, made by ``build(tmp_folder)`` when it is not cached."""
        found = self.lookup(kind, settings)
        if found is None:
            with self.locked(kind, [settings]):  # another process may have built it while this one waited
                found = self.lookup(kind, settings) or self._build(kind, settings, build)
        return found

    def _build(self, kind: str, settings: dict[str, Any], build: Callable[[Path], None]) -> Path:
        final, tmp = self._tmp(kind, settings)
        began = time.monotonic()
        self._nested.append(0.0)
        try:
            build(tmp)
            self._commit(tmp, final, kind, settings)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            spent = time.monotonic() - began
            inner = self._nested.pop()
            self.seconds[kind] += spent - inner
            if self._nested:
                self._nested[-1] += spent
        self._save_stats()
        return final

    def _tmp(self, kind: str, settings: dict[str, Any]) -> tuple[Path, Path]:
        """The entry's final folder and a new temporary folder beside it."""
        final = self.path(kind, settings)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final, Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))

    @contextmanager
    def locked(self, kind: str, settings_list: list[dict[str, Any]]) -> Iterator[None]:
        """Hold the build locks of these entries (taken in one global order, so two
        processes wanting overlapping sets cannot deadlock)."""
        with ExitStack() as stack:
            if fcntl is not None:
                for final in sorted({self.path(kind, settings) for settings in settings_list}):
                    final.parent.mkdir(parents=True, exist_ok=True)
                    handle = stack.enter_context(open(final.parent / f".{final.name}.lock", "a"))
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX)
                    except OSError:  # a file system without locks (some network mounts): twins are still safe
                        pass
            yield

    def put(self, kind: str, settings: dict[str, Any], source: Path, seconds: float = 0.0) -> Path:
        """Move a finished folder (e.g. one member of a trained grid) into the cache;
        ``seconds``: what making it cost, counted for ``kind``."""
        self.seconds[kind] += seconds
        final, tmp = self._tmp(kind, settings)
        os.rmdir(tmp)
        shutil.move(str(source), str(tmp))
        self._commit(tmp, final, kind, settings)
        self._save_stats()
        return final

    def _save_stats(self) -> None:
        if self.stats_file is not None:
            write_json(self.stats_file, self.stats())

    def _commit(self, tmp: Path, final: Path, kind: str, settings: dict[str, Any]) -> None:
        write_json(tmp / ENTRY_FILE, {"kind": kind, "settings": _jsonable(settings)})
        if final.exists():  # an incomplete leftover (no entry.json) or a concurrent twin
            if (final / ENTRY_FILE).exists():
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(final)
        os.replace(tmp, final)
        self.computed[kind] += 1

    def json(self, kind: str, settings: dict[str, Any], compute: Callable[[], dict]) -> dict:
        """A JSON result, computed by ``compute()`` when it is not cached."""
        def build(folder: Path) -> None:
            result = compute()
            if not isinstance(result, dict):
                raise TypeError(f"cache step {kind} returned {type(result).__name__}, expected a dict")
            write_json(folder / RESULT_FILE, _jsonable(result))

        path = self.folder(kind, settings, build)
        try:
            return _map_leaves(read_json(path / RESULT_FILE), lambda v: float(v) if v in ("nan", "inf", "-inf") else v)
        except DiffdictError:
            raise DiffdictError(f"cache entry {path} is damaged; delete it and rerun") from None

    def stats(self) -> dict[str, dict[str, int]]:
        return {"hits": dict(self.hits), "computed": dict(self.computed),
                "seconds": {kind: round(t, 1) for kind, t in self.seconds.items()}}


__all__ = ["CACHE_VERSION", "Cache", "settings_key", "text_digest"]
