"""The activation store: sharded, resumable, verifiable, streamed from disk.

A store is a directory::

    STORE/
      store.json                  header: format, settings, sites (d, token grid), dtype,
                                  chunk size, prompts; written once, compared on reopen
      shards/<site>/<chunk>.safetensors   "acts" (n, d) in the store dtype and
                                  "meta" (n, 4) int32: prompt_id, step, row, col
      images/<chunk>.safetensors  "images" uint8 (n_prompts_in_chunk, H, W, 3), optional
      chunks/<chunk>.json         completion record of a chunk: files, sizes, sha256s
      manifest.json               the finished store: header + every chunk record + digest

Work is divided into *chunks*: a fixed consecutive range of prompt ids. A chunk's files
are written to temporary names, fsynced and renamed; only then is its completion record
written (atomically). A chunk is complete iff its record exists and matches the files,
so a process killed at any moment leaves at most an incomplete chunk that the next run
rewrites, and several processes (e.g. torchrun ranks) can write disjoint chunks into one
store without coordinating. :meth:`StoreWriter.finalize` assembles ``manifest.json``
from the records in chunk order; readers only open finalized stores.

The ``digest`` of a store is a sha256 over the content hashes (activations and per-token
metadata, in the store dtype) of every shard in canonical order (sites sorted, chunks in
order), plus the sites, d, grids, dtype and token counts. It does not depend on how many
processes wrote the store or whether it was resumed; it does depend on the chunk size,
which is part of the store's settings.

Readers trust nothing they have not checked: :func:`open_store` cross-checks every
manifest field with ``store.json``, the chunk records and the digest, and refuses any file
path that leads outside the store; each file is hashed once per opened store (xxh3-128,
from the bytes the loader reads, or just ahead of the loader on a background thread) and
compared with its record before any batch holding its data is handed out. ``verify=False``
(the commands' ``--no-verify``) skips the hashing.
"""

from diffdict.store.format import DTYPES
from diffdict.store.importing import import_array
from diffdict.store.loader import BatchIterator, _expected_hash, _hash_problem, reads_verified, verification
from diffdict.store.reader import Store, open_store
from diffdict.store.verify import store_info, verify_store
from diffdict.store.writer import StoreWriter

__all__ = [
    "BatchIterator",
    "Store",
    "StoreWriter",
    "import_array",
    "open_store",
    "store_info",
    "verify_store",
]
