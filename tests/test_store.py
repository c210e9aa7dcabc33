"""The activation store: resumable writing, refusing to mix, verification, the streaming
loader, import, and bad input. Synthetic tensors only: no diffusion model needed."""

from __future__ import annotations

import collections
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import diffdict.store as store_mod
import diffdict.store.writer as store_writer
from diffdict.cli import main as cli_main
from diffdict.errors import DiffdictError
from diffdict.store import StoreWriter, import_array, open_store, store_info, verify_store

SETTINGS = {"model": "toy", "model_settings": {"size": 32}, "capture": {"what": "update", "steps": [0]}, "seed": 0}
SITES = {"mid.0": 8, "up.0.0": 4}
GRID = {"mid.0": (2, 2), "up.0.0": (2, 3)}
PROMPTS = [f"a red blob number {i}" for i in range(10)]
CHUNK = 3  # 4 chunks: 3 + 3 + 3 + 1 prompts


def open_writer(path, **overrides) -> StoreWriter:
    args = dict(settings=SETTINGS, sites=SITES, grid=GRID, prompts=PROMPTS, chunk_size=CHUNK, dtype="float16")
    args.update(overrides)
    return StoreWriter.open(path, **args)


def synthetic_chunk(writer: StoreWriter, index: int, steps=(0, 1)):
    """Deterministic activations, metadata and images of one chunk."""
    ids = writer.chunk_prompt_ids(index)
    gen = torch.Generator().manual_seed(1000 + index)
    acts, meta = {}, {}
    for site, d in sorted(writer.sites.items()):
        rows, cols = writer.grid[site]
        grid = [(p, s, r, c) for p in ids for s in steps for r in range(rows) for c in range(cols)]
        columns = torch.tensor(grid, dtype=torch.int64).T
        acts[site] = torch.randn(len(grid), d, generator=gen) * 3
        meta[site] = dict(zip(("prompt_id", "step", "row", "col"), columns))
    images = np.stack([np.full((5, 6, 3), p % 256, dtype=np.uint8) for p in ids])
    return acts, meta, images


def write_store(path, chunks=None, finalize=True, **overrides) -> StoreWriter:
    writer = open_writer(path, **overrides)
    for index in writer.pending_chunks() if chunks is None else chunks:
        writer.write_chunk(index, *synthetic_chunk(writer, index))
    if finalize:
        writer.finalize()
    return writer


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "store"
    write_store(path)
    return path


def temp_files(path: Path) -> list[Path]:
    return [p for p in path.rglob(".*") if p.name.endswith(".tmp")]


def run_cli(argv, capsys):
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- round trip


def test_roundtrip_reader_info_and_cli(reference, capsys):
    store = open_store(reference)
    assert store.sites == ["mid.0", "up.0.0"]
    assert store.d("mid.0") == 8 and store.grid("up.0.0") == (2, 3)
    assert store.dtype == "float16" and store.settings == SETTINGS and store.prompts == PROMPTS
    assert store.num_tokens("mid.0") == 10 * 2 * 4 and store.num_tokens("up.0.0") == 10 * 2 * 6
    writer = open_writer(reference)  # reopening a finished store with the same arguments is fine
    assert writer.pending_chunks() == [] and writer.num_chunks == 4
    expected = torch.cat([synthetic_chunk(writer, i)[0]["up.0.0"] for i in range(4)]).half().float()
    acts, meta = store.read("up.0.0")
    assert acts.dtype == torch.float32 and torch.equal(acts, expected)
    assert meta["prompt_id"].dtype == torch.int32 and meta["prompt_id"][-1] == 9
    part, part_meta = store.read("up.0.0", 30, 50)
    assert torch.equal(part, expected[30:50]) and torch.equal(part_meta["row"], meta["row"][30:50])
    assert store.has_images and store.images([9, 0]).shape == (2, 5, 6, 3)
    assert store.images([9, 0])[:, 0, 0, 0].tolist() == [9, 0]

    info = store_info(reference)
    assert info["tokens"] == {"mid.0": 80, "up.0.0": 120} and info["model"] == "toy"
    assert info["digest"].startswith("sha256:") and info["n_prompts"] == 10
    code, out, _ = run_cli(["store", "info", str(reference), "--json"], capsys)
    assert code == 0 and json.loads(out)["digest"] == info["digest"]
    code, out, _ = run_cli(["store", "info", str(reference)], capsys)
    assert code == 0 and "mid.0" in out and info["digest"] in out
    code, out, _ = run_cli(["store", "verify", str(reference)], capsys)
    assert code == 0 and out.startswith("ok:")


# --------------------------------------------------------------------------- crash and resume


def test_resume_after_simulated_crash_gives_same_digest(reference, tmp_path):
    path = tmp_path / "store"
    writer = write_store(path, chunks=[0, 2, 3], finalize=False)
    # a crash mid-chunk 1: a finished shard without a record, and a half-written temp file
    (path / "shards/mid.0/000001.safetensors").write_bytes(b"half a shard")
    (path / "shards/up.0.0/.000001.safetensors.999.dead.tmp").write_bytes(b"partial")
    # chunk 3 was recorded but its shard later lost bytes: no longer complete
    shard = path / "shards/up.0.0/000003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DiffdictError, match="not finished"):
        open_store(path)
    assert store_info(path)["finalized"] is False
    with pytest.raises(DiffdictError, match="cannot be finalized: 2 of 4 chunks are missing"):
        writer.finalize()

    resumed = open_writer(path)
    assert resumed.pending_chunks() == [1, 3]
    for index in resumed.pending_chunks():
        resumed.write_chunk(index, *synthetic_chunk(resumed, index))
    resumed.finalize()
    assert store_info(path)["digest"] == store_info(reference)["digest"]
    assert temp_files(path) == []
    verify_store(path)


KILL_SCRIPT = r"""
import os, sys, time
sys.path.insert(0, sys.argv[2])
import diffdict.store.writer as st
from test_store import open_writer, synthetic_chunk

target = os.path.join("up.0.0", "000001.safetensors")
current = [""]
durable, write_all = st._durable_write, st._write_all

def traced_durable(path, data):
    current[0] = str(path)
    return durable(path, data)

def dying_write_all(fd, data):
    if current[0].endswith(target):
        os.write(fd, bytes(data[: len(data) // 2]))
        print("KILLME", flush=True)
        time.sleep(120)
    return write_all(fd, data)

st._durable_write, st._write_all = traced_durable, dying_write_all
writer = open_writer(sys.argv[1])
for index in writer.pending_chunks():
    writer.write_chunk(index, *synthetic_chunk(writer, index))
"""


def test_kill_9_mid_write_then_resume(reference, tmp_path):
    path = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.strip() == "KILLME", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        watchdog.cancel()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # the killed process left chunk 0 complete, chunk 1 half-written and unrecorded
    assert (path / "shards/mid.0/000001.safetensors").exists()
    assert not (path / "chunks/000001.json").exists()
    assert len(temp_files(path)) == 1

    writer = open_writer(path)
    assert writer.pending_chunks() == [1, 2, 3]
    for index in writer.pending_chunks():
        writer.write_chunk(index, *synthetic_chunk(writer, index))
    writer.finalize()
    assert store_info(path)["digest"] == store_info(reference)["digest"]
    assert temp_files(path) == []
    verify_store(path)


def test_two_writers_over_disjoint_chunks_equal_one_writer(reference, tmp_path):
    path = tmp_path / "store"
    rank0, rank1 = open_writer(path), open_writer(path)
    todo0, todo1 = rank0.pending_chunks(0, 2), rank1.pending_chunks(1, 2)
    assert todo0 == [0, 2] and todo1 == [1, 3]
    for a, b in zip(todo0, todo1):
        rank1.write_chunk(b, *synthetic_chunk(rank1, b))
        rank0.write_chunk(a, *synthetic_chunk(rank0, a))
    assert rank0.pending_chunks(0, 2) == [] and rank1.pending_chunks(1, 2) == []
    rank1.finalize()
    rank0.finalize()  # idempotent
    assert store_info(path)["digest"] == store_info(reference)["digest"]
    assert (path / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()


# --------------------------------------------------------------------------- refusing to mix


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(settings={**SETTINGS, "model": "sdxl-turbo"}), "settings differ (model: 'toy' in store, 'sdxl-turbo' requested)"),
        (dict(settings={**SETTINGS, "capture": {"what": "output", "steps": [0]}}), "capture.what"),
        (dict(sites={"mid.0": 8}, grid={"mid.0": (2, 2)}), "sites differ (store has mid.0, up.0.0; requested mid.0)"),
        (dict(sites={**SITES, "mid.0": 16}), "d of site mid.0 differs (8 in store, 16 requested)"),
        (dict(grid={**GRID, "up.0.0": (3, 3)}), "grid of site up.0.0 differs (2x3 in store, 3x3 requested)"),
        (dict(prompts=PROMPTS[:3] + ["a blue square"] + PROMPTS[4:]), "prompts differ (prompt 3:"),
        (dict(prompts=PROMPTS + ["one more"]), "prompts differ (10 in store, 11 requested)"),
        (dict(dtype="float32"), "dtype differs (float16 in store, float32 requested)"),
    ],
)
def test_mixing_refused(tmp_path, change, message):
    path = tmp_path / "store"
    write_store(path, chunks=[0], finalize=False)
    with pytest.raises(DiffdictError) as caught:
        open_writer(path, **change)
    text = str(caught.value)
    assert "refuses to mix" in text and message in text and "\n" not in text
    assert open_writer(path).pending_chunks() == [1, 2, 3]  # nothing was damaged


# --------------------------------------------------------------------------- verify


def test_verify_catches_flipped_byte_and_truncated_shard(tmp_path, capsys):
    path = tmp_path / "store"
    write_store(path)
    verify_store(path)
    shard = path / "shards/mid.0/000001.safetensors"
    original = shard.read_bytes()
    flipped = bytearray(original)
    flipped[-5] ^= 0x01
    shard.write_bytes(bytes(flipped))
    with pytest.raises(DiffdictError, match=r"corrupt file .*shards/mid\.0/000001\.safetensors"):
        verify_store(path)
    code, _, err = run_cli(["store", "verify", str(path)], capsys)
    assert code == 2 and err.startswith("diffdict: error: corrupt file") and err.count("\n") == 1

    shard.write_bytes(original[:-64])
    with pytest.raises(DiffdictError, match=r"truncated file .*shards/mid\.0/000001\.safetensors: \d+ bytes"):
        verify_store(path)
    with pytest.raises(DiffdictError, match=r"000001\.safetensors"):  # readers notice too
        open_store(path).read("mid.0")
    shard.write_bytes(original)
    verify_store(path)
    images = path / "images/000002.safetensors"
    images.write_bytes(images.read_bytes()[:-1] + b"\x07")
    with pytest.raises(DiffdictError, match=r"images/000002\.safetensors"):
        verify_store(path)


# --------------------------------------------------------------------------- loader


def _keys(meta) -> list[tuple]:
    return list(zip(*(meta[name].tolist() for name in ("prompt_id", "step", "row", "col"))))


def test_loader_every_token_once_shuffled_and_bounded(reference, monkeypatch):
    store = open_store(reference)
    site = "up.0.0"
    acts, meta = store.read(site)
    by_key = dict(zip(_keys(meta), acts))
    total = store.num_tokens(site)
    buffer = total // 2  # the store is twice the buffer

    reads = []
    original = store_mod.Store._read_rows

    def counting(self, file, name, start, stop, out=None):
        reads.append(stop - start)
        return original(self, file, name, start, stop, out)

    monkeypatch.setattr(store_mod.Store, "_read_rows", counting)
    loader = store.iter_batches(site, 7, seed=3, epoch=0, buffer_tokens=buffer, with_meta=True)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-total // 7)
    keys = [k for _, m in batches for k in _keys(m)]
    assert collections.Counter(keys) == collections.Counter(_keys(meta))  # every token exactly once
    assert keys != _keys(meta)  # shuffled
    first_prompts = {k[0] for k in _keys(batches[0][1])}
    assert len({p // CHUNK for p in first_prompts}) >= 2  # mixes across shards
    for x, m in batches:  # activations stay with their metadata
        assert x.dtype == torch.float32 and x.shape[1] == 4
        assert all(torch.equal(row, by_key[k]) for row, k in zip(x, _keys(m)))
    # memory: the loader holds at most buffer_tokens tokens and reads small blocks
    assert loader.buffer_tokens <= buffer and loader.peak_buffered <= buffer
    assert max(reads) <= loader.block_tokens <= buffer // 2

    def order(**kw):
        return [k for _, m in store.iter_batches(site, 7, buffer_tokens=buffer, with_meta=True, **kw) for k in _keys(m)]

    assert order(seed=3, epoch=0) == keys  # deterministic
    assert order(seed=3, epoch=1) != keys  # a new order every epoch
    shares = [order(seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) == total
    for block in (None, 3, 50):
        batches = list(store.iter_batches(site, 7, shuffle=False, with_meta=True, block_tokens=block))
        assert [k for _, m in batches for k in _keys(m)] == _keys(meta)
        assert torch.equal(torch.cat([x for x, _ in batches]), acts) and {len(x) for x, _ in batches[:-1]} == {7}
    odd = order(seed=5, block_tokens=5)
    assert sorted(odd) == sorted(_keys(meta)) and odd != _keys(meta)
    plain = next(iter(store.iter_batches(site, 5, buffer_tokens=buffer)))
    assert isinstance(plain, torch.Tensor) and plain.shape == (5, 4)
    assert sum(len(b) for b in store.iter_batches(site, 7, buffer_tokens=buffer, drop_last=True)) == total // 7 * 7


# --------------------------------------------------------------------------- import


def test_import_npy_and_safetensors(tmp_path, capsys):
    array = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "acts.npy", array)
    save_file({"x": torch.from_numpy(array)}, str(tmp_path / "acts.safetensors"))

    store = import_array(tmp_path / "acts.npy", tmp_path / "a", chunk_tokens=16)
    assert store.sites == ["acts"] and store.num_tokens("acts") == 50 and store.d("acts") == 6
    assert store.num_chunks == 4 and not store.has_images and store.prompts == []
    acts, meta = store.read("acts")
    assert torch.equal(acts, torch.from_numpy(array).half().float())
    assert meta["prompt_id"].tolist() == list(range(50)) and meta["step"].abs().sum() == 0
    assert import_array(tmp_path / "acts.npy", tmp_path / "a", chunk_tokens=16).digest == store.digest  # idempotent

    exact = import_array(tmp_path / "acts.safetensors", tmp_path / "b", site="mid.0", dtype="float32", chunk_tokens=16)
    assert torch.equal(exact.read("mid.0")[0], torch.from_numpy(array))
    code, out, _ = run_cli(["store", "import", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "c"),
                            "--site", "mid.0", "--dtype", "float32", "--chunk-tokens", "16"], capsys)
    assert code == 0 and "50 tokens" in out
    assert open_store(tmp_path / "c").digest == exact.digest  # same content, same digest
    brain = import_array(tmp_path / "acts.safetensors", tmp_path / "bf16", dtype="bfloat16", chunk_tokens=16)
    expected = torch.from_numpy(array).bfloat16().float()
    assert torch.equal(brain.read("acts")[0], expected)
    shuffled = torch.cat(list(brain.iter_batches("acts", 8, buffer_tokens=24, seed=1)))
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, expected.tolist()))
    np.save(tmp_path / "other.npy", array * 2)
    with pytest.raises(DiffdictError, match="refuses to mix: settings differ"):
        import_array(tmp_path / "other.npy", tmp_path / "a", chunk_tokens=16)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (float("inf"), "inf")])
def test_non_finite_activations_rejected(tmp_path, value, kind):
    writer = open_writer(tmp_path / "store")
    acts, meta, images = synthetic_chunk(writer, 1)
    position = int((meta["up.0.0"]["prompt_id"] == 4).nonzero()[2, 0])
    acts["up.0.0"][position, 3] = value
    with pytest.raises(DiffdictError, match=rf"non-finite activations \({kind}\) at site 'up.0.0' for prompt id 4"):
        writer.write_chunk(1, acts, meta, images)
    assert not writer.is_complete(1) and not list((tmp_path / "store/shards/mid.0").iterdir())


def test_float16_overflow_rejected(tmp_path):
    writer = open_writer(tmp_path / "store")
    acts, meta, images = synthetic_chunk(writer, 0)
    acts["mid.0"][10, 0] = 1e6
    with pytest.raises(DiffdictError, match=r"overflow float16 for prompt id 1 .*use dtype float32 or bfloat16"):
        writer.write_chunk(0, acts, meta, images)


@pytest.mark.parametrize("failure", ["disk-full", "permission"])
def test_io_error_leaves_no_completed_chunk(tmp_path, monkeypatch, failure):
    path = tmp_path / "store"
    writer = write_store(path, chunks=[0], finalize=False)
    calls = []
    if failure == "disk-full":
        real = store_writer._write_all

        def write_all(fd, data):  # the second file of the chunk fills the disk half way
            calls.append(1)
            if len(calls) == 2:
                os.write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        monkeypatch.setattr(store_writer, "_write_all", write_all)
        message = "disk full"
    else:
        real = os.replace

        def replace(src, dst):
            if "up.0.0" in str(dst):
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
            return real(src, dst)

        monkeypatch.setattr(store_writer.os, "replace", replace)
        message = "permission denied"
    with pytest.raises(DiffdictError, match=rf"could not write chunk 1 of store .*{message}.*not marked complete") as caught:
        writer.write_chunk(1, *synthetic_chunk(writer, 1))
    assert "\n" not in str(caught.value)
    assert not writer.is_complete(1) and writer.is_complete(0)
    assert temp_files(path) == []
    assert not (path / "shards/mid.0/000001.safetensors").exists()
    monkeypatch.undo()
    writer.write_chunk(1, *synthetic_chunk(writer, 1))
    assert writer.pending_chunks() == [2, 3]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_store_directory(tmp_path):
    path = tmp_path / "store"
    writer = write_store(path, chunks=[0], finalize=False)
    (path / "shards/up.0.0").chmod(0o555)
    try:
        with pytest.raises(DiffdictError, match="permission denied"):
            writer.write_chunk(1, *synthetic_chunk(writer, 1))
        assert not writer.is_complete(1)
    finally:
        (path / "shards/up.0.0").chmod(0o755)


def _bad_chunk(change):
    def attempt(writer):
        acts, meta, images = synthetic_chunk(writer, 0)
        change(acts, meta)
        writer.write_chunk(0, acts, meta, images)
    return attempt


BAD_WRITER_ARGS = [
    (dict(prompts=[]), "no prompts given"),
    (dict(prompts="a red blob"), "prompts must be a list of strings"),
    (dict(sites={}), "at least one site"),
    (dict(sites={"../x": 8}, grid={"../x": (2, 2)}), "bad site name '../x'"),
    (dict(sites={"mid.0": 0}, grid={"mid.0": (2, 2)}), "bad d 0: expected an integer >= 1 (the width of site 'mid.0')"),
    (dict(grid={"mid.0": (2, 2)}), "no token grid given for site 'up.0.0'"),
    (dict(dtype="int8"), "unknown store dtype 'int8'"),
    (dict(chunk_size=0), "bad chunk size 0"),
    (dict(settings={"model": object()}), "not JSON-serialisable"),
]


@pytest.mark.parametrize("change, message", BAD_WRITER_ARGS)
def test_bad_writer_arguments(tmp_path, change, message):
    with pytest.raises(DiffdictError) as caught:
        open_writer(tmp_path / "store", **change)
    assert message in str(caught.value) and "\n" not in str(caught.value)


BAD_CHUNKS = [
    (_bad_chunk(lambda a, m: a.update({"mid.0": a["mid.0"][:, :5]})), "have shape (24, 5); expected (n_tokens, 8)"),
    (_bad_chunk(lambda a, m: a.pop("up.0.0")), "no activations for site 'up.0.0'"),
    (_bad_chunk(lambda a, m: a.update({"down.1.0": a["mid.0"]})), "unknown site 'down.1.0'; the store's sites are mid.0, up.0.0"),
    (_bad_chunk(lambda a, m: m["mid.0"]["prompt_id"].add_(3)), "bad prompt id (chunk 0 holds 0..2): 3"),
    (_bad_chunk(lambda a, m: m["mid.0"]["row"].fill_(2)), "bad row (grid 2x2): 2"),
    (_bad_chunk(lambda a, m: m["mid.0"].pop("step")), "must have exactly prompt_id, step, row, col"),
    (_bad_chunk(lambda a, m: m["mid.0"].update(step=torch.zeros(3, dtype=torch.long))), "expected (24,), one per token"),
    (_bad_chunk(lambda a, m: a.update({"mid.0": a["mid.0"].long()})), "must be floating point"),
    (lambda w: w.write_chunk(0, *synthetic_chunk(w, 0)[:2], np.zeros((3, 4, 4), np.uint8)), "expected (3, H, W, 3)"),
    (lambda w: w.write_chunk(0, *synthetic_chunk(w, 0)[:2], np.zeros((3, 4, 4, 3), np.float32)), "images must be uint8"),
    (lambda w: w.write_chunk(7, *synthetic_chunk(w, 0)), "bad chunk index 7: expected an integer in 0..3 (the store has 4 chunks)"),
    (lambda w: w.pending_chunks(rank=2, world_size=2), "bad rank 2: expected an integer in 0..1"),
    (lambda w: w.finalize(), "cannot be finalized: 4 of 4 chunks are missing (first: chunk 0)"),
]


@pytest.mark.parametrize("attempt, message", BAD_CHUNKS)
def test_bad_chunks_refused_before_writing(tmp_path, attempt, message):
    writer = open_writer(tmp_path / "store")
    with pytest.raises(DiffdictError) as caught:
        attempt(writer)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert writer.pending_chunks() == [0, 1, 2, 3]


def test_bad_reader_and_import_inputs(reference, tmp_path, capsys):
    store = open_store(reference)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/notes.txt").write_text("hello")
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((3, 4), np.int64))
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "two.safetensors"))
    (tmp_path / "acts.txt").write_text("1 2 3")
    cases = [
        (lambda: open_store(tmp_path / "missing"), "store not found"),
        (lambda: open_store(tmp_path / "junk"), "is not a diffdict store (no manifest.json)"),
        (lambda: open_writer(tmp_path / "junk"), "is not empty and is not a diffdict store"),
        (lambda: store.iter_batches("mid.1", 4), "unknown site 'mid.1'; the store has mid.0, up.0.0"),
        (lambda: store.iter_batches("mid.0", 8, buffer_tokens=4), "buffer_tokens (4) must be at least the batch size (8)"),
        (lambda: store.iter_batches("mid.0", 0), "bad batch size 0"),
        (lambda: store.read("mid.0", 5, 500), "bad token range 5:500"),
        (lambda: store.images([10]), "prompt id 10 out of range"),
        (lambda: import_array(tmp_path / "nope.npy", tmp_path / "s"), "array file not found"),
        (lambda: import_array(tmp_path / "acts.txt", tmp_path / "s"), "expected a .npy or .safetensors file"),
        (lambda: import_array(tmp_path / "flat.npy", tmp_path / "s"), "has shape (5,); expected a non-empty (N, d) array"),
        (lambda: import_array(tmp_path / "empty.npy", tmp_path / "s"), "has shape (0, 4)"),
        (lambda: import_array(tmp_path / "ints.npy", tmp_path / "s"), "holds int64 values"),
        (lambda: import_array(tmp_path / "two.safetensors", tmp_path / "s"), "holds 2 tensors (a, b); expected exactly one"),
    ]
    for attempt, message in cases:
        with pytest.raises(DiffdictError) as caught:
            attempt()
        assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert not (tmp_path / "s").exists()
    for argv in (["store", "info", str(tmp_path / "missing")], ["store", "import", str(tmp_path / "flat.npy"), "--out", str(tmp_path / "s")]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.startswith("diffdict: error: ") and err.count("\n") == 1
