"""Activation sources for training and evaluation: an (N, d) array file or a store.

Training batches are a pure function of (seed, step): for an array file, token position
p of the training stream is row ``perm_e[p mod N]`` with e = p // N and perm_e a
permutation seeded by (seed, e); for a store, batch s is the s-th batch of the store's
own shuffled iterator for (seed, epoch). Every batch is the same global batch whatever
the number of processes; each rank takes its contiguous slice of it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from diffdict.errors import DiffdictError

ARRAY_SUFFIXES = (".npy", ".safetensors")


@dataclass
class Batch:
    step: int
    x: Tensor  # (B_local, d) float32
    labels: dict[str, Tensor]  # name -> (B_local,) ints: token index, or prompt_id/step/row/col

    def describe_row(self, row: int) -> str:
        parts = [f"{name} {int(value[row])}" for name, value in self.labels.items()]
        return ", ".join(parts) if parts else f"row {row} of the batch"


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> 1)


class ActivationSource:
    name: str
    d: int
    num_tokens: int

    def batches(self, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
        """The global batches from ``start_step`` on, each cut to this rank's contiguous slice."""
        self.check_batch_size(batch_size, world_size)
        share = batch_size // world_size
        yield from self._batches(batch_size, seed, start_step, slice(rank * share, (rank + 1) * share))

    def sample(self, n: int, seed: int) -> Tensor:
        raise NotImplementedError

    def sequential(self, batch_size: int, max_tokens: int | None = None) -> Iterator[Tensor]:
        stop = self.num_tokens if max_tokens is None else min(max_tokens, self.num_tokens)
        for start in range(0, stop, batch_size):
            yield self._read(start, min(start + batch_size, stop))

    def _read(self, start: int, stop: int) -> Tensor:
        raise NotImplementedError

    def check_batch_size(self, batch_size: int, world_size: int) -> None:
        if batch_size < 1:
            raise DiffdictError(f"--batch-size must be positive, got {batch_size}")
        if batch_size % world_size:
            raise DiffdictError(f"--batch-size {batch_size} does not split evenly over {world_size} processes")
        if batch_size > self.num_tokens:
            raise DiffdictError(f"--batch-size {batch_size} is larger than the {self.num_tokens} tokens of {self.name}")


class ArraySource(ActivationSource):
    def __init__(self, path: Path, key: str | None = None):
        self.name = str(path)
        if path.suffix == ".npy":
            try:
                self.array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as error:
                raise DiffdictError(f"cannot read {path} as a .npy array: {error}") from None
            if self.array.dtype.kind != "f":
                raise DiffdictError(f"{path} holds {self.array.dtype} values; expected floating point activations")
        else:
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    keys = list(handle.keys())
                    if key is None and len(keys) != 1:
                        raise DiffdictError(
                            f"{path} holds several tensors ({', '.join(keys)}); choose one with --site"
                        )
                    key = key if key is not None else keys[0]
                    if key not in keys:
                        raise DiffdictError(f"{path} has no tensor {key!r}; it has {', '.join(keys)}")
                    self.array = handle.get_tensor(key)
            except (SafetensorError, OSError, ValueError, RuntimeError) as error:
                raise DiffdictError(f"cannot read {path} as safetensors: {error}") from None
            if not self.array.is_floating_point():
                raise DiffdictError(f"{path} tensor {key!r} holds {self.array.dtype}; expected floating point")
        if self.array.ndim != 2 or self.array.shape[0] < 1:
            raise DiffdictError(f"{path} has shape {tuple(self.array.shape)}; expected (tokens, d)")
        self.num_tokens, self.d = int(self.array.shape[0]), int(self.array.shape[1])
        self._perm_epoch, self._perm = -1, None

    def _rows(self, rows: np.ndarray) -> Tensor:
        if isinstance(self.array, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.array[rows])).float()
        return self.array[torch.from_numpy(rows)].float()

    def _permutation(self, seed: int, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(_mix(seed, epoch)).permutation(self.num_tokens)
            self._perm_epoch = epoch
        return self._perm

    def _batches(self, batch_size, seed, step, local):
        while True:
            positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
            rows = np.empty(batch_size, dtype=np.int64)
            for epoch in np.unique(positions // self.num_tokens):
                in_epoch = positions // self.num_tokens == epoch
                rows[in_epoch] = self._permutation(seed, int(epoch))[positions[in_epoch] % self.num_tokens]
            # Sorted rows read a memory-mapped file in one sweep; order within a batch
            # does not change the loss.
            rows = np.sort(rows)[local]
            yield Batch(step, self._rows(rows), {"token": torch.from_numpy(rows)})
            step += 1

    def sample(self, n, seed):
        n = min(n, self.num_tokens)
        rows = np.sort(np.random.default_rng(_mix(seed, 1 << 30)).choice(self.num_tokens, n, replace=False))
        return self._rows(rows)

    def _read(self, start, stop):
        return self._rows(np.arange(start, stop))


class StoreSource(ActivationSource):
    def __init__(self, path: Path, site: str | None):
        from diffdict.store import open_store

        self.store = open_store(path)
        sites = self.store.sites
        if site is None:
            if len(sites) != 1:
                raise DiffdictError(f"the store {path} has sites {', '.join(sites)}; choose one with --site")
            site = sites[0]
        self.site = site
        self.d = self.store.d(site)  # raises for an unknown site
        self.num_tokens = self.store.num_tokens(site)
        self.name = f"site {site} of the store {path}"

    def _batches(self, batch_size, seed, step, local):
        per_epoch = self.num_tokens // batch_size
        while True:
            epoch, skip = divmod(step, per_epoch)
            iterator = self.store.iter_batches(self.site, batch_size, shuffle=True, seed=seed, epoch=epoch,
                                               with_meta=True, drop_last=True,
                                               buffer_tokens=max(batch_size, 1 << 20))
            # The store iterator cannot seek: a resumed run reads and drops the batches
            # of the current epoch it has already trained on.
            first = step
            for index, (x, meta) in enumerate(iterator):
                if index < skip:
                    continue
                yield Batch(step, x[local].float(), {k: v[local] for k, v in meta.items()})
                step += 1
            if step == first:
                raise DiffdictError(f"{self.name} yielded no batch of {batch_size} tokens in epoch {epoch}")

    def sample(self, n, seed):
        n = min(n, self.num_tokens)
        iterator = self.store.iter_batches(self.site, n, shuffle=True, seed=_mix(seed, 1 << 30) % (1 << 31),
                                           epoch=0, buffer_tokens=max(n, 1 << 20))
        return next(iter(iterator)).float()

    def _read(self, start, stop):
        return self.store.read(self.site, start, stop)[0].float()


def open_activations(path: str | Path, site: str | None = None) -> ActivationSource:
    """An activation source: a store folder, or an (N, d) ``.npy`` / ``.safetensors`` file
    (``site`` then picks a tensor of a multi-tensor safetensors file)."""
    path = Path(path)
    if path.is_dir():
        return StoreSource(path, site)
    if not path.exists():
        raise DiffdictError(f"activations not found: {path}")
    if path.suffix not in ARRAY_SUFFIXES:
        raise DiffdictError(f"cannot read activations from {path}: expected a store folder, .npy or .safetensors")
    return ArraySource(path, site)


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        items.put(item, timeout=0.1)
                        break
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as error:  # handed to the consumer
            items.put(error)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # Join the producer: a daemon thread still inside torch code when the interpreter
        # exits is killed mid-call, and C++ aborts ("terminate called without an active
        # exception"). Drain the queue so a producer blocked on a full one can finish.
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.05)
        thread.join()
