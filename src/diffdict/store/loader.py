"""Reading shards and verifying them as they are read, and the shuffling loader.

Verification on read: each file's hash is computed from the bytes the loader reads, as
it reads them (:func:`_pread`), and confirmed before any batch holding its data is
handed out (:class:`_FileVerifier`). Shards are read with pread(2) at byte offsets taken
from their safetensors header (:class:`_ShardFile`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import math
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch
import xxhash

from diffdict.errors import DiffdictError, require_int
from diffdict.store.format import DEFAULT_BUFFER_TOKENS, DTYPES, META_FIELDS, _FAST_HASH, _describe_os_error, _meta_dict

if TYPE_CHECKING:
    from diffdict.store.reader import Store

# --------------------------------------------------------------------------- verification on read

_HASH_PIECE = 1 << 20  # bytes read, then hashed, at a time: hashed while still in the CPU cache
_MAPPED_PIECE = 1 << 22  # bytes of a mapped file hashed per call
_FILES_AHEAD = 2  # files hashed in the background ahead of the one the loader starts reading
_verify_reads: contextvars.ContextVar[bool] = contextvars.ContextVar("diffdict_verify_reads", default=True)


@contextlib.contextmanager
def verification(enabled: bool):
    """Within the block, :func:`open_store` checks (``True``, the default) or skips
    (``False``, the commands' ``--no-verify``) the hash of each file it reads."""
    token = _verify_reads.set(bool(enabled))
    try:
        yield
    finally:
        _verify_reads.reset(token)


def reads_verified() -> bool:
    """Whether :func:`open_store` checks file hashes here (see :func:`verification`)."""
    return _verify_reads.get()


class _FileHash:
    """The hash of one file, computed from its bytes in file order as a reader reads them.

    The bytes ``[0, position)`` are hashed. :func:`_pread` feeds it the bytes the loader
    reads anyway; :meth:`advance` reads and hashes those before ``to`` that the loader did
    not read (the header, other tensors, blocks it reads later), through a small buffer;
    :meth:`finish` hashes the rest of the file and compares.
    """

    def __init__(self, file: Path, expected: tuple[str, str]):
        self.file = file
        self.algorithm, self.expected = expected
        self.digest = xxhash.xxh3_128() if self.algorithm == _FAST_HASH else hashlib.sha256()
        self.position = 0
        self.lock = threading.Lock()  # one reader feeds it at a time

    def feed(self, offset: int, data: memoryview) -> None:
        """Hash what ``data`` (the file's bytes at ``offset``) adds; ``offset <= position``."""
        skip = self.position - offset
        if 0 <= skip < len(data):
            self.digest.update(data[skip:])
            self.position = offset + len(data)

    def advance(self, fd: int, to: int | None) -> None:
        """Read and hash the bytes ``[position, to)`` (``None``: to the end of the file)."""
        if to is not None and to <= self.position:
            return
        if to is None and self._hash_mapped(fd):
            return
        scratch = memoryview(bytearray(_HASH_PIECE))
        while to is None or self.position < to:
            want = _HASH_PIECE if to is None else min(_HASH_PIECE, to - self.position)
            n = os.preadv(fd, [scratch[:want]], self.position)
            if n == 0:
                if to is None:
                    return
                raise OSError(errno.EIO, "unexpected end of file")
            self.digest.update(scratch[:n])
            self.position += n

    def _hash_mapped(self, fd: int) -> bool:
        """Hash the rest of the file straight from the page cache (no copy: about twice as
        fast as reading it); False where the file cannot be mapped (empty, special)."""
        try:
            mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return False
        try:
            with memoryview(mapped) as view:
                for start in range(self.position, len(view), _MAPPED_PIECE):
                    self.digest.update(view[start:start + _MAPPED_PIECE])
                self.position = max(self.position, len(view))
        finally:
            mapped.close()
        return True

    def finish(self) -> str | None:
        """None if the whole file hashes to the expected digest, else the problem in words."""
        try:
            fd = os.open(self.file, os.O_RDONLY)
            try:
                self.advance(fd, None)
            finally:
                os.close(fd)
        except OSError as error:
            return f"cannot read {self.file}: {_describe_os_error(error)}"
        if self.digest.hexdigest() != self.expected:
            return (f"corrupt file {self.file}: {self.algorithm} does not match the manifest; "
                    "run `diffdict store verify` on the store")
        return None


def _hash_problem(file: Path, expected: tuple[str, str]) -> str | None:
    """None if ``file`` hashes to ``expected`` = (algorithm, hex digest), else the problem in words."""
    return _FileHash(file, expected).finish()


def _expected_hash(entry: dict) -> tuple[str, str]:
    return (_FAST_HASH, entry[_FAST_HASH]) if _FAST_HASH in entry else ("sha256", entry["sha256"])


def _pread(fd: int, view: memoryview, offset: int, file_hash: _FileHash | None = None) -> None:
    """Fill ``view`` with the file's bytes at ``offset``. With ``file_hash``, the bytes are
    hashed as they are read, a piece at a time while the piece is still in the CPU cache,
    after any bytes before ``offset`` that the hash still lacks."""
    if file_hash is not None and file_hash.position >= offset + len(view):
        file_hash = None  # hashed already
    if file_hash is not None:
        file_hash.advance(fd, offset)
    piece = _HASH_PIECE if file_hash is not None else len(view)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:done + piece]], offset + done)
        if n == 0:
            raise OSError(errno.EIO, "unexpected end of file")
        if file_hash is not None:
            file_hash.feed(offset + done, view[done:done + n])
        done += n


class _FileVerifier:
    """Checks each file of a store against the hash its manifest records, once per file.

    Two ways a file gets hashed:

    * *inline*: the loader's reads feed the file's hash (:meth:`hashing`), so a file read
      in order is read once; ``confirm`` hashes what the reads left out;
    * *ahead*: :meth:`hash_ahead` hands files the loader will read next to one background
      thread, which hashes them while the loader works on the current file (the hashing
      releases the GIL). Only a few files ahead, so their pages are still cached when the
      loader reads them: on a cold cache the disk is still read once.

    ``confirm(files)`` waits for, or computes, each file's result and raises the first
    problem. The loader confirms every file it has read from before it hands out a
    batch, so no batch ever holds unverified data.
    """

    def __init__(self, expected: dict[Path, tuple[str, str]]):
        self._expected = expected
        self._hashes: dict[Path, _FileHash] = {}  # fed by reads, not yet confirmed
        self._ahead: dict[Path, threading.Event] = {}  # being hashed in the background
        self._results: dict[Path, str | None] = {}  # confirmed files: None, or the problem
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hashing(self, file: Path):
        """The running hash of ``file`` for a read to feed (None when it is confirmed or
        hashed in the background)."""
        with self._lock:
            if file in self._results or file in self._ahead:
                file_hash = None
            else:
                file_hash = self._hashes.get(file)
                if file_hash is None:
                    file_hash = self._hashes[file] = _FileHash(file, self._expected[file])
        with file_hash.lock if file_hash is not None else contextlib.nullcontext():
            yield file_hash

    def hash_ahead(self, files: Iterable[Path]) -> None:
        """Hash these files on the background thread, unless already read from or hashed."""
        for file in files:
            with self._lock:
                if file in self._results or file in self._ahead or file in self._hashes:
                    continue
                done = self._ahead[file] = threading.Event()
            _background.submit(self._hash_in_background, file, done)

    def _hash_in_background(self, file: Path, done: threading.Event) -> None:
        try:
            problem = _FileHash(file, self._expected[file]).finish()
        except Exception as error:  # noqa: BLE001 (a waiting confirm() must not hang)
            problem = f"cannot verify {file}: {error}"
        with self._lock:
            self._results[file] = problem
            del self._ahead[file]
        done.set()

    def confirm(self, files: Iterable[Path]) -> None:
        for file in files:
            with self._lock:
                done = self._ahead.get(file)
                file_hash = None
                if done is None and file not in self._results:
                    file_hash = self._hashes.pop(file, None) or _FileHash(file, self._expected[file])
            if done is not None:
                done.wait()
            elif file_hash is not None:
                with file_hash.lock:
                    problem = file_hash.finish()
                with self._lock:
                    self._results.setdefault(file, problem)
            problem = self._results[file]
            if problem:
                raise DiffdictError(problem)


def _new_background() -> None:
    """The one thread that hashes files ahead of the loaders (started on first use; at exit,
    Python lets it finish the few files it was handed, then joins it). A forked child gets
    a new one: the parent's thread is not in the child."""
    global _background
    _background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffdict-verify")


_new_background()
os.register_at_fork(after_in_child=_new_background)


def _wrap_read_error(file: Path, error: Exception) -> DiffdictError:
    return DiffdictError(f"cannot read shard {file}: {error}; run `diffdict store verify` on the store")


# --------------------------------------------------------------------------- shard files

_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
              "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8}


class _ShardFile:
    """Reads row ranges of a safetensors file with pread(2) straight into a tensor.

    No mmap and no intermediate copy: the loader reads blocks directly into its buffer.
    A header that does not fit the file (truncation) is an error naming the file.

    The header (8-byte length, then JSON) is parsed here rather than with
    ``safetensors.safe_open``: safetensors (0.8) gives a tensor's dtype and shape but not
    its byte offset in the file, which pread(2), and the hash fed by it, need; and
    ``safe_open`` maps the whole file and words a truncated one in its own terms.
    """

    def __init__(self, path: Path, expect: dict[str, tuple[torch.dtype, list[int]]]):
        self.path = path
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise ValueError("file shorter than a safetensors header")
                length = int.from_bytes(prefix, "little")
                if length > min(size - 8, 100 << 20):
                    raise ValueError("header length exceeds the file")
                header = json.loads(handle.read(length))
        except FileNotFoundError:
            raise DiffdictError(f"missing shard {path}; run `diffdict store verify` on the store") from None
        except (OSError, ValueError) as error:
            raise _wrap_read_error(path, error) from None
        self.data_start = 8 + length
        self.tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = [int(v) for v in info["shape"]]
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise _wrap_read_error(path, ValueError(f"bad header entry for {name!r}")) from None
            if self.data_start + end > size:
                raise DiffdictError(
                    f"shard {path} is truncated ({size} bytes, its header needs {self.data_start + end}); "
                    "run `diffdict store verify` on the store"
                )
            self.tensors[name] = (dtype, shape, begin)
        described = {name: (dtype, shape) for name, (dtype, shape, _) in self.tensors.items()}
        if described != expect:
            have = ", ".join(f"{n} {str(d).removeprefix('torch.')}{tuple(s)}" for n, (d, s) in sorted(described.items()))
            want = ", ".join(f"{n} {str(d).removeprefix('torch.')}{tuple(s)}" for n, (d, s) in sorted(expect.items()))
            raise DiffdictError(f"shard {path} holds {have}; the manifest describes {want}; "
                                "run `diffdict store verify` on the store")

    def read_rows(self, name: str, start: int, stop: int, out: torch.Tensor | None = None,
                  file_hash: _FileHash | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name``, into ``out`` when given; the bytes read
        feed ``file_hash`` when given (see :func:`_pread`)."""
        if name not in self.tensors:
            raise _wrap_read_error(self.path, KeyError(f"no tensor {name!r}"))
        dtype, shape, begin = self.tensors[name]
        if not 0 <= start <= stop <= shape[0]:
            raise _wrap_read_error(self.path, IndexError(f"rows {start}:{stop} of {shape[0]}"))
        if out is None:
            out = torch.empty((stop - start, *shape[1:]), dtype=dtype)
        elif out.dtype != dtype or tuple(out.shape) != (stop - start, *shape[1:]) or not out.is_contiguous():
            raise ValueError(f"bad output tensor for rows of {name!r} of {self.path}")
        if stop == start or out.numel() == 0:
            return out
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        view = memoryview(out.view(-1).view(torch.uint8).numpy())
        offset = self.data_start + begin + start * row_bytes
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                _pread(fd, view, offset, file_hash)
            finally:
                os.close(fd)
        except OSError as error:
            raise _wrap_read_error(self.path, error) from None
        return out

# --------------------------------------------------------------------------- the loader


class BatchIterator:
    """``Store.iter_batches(site, batch_size, ...)``: batches (B, d) of ``site``; every token exactly once per epoch.

    With ``shuffle`` the shards are cut into blocks of ``block_tokens`` (default
    buffer_tokens // 32), read in a random order determined by (seed, epoch), and mixed
    in a buffer of at most ``buffer_tokens`` tokens: memory is bounded by the buffer
    (buffer_tokens x d in the store dtype, plus one block and one batch), not by the
    store. Batches are converted to ``dtype`` (float32) as they are emitted. ``rank``/``world_size``
    give each data-parallel process a disjoint share of the blocks. Yields a tensor, or
    ``(tensor, meta)`` with ``with_meta``.

    Exposes what it holds: ``buffer_tokens`` (rows of its buffer), ``block_tokens`` (the
    most tokens read at once), ``peak_buffered`` (most tokens held so far), ``num_tokens``
    (tokens it will yield) and ``len()`` (batches it will yield).
    """

    def __init__(self, store: Store, site: str, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 buffer_tokens: int = DEFAULT_BUFFER_TOKENS, with_meta: bool = False, *,
                 block_tokens: int | None = None, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 dtype: torch.dtype = torch.float32):
        for name, value, low in (("batch size", batch_size, 1), ("buffer_tokens", buffer_tokens, 1),
                                 ("seed", seed, 0), ("epoch", epoch, 0), ("world size", world_size, 1)):
            require_int(value, name, low)
        require_int(rank, "rank", 0, world_size - 1)
        if shuffle and buffer_tokens < batch_size:
            raise DiffdictError(f"buffer_tokens ({buffer_tokens}) must be at least the batch size ({batch_size})")
        if block_tokens is not None and (not isinstance(block_tokens, int) or block_tokens < 1):
            raise DiffdictError(f"bad block_tokens {block_tokens!r}: expected a positive integer")
        self.store = store
        self.site = site
        self.d = store.d(site)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.with_meta = with_meta
        self.drop_last = drop_last
        self.dtype = dtype
        shards = store.shards(site)
        total = sum(count for _, _, count in shards)
        if shuffle:
            self.buffer_tokens = max(1, min(int(buffer_tokens), total))
            default_block = max(1, self.buffer_tokens // 32)
            self.block_tokens = max(1, min(block_tokens or default_block, max(1, self.buffer_tokens // 2)))
        else:
            self.block_tokens = block_tokens or max(self.batch_size, min(int(buffer_tokens), 1 << 14))
            self.buffer_tokens = 0
        blocks = [(index, a, min(a + self.block_tokens, count)) for index, (_, _, count) in enumerate(shards)
                  for a in range(0, count, self.block_tokens)]
        if shuffle:
            order = np.random.default_rng([int(seed), int(epoch)]).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        self._blocks = blocks[rank::world_size]
        # files in the order the loader first reads them, for hashing ahead of it
        self._file_order = list(dict.fromkeys(shards[i][0] for i, _, _ in self._blocks))
        self._started = 0  # files of _file_order the loader has started reading
        self.num_tokens = sum(b - a for _, a, b in self._blocks)
        self.peak_buffered = 0
        state = np.random.SeedSequence([int(seed), int(epoch), int(rank), 1]).generate_state(2)
        self._generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        self._iterator = self._shuffled() if shuffle else self._sequential()
        # files read since the last batch was handed out: confirmed against the manifest
        # before the next one is
        self._unconfirmed: set[Path] = set()

    def __len__(self) -> int:
        return self.num_tokens // self.batch_size if self.drop_last else math.ceil(self.num_tokens / self.batch_size)

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self):
        batch = next(self._iterator)
        if self._unconfirmed:
            self.store._confirm(sorted(self._unconfirmed))
            self._unconfirmed.clear()
        return batch

    def _rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Room for ``n`` tokens in the store dtype, and for their metadata (with ``with_meta``)."""
        x = torch.empty(n, self.d, dtype=DTYPES[self.store.dtype])
        return x, torch.empty(n, len(META_FIELDS), dtype=torch.int32) if self.with_meta else None

    def _read(self, block, out: torch.Tensor, mout: torch.Tensor | None, at: int = 0):
        """Read a block in the store dtype into rows ``at:`` of ``out`` (and ``mout``)."""
        shard_index, a, b = block
        file = self.store.shards(self.site)[shard_index][0]
        self._unconfirmed.add(file)
        if self._started < len(self._file_order) and file == self._file_order[self._started]:
            self._started += 1  # the loader hashes this file as it reads it; the next few are
            self.store._hash_ahead(self._file_order[self._started:self._started + _FILES_AHEAD])  # hashed meanwhile
        x = self.store._read_rows(file, "acts", a, b, out[at:at + b - a])
        m = self.store._read_rows(file, "meta", a, b, mout[at:at + b - a]) if self.with_meta else None
        return x, m

    def _out(self, x: torch.Tensor, m: torch.Tensor | None, copy: bool = False):
        x = x.to(self.dtype, copy=copy)
        if self.with_meta:
            return x, _meta_dict(m.clone() if copy else m)
        return x

    def _sequential(self):
        """Canonical order; blocks are read into one reused staging tensor."""
        B = self.batch_size
        stage, mstage = self._rows(self.block_tokens)
        carry_x, carry_m = None, None  # fewer than B tokens left over from the previous block
        for block in self._blocks:
            s = block[2] - block[1]
            x, m = self._read(block, stage, mstage)
            j = 0
            if carry_x is not None:
                j = min(B - carry_x.shape[0], s)
                carry_x = torch.cat([carry_x, x[:j]])
                carry_m = torch.cat([carry_m, m[:j]]) if m is not None else None
                if carry_x.shape[0] == B:
                    yield self._out(carry_x, carry_m)
                    carry_x = carry_m = None
            while j + B <= s:
                yield self._out(x[j:j + B], m[j:j + B] if m is not None else None, copy=True)
                j += B
            if j < s:
                carry_x = x[j:s].clone()
                carry_m = m[j:s].clone() if m is not None else None
            held = s + (carry_x.shape[0] if carry_x is not None else 0)
            self.peak_buffered = max(self.peak_buffered, held)
        if carry_x is not None and not self.drop_last:
            yield self._out(carry_x, carry_m)

    def _shuffled(self):
        """A shuffle buffer with random eviction.

        Fill the buffer with blocks (read in a random order straight into it); then
        repeatedly emit about half of the buffered tokens, chosen uniformly at random, as
        batches, and read new blocks into the freed positions. Each token enters the
        buffer once and leaves it once. Memory: the buffer (buffer_tokens x d in the store
        dtype), one staging block and one batch.
        """
        blocks, B, cap, g = self._blocks, self.batch_size, self.buffer_tokens, self._generator
        if not blocks:
            return
        store_dtype = DTYPES[self.store.dtype]
        buf, mbuf = self._rows(cap)
        stage, mstage = self._rows(self.block_tokens)
        # gathers and scatters move whole rows: do them on the widest integer view of a row
        row_bytes = self.d * store_dtype.itemsize
        raw = next(t for t in (torch.int64, torch.int32, torch.int16, torch.uint8) if row_bytes % t.itemsize == 0)
        rbuf, rstage = buf.view(raw), stage.view(raw)
        size = [b - a for _, a, b in blocks]
        n = 0
        bi = 0

        def emit(index):
            x = rbuf.index_select(0, index).view(store_dtype)
            return self._out(x, mbuf.index_select(0, index) if mbuf is not None else None)

        def append():
            nonlocal n, bi
            while bi < len(blocks) and n + size[bi] <= cap:
                self._read(blocks[bi], buf, mbuf, n)
                n += size[bi]
                bi += 1
            self.peak_buffered = max(self.peak_buffered, n)

        append()
        while bi < len(blocks):
            need = size[bi] - (cap - n)  # > 0: the next block does not fit
            k = -(-max(need, n // 2) // B) * B
            if k > n:
                k = n // B * B if n // B * B >= need else n
            out = torch.randperm(n, generator=g)[:k]
            for j in range(0, k, B):
                yield emit(out[j:j + B])
            # the emitted positions are holes: fill them with new blocks
            h = 0
            while bi < len(blocks) and size[bi] <= k - h:
                s = size[bi]
                _, m = self._read(blocks[bi], stage, mstage)
                rbuf.index_copy_(0, out[h:h + s], rstage[:s])
                if mbuf is not None:
                    mbuf.index_copy_(0, out[h:h + s], m)
                h += s
                bi += 1
            if h < k:  # compact the remaining holes away, then append at the end
                holes = out[h:]
                new_n = n - holes.numel()
                keep = torch.ones(n, dtype=torch.bool)
                keep[holes] = False
                source = torch.arange(new_n, n)[keep[new_n:]]
                target = holes[holes < new_n]
                if source.numel():
                    rbuf.index_copy_(0, target, rbuf.index_select(0, source))
                    if mbuf is not None:
                        mbuf.index_copy_(0, target, mbuf.index_select(0, source))
                n = new_n
                append()
        order = torch.randperm(n, generator=g)
        for j in range(0, n, B):
            index = order[j:j + B]
            if index.numel() < B and self.drop_last:
                break
            yield emit(index)
