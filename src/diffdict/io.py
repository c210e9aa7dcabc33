"""Safe file I/O shared by every stage: atomic writes and safetensors-only weights.

Nothing in diffdict loads pickles. Checkpoints that hold optimiser state and counters
are flattened into one safetensors file (tensors) plus JSON metadata (everything else).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from diffdict.errors import DiffdictError


@contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to; once the block succeeds it is
    fsynced and renamed over ``path``, and on any error it is removed (``path`` untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_target(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in blocks."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise DiffdictError(f"cannot read {path}: {error.strerror or error}") from None


OUTPUT_MARKER = ".diffdict-output.json"


def weights_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A short sha256 of named tensors (names and float32 values, in name order): what a
    toy store, feature statistics and study cache entries record of the weights they
    were made with."""
    digest = hashlib.sha256()
    for name, value in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def claim_output_folder(path: str | Path, command: str, own_files: tuple[str, ...] = ()) -> Path:
    """Make ``path`` the output folder of ``command`` and return it.

    A new or empty folder is created and marked (``OUTPUT_MARKER``); a folder marked by
    ``command``, or holding one of ``own_files`` (what earlier runs of it wrote), is
    reused. Anything else, an existing file or another non-empty folder, is refused in
    one line, before anything is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DiffdictError(f"{path} is an existing file; {command} writes a folder there")
    marker = path / OUTPUT_MARKER
    if path.is_dir() and any(path.iterdir()):
        try:
            mark = json.loads(marker.read_text()).get("command") if marker.is_file() else None
        except (OSError, ValueError, AttributeError):
            mark = None
        if mark != command and not any((path / name).exists() for name in own_files):
            by = f" (written by {mark})" if mark else ""
            raise DiffdictError(f"{path} exists, is not empty and is not an output folder of {command}{by}; "
                                "choose a new or empty folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            write_json(marker, {"command": command})
    except OSError as error:
        raise DiffdictError(f"cannot create the output folder {path}: {error.strerror or error}") from None
    return path


_OS_ERRORS = {errno.ENOSPC: "disk full", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
              errno.EROFS: "read-only file system"}


def describe_os_error(error: OSError) -> str:
    """An OS error in a few words, with the file it names."""
    what = _OS_ERRORS.get(error.errno) or error.strerror or str(error)
    return what + (f" ({error.filename})" if getattr(error, "filename", None) else "")


def read_json(path: str | Path) -> Any:
    """A JSON file; every failure (missing, corrupt, a folder, no permission) one line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DiffdictError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DiffdictError(f"corrupt JSON file {path}: {error}") from None
    except OSError as error:
        raise DiffdictError(f"cannot read {path}: {describe_os_error(error)}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (tensors are made contiguous and detached)."""
    with atomic_target(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or corrupt file is one clear error."""
    path = Path(path)
    if not path.exists():
        raise DiffdictError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DiffdictError(f"corrupt or unreadable weights file {path}: {error}") from None


def flatten_state(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure into its tensors (by dotted path) and a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[path] = node
            return {"__tensor__": path}
        if isinstance(node, dict):
            return {"__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, (list, tuple)):
            return {"__list__" if isinstance(node, list) else "__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        return node

    return tensors, walk(tree, prefix or "root")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__dict__" in node:
                return {walk(k): walk(v) for k, v in node["__dict__"]}
            if "__list__" in node:
                return [walk(v) for v in node["__list__"]]
            if "__tuple__" in node:
                return tuple(walk(v) for v in node["__tuple__"])
        return node

    return walk(skeleton)


def save_checkpoint(path: str | Path, state: Any) -> None:
    """Save any nest of dicts/lists/tensors/JSON scalars (e.g. optimizer state) as safetensors."""
    tensors, skeleton = flatten_state(state)
    save_tensors(path, tensors, metadata={"skeleton": json.dumps(skeleton)})


def load_checkpoint(path: str | Path) -> Any:
    path = Path(path)
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "skeleton" not in metadata:
        raise DiffdictError(f"{path} is not a diffdict checkpoint (no skeleton metadata)")
    return unflatten_state(tensors, json.loads(metadata["skeleton"]))
