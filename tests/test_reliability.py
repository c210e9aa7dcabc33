"""Reliability: damaged stores and dictionaries stop their readers with one line naming the
file, no manifest path leaves its store, every bad command-line value is one clear line,
output folders are never mixed, credentials never reach messages, and exit is clean.

One test (or one parametrized table) per class of failure; tiny synthetic data only."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from _interpret_fixtures import SITE, make_sae, make_store
from diffdict.cli import main as cli_main
from diffdict.errors import DiffdictError
from diffdict.store import open_store, verify_store

N_PROMPTS, CHUNK = 12, 4  # three chunks of 4 prompts, 64 tokens each per site


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "store"
    make_store(path, n=N_PROMPTS, chunk=CHUNK)
    return path


@pytest.fixture
def store_copy(pristine, tmp_path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(pristine, path)
    return path


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as done:  # argparse errors exit from parse_args
        code = done.code
    err = capsys.readouterr().err
    return code, err


def assert_one_line(code: int, err: str, *expected: str) -> None:
    assert code != 0, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)


def consume(path: Path, **open_options) -> None:
    """Everything a consumer reads: every site shuffled and in order, and every image."""
    store = open_store(path, **open_options)
    for site in store.sites:
        list(store.iter_batches(site, 16, seed=1, buffer_tokens=64))
        store.read(site)
    store.images(range(store.num_prompts))


# --------------------------------------------------------------------------- corrupt stores


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _swap(a: Path, b: Path) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


SHARD = f"shards/{SITE}/000001.safetensors"


def _manifest_edit(change):
    return lambda p: _edit_json(p / "manifest.json", change)


CORRUPTIONS = {
    "activation byte": (lambda p: _flip(p / SHARD, (p / SHARD).stat().st_size // 2), SHARD),
    "metadata byte": (lambda p: _flip(p / SHARD, -3), SHARD),
    "header byte": (lambda p: _flip(p / SHARD, 40), SHARD),
    "swapped shards": (lambda p: _swap(p / f"shards/{SITE}/000000.safetensors", p / SHARD), f"shards/{SITE}/00000"),
    "duplicated shard": (lambda p: shutil.copy(p / f"shards/{SITE}/000000.safetensors", p / SHARD), SHARD),
    "image byte": (lambda p: _flip(p / "images/000001.safetensors", -7), "images/000001.safetensors"),
    "deleted chunk record": (lambda p: (p / "chunks/000001.json").unlink(), "chunks/000001.json"),
    "edited chunk record": (lambda p: _edit_json(p / "chunks/000001.json",
                                                 lambda r: r["sites"][SITE].update(tokens=1)), "chunks/000001.json"),
    "edited header": (lambda p: _edit_json(p / "store.json", lambda h: h["settings"].update(model="sdxl")),
                      "store.json"),
    "token count": (_manifest_edit(lambda m: m["sites"][SITE].update(tokens=m["sites"][SITE]["tokens"] - 1)),
                    "manifest.json"),
    "grid": (_manifest_edit(lambda m: m["sites"][SITE].update(grid=[4, 16])), "manifest.json"),
    "chunk size": (_manifest_edit(lambda m: m.update(chunk_size=3)), "manifest.json"),
    "prompt text": (_manifest_edit(lambda m: m["prompts"].__setitem__(0, "a blue square")), "manifest.json"),
    "digest": (_manifest_edit(lambda m: m.update(digest="sha256:" + "0" * 64)), "manifest.json"),
    "shard sha256 in the manifest": (_manifest_edit(lambda m: m["chunks"][1]["sites"][SITE].update(sha256="0" * 64)),
                                     "chunks/000001.json"),
    "shard hash in manifest and record": (
        lambda p: [_edit_json(p / f, lambda r: (r["chunks"][1] if "chunks" in r else r)["sites"][SITE].update(
            xxh3="0" * 32)) for f in ("manifest.json", "chunks/000001.json")], SHARD),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_store_stops_verify_and_every_reader(store_copy, name):
    corrupt, names = CORRUPTIONS[name]
    corrupt(store_copy)
    with pytest.raises(DiffdictError, match=names.replace(".", r"\.")):
        verify_store(store_copy)
    with pytest.raises(DiffdictError, match=names.replace(".", r"\.")):
        consume(store_copy)


def test_every_manifest_field_is_covered(pristine, tmp_path):
    """Changing any one field of the manifest (top level, a chunk record, a shard entry,
    an images entry) is noticed when the store is opened."""

    def mutated(value):
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):
            return value + 1
        if isinstance(value, str):
            return value[:-1] + ("0" if value[-1:] != "0" else "1")
        if isinstance(value, list):
            return [mutated(value[0])] + value[1:] if value else [0]
        if isinstance(value, dict):
            first = sorted(value)[0]
            return {**value, first: mutated(value[first])}
        return 1

    manifest = json.loads((pristine / "manifest.json").read_text())
    fields = [(key,) for key in manifest]
    fields += [("chunks", 1, key) for key in manifest["chunks"][1]]
    fields += [("chunks", 1, "sites", SITE, key) for key in manifest["chunks"][1]["sites"][SITE]]
    fields += [("chunks", 1, "images", key) for key in manifest["chunks"][1]["images"]]
    assert len(fields) > 25
    for field in fields:
        path = tmp_path / "-".join(map(str, field))
        shutil.copytree(pristine, path)
        edited = json.loads((path / "manifest.json").read_text())
        parent = edited
        for key in field[:-1]:
            parent = parent[key]
        parent[field[-1]] = mutated(parent[field[-1]])
        (path / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(DiffdictError, match=str(path)):
            consume(path)
        shutil.rmtree(path)


def test_no_batch_holds_unverified_data(store_copy):
    """In order, the loader hands out every batch of the good first shard, then stops at the
    corrupt second one before any of its tokens leave the store."""
    _flip(store_copy / SHARD, (store_copy / SHARD).stat().st_size // 2)
    store = open_store(store_copy)
    seen = []
    with pytest.raises(DiffdictError, match=SHARD):
        for _, meta in store.iter_batches(SITE, 16, shuffle=False, with_meta=True, block_tokens=16):
            seen += meta["prompt_id"].tolist()
    assert seen and max(seen) < CHUNK  # only prompts of chunk 0
    with pytest.raises(DiffdictError, match=SHARD):
        list(open_store(store_copy).iter_batches(SITE, 16, seed=0, buffer_tokens=64))


def test_no_verify_reads_flipped_bytes_but_not_broken_structure(store_copy):
    _flip(store_copy / SHARD, (store_copy / SHARD).stat().st_size // 2)
    consume(store_copy, verify=False)  # the documented opt-out: data bytes are not hashed
    (store_copy / "chunks/000001.json").unlink()
    consume(store_copy, verify=False)  # chunk records are read only when verifying
    _edit_json(store_copy / "manifest.json", lambda m: m.update(chunk_size=3))
    with pytest.raises(DiffdictError, match="manifest.json"):
        consume(store_copy, verify=False)  # manifest cross-checks always run


@pytest.mark.parametrize("entry", [
    "../outside/000000.safetensors",
    "/abs/elsewhere/000000.safetensors",
    "../../../../../../etc/passwd",
    "shards/../../outside/000000.safetensors",
])
def test_manifest_paths_outside_the_store_are_refused(store_copy, entry):
    outside = store_copy.parent / "outside"
    outside.mkdir()
    shutil.copy(store_copy / f"shards/{SITE}/000000.safetensors", outside / "000000.safetensors")
    for name in ("manifest.json", "chunks/000000.json"):
        _edit_json(store_copy / name, lambda r: (r["chunks"][0] if "chunks" in r else r)["sites"][SITE].update(file=entry))
    for reader in (verify_store, consume):
        with pytest.raises(DiffdictError, match=rf"chunks\[0\]\.sites\.{SITE}\.file names .*outside the store; refused"):
            reader(store_copy)


def test_symlinked_shard_leading_out_of_the_store_is_refused(store_copy):
    shard = store_copy / f"shards/{SITE}/000000.safetensors"
    outside = store_copy.parent / "elsewhere.safetensors"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    with pytest.raises(DiffdictError, match="outside the store; refused"):
        open_store(store_copy)


def test_corrupt_store_stops_train_on_one_line_and_no_verify_opts_out(store_copy, tmp_path, capsys):
    _flip(store_copy / SHARD, (store_copy / SHARD).stat().st_size // 2)
    argv = ["train", "--acts", store_copy, "--site", SITE, "--expansion", "2", "--k", "2", "--batch-size", "64",
            "--tokens", "256", "--init-tokens", "64", "--no-progress"]
    code, err = run_cli([*argv, "--out", tmp_path / "run"], capsys)
    assert_one_line(code, err, "corrupt file", SHARD)
    code, err = run_cli([*argv, "--out", tmp_path / "run2", "--no-verify"], capsys)
    assert code == 0, err


# --------------------------------------------------------------------------- dictionaries


def test_dictionary_checksums_and_config_fit(tmp_path):
    from diffdict.dictionaries import SparseAutoencoder, load_dictionary

    sae = SparseAutoencoder(8, 16, mechanism="topk", mechanism_options={"k": 4}, seed=0)
    folder = sae.save(tmp_path / "sae")
    config = json.loads((folder / "config.json").read_text())
    assert set(config["checksums"]) == {"config_sha256", "weights_sha256"}
    assert torch.equal(load_dictionary(folder).W_dec, sae.W_dec)

    weights = (folder / "model.safetensors").read_bytes()
    _flip(folder / "model.safetensors", len(weights) - 5)  # a byte of the last tensor's data
    with pytest.raises(DiffdictError, match=r"corrupt file .*model\.safetensors"):
        load_dictionary(folder)
    (folder / "model.safetensors").write_bytes(weights)

    _edit_json(folder / "config.json", lambda c: c["mechanism_options"].update(k=2))
    with pytest.raises(DiffdictError, match=r"corrupt file .*config\.json"):
        load_dictionary(folder)

    # a folder saved before checksum records: loads, and its config must still fit its tensors
    _edit_json(folder / "config.json", lambda c: (c.pop("checksums"), c["mechanism_options"].update(k=4)))
    assert load_dictionary(folder).n_features == 16
    _edit_json(folder / "config.json", lambda c: c.update(n_features=32))
    with pytest.raises(DiffdictError, match="shape"):
        load_dictionary(folder)


# --------------------------------------------------------------------------- output folders


def test_folder_writers_refuse_an_unrelated_non_empty_folder(tmp_path, capsys):
    from diffdict.io import claim_output_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    sae = tmp_path / "sae"
    make_sae(sae)
    for argv in (["report", "--run", sae, "--out", mine],
                 ["interpret", "--run", sae, "--store", tmp_path / "nostore", "--out", mine],
                 ["study", "blocks", "--quick", "--out", mine],
                 ["intervene", "--run", sae, "--prompt", "a red circle", "--mode", "splice", "--out", mine],
                 ["ablate-block", "--prompt", "a red circle", "--out", mine]):
        code, err = run_cli(argv, capsys)
        assert_one_line(code, err, f"{mine} exists, is not empty", "choose a new or empty folder")
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert (mine / "thesis.tex").read_text() == "precious"

    out = claim_output_folder(tmp_path / "new", "report")
    (out / "index.html").write_text("x")
    assert claim_output_folder(out, "report") == out  # a rerun reuses its own folder
    with pytest.raises(DiffdictError, match="written by report"):
        claim_output_folder(out, "interpret")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "interpret.json").write_text("{}")
    claim_output_folder(legacy, "interpret", own_files=("interpret.json",))
    with pytest.raises(DiffdictError, match="is an existing file"):
        claim_output_folder(mine / "thesis.tex", "report")


# --------------------------------------------------------------------------- command-line values


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "file.txt").write_text("a red circle\n")
    (root / "latin1.txt").write_bytes("un cercle \xe9carlate\n".encode("latin-1"))
    (root / "folder").mkdir()
    return root


BAD_ARGS = [
    (["train", "--acts", "{root}/store", "--out", "{root}/file.txt"], "is an existing file"),
    (["train", "--acts", "{root}/store", "--out", "{root}/r", "--threads", "-1"], "--threads: expected an integer at least 1"),
    (["train", "--acts", "{root}/store", "--out", "{root}/r", "--device", "nosuch"], "unknown device 'nosuch'"),
    (["train", "--acts", "{root}/store", "--out", "{root}/r", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["evaluate", "--run", "{root}/r", "--acts", "{root}/store", "--out", "{root}/folder"], "is an existing folder"),
    (["evaluate", "--run", "{root}/r", "--acts", "{root}/store", "--out", "{root}/m.json", "--batch-size", "0"],
     "--batch-size: expected an integer at least 1"),
    (["generate", "--prompts-file", "{root}/latin1.txt", "--out", "{root}/g.png"], "is not UTF-8 text"),
    (["generate", "--prompts-file", "{root}/folder", "--out", "{root}/g.png"], "is a folder; expected a text file"),
    (["generate", "--prompt", "a red circle", "--guidance", "nan", "--out", "{root}/g.png"], "expected a finite number"),
    (["generate", "--prompt", "a red circle", "--scale", "0", "--out", "{root}/g.png"], "--scale: expected an integer"),
    (["generate", "--prompt", "a red circle", "--out", "{root}/folder"], "is an existing folder"),
    (["generate", "--prompt", "a red circle", "--out", "{root}/file.txt/g.png"], "is a file, not a folder"),
    (["intervene", "--run", "{root}/sae", "--prompt", "a red circle", "--out", "{root}/file.txt"], "is an existing file"),
    (["interpret", "--run", "{root}/sae", "--store", "{root}/store", "--out", "{root}/i", "--max-features", "0"],
     "--max-features: expected an integer at least 1"),
    (["interpret", "--run", "{root}/sae", "--out", "{root}/file.txt"], "is an existing file"),
    (["report", "--run", "{root}/sae", "--out", "{root}/file.txt"], "is an existing file"),
    (["world", "render", "--count", "1000000000000", "--out", "{root}/w.png"], "needs about"),
    (["world", "render", "--count", "4", "--out", "{root}/folder"], "is an existing folder"),
    (["world", "render", "--count", "-3", "--out", "{root}/w.png"], "--count: expected an integer at least 1"),
    (["collect", "--sites", "mid.0", "--prompts", "4", "--out", "{root}/c", "--device", "cuda:7"], "--device"),
    (["collect", "--sites", "mid.0", "--prompts", "4", "--out", "{root}/c", "--guidance", "inf"], "finite number"),
    (["store", "import", "{root}/a.npy", "--out", "{root}/s", "--chunk-tokens", "0"], "--chunk-tokens"),
    (["app", "--run", "{root}/sae", "--port", "70000"], "--port: expected an integer between 1 and 65,535"),
    (["study", "blocks", "--out", "{root}/file.txt"], "is an existing file"),
    (["bench", "--run", "{root}/sae", "--out", "{root}/b", "--threads", "0"], "--threads: expected an integer at least 1"),
    (["intervene", "--run", "{root}/sae", "--mode", "icon", "--count", "0", "--out", "{root}/i"],
     "--count: expected an integer at least 1"),
]


@pytest.mark.parametrize("argv, expected", BAD_ARGS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_ARGS])
def test_bad_command_line_values_are_one_line(bad_inputs, capsys, argv, expected):
    before = sorted(p.name for p in bad_inputs.iterdir())
    code, err = run_cli([a.format(root=bad_inputs) for a in argv], capsys)
    assert_one_line(code, err, expected)
    assert sorted(p.name for p in bad_inputs.iterdir()) == before  # nothing written


def test_resource_failures_are_one_line(tmp_path, pristine, capsys):
    import errno

    from diffdict.commands.validate import resource_error

    oom = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 1280000000 bytes. Error code 12 (Cannot allocate memory)")
    message = resource_error(oom, "diffdict train")
    assert message.startswith("diffdict train ran out of memory: asked for 1.2 GiB more;") and "available" in message
    assert "ran out of memory" in resource_error(MemoryError(), "diffdict x")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))
    assert resource_error(full, "diffdict generate").startswith(f"diffdict generate: disk full while writing {tmp_path}")
    assert resource_error(ValueError("nope"), "diffdict x") is None
    code, err = run_cli(["train", "--acts", pristine, "--site", SITE, "--width", "1000000000", "--out",
                         tmp_path / "run"], capsys)
    assert_one_line(code, err, "training 1 dictionaries of widths up to 1,000,000,000 (d = 8) needs about",
                    "is available")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- credentials


def test_vlm_error_bodies_never_show_the_key(monkeypatch):
    from diffdict.interpret.vlm import VlmClient, VlmConfig

    class Echo(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": "bad key", "received": {"Authorization": self.headers.get("Authorization")},
                               "hint": f"key {self.headers.get('Authorization', '').split()[-1]} was refused"}).encode()
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        key = "sk-live-0123456789abcdefSECRET"
        monkeypatch.setenv("DIFFDICT_TEST_KEY", key)
        client = VlmClient(VlmConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1",
                                     api_key_env="DIFFDICT_TEST_KEY", max_retries=0))
        with pytest.raises(DiffdictError) as error:
            client.chat([{"role": "user", "content": "hi"}])
    finally:
        server.shutdown()
        thread.join()
    message = str(error.value)
    assert "refused the API key (HTTP 401" in message and "[redacted]" in message
    assert key not in message and "0123456789" not in message and "SECRET" not in message


# --------------------------------------------------------------------------- clean exit


def test_prefetch_thread_is_joined_before_exit():
    """A producer still inside torch code at interpreter exit aborts the process
    ("terminate called without an active exception"); prefetch joins it on close."""
    script = (
        "import torch\n"
        "from diffdict.dictionaries.data import prefetch\n"
        "x = torch.randn(1000, 1000)\n"
        "def work():\n"
        "    while True:\n"
        "        torch.randperm(100000)\n"
        "        yield x.index_select(0, torch.arange(500)).float().sum()\n"
        "batches = prefetch(work())\n"
        "for _, _ in zip(range(3), batches):\n"
        "    pass\n"
        "batches.close()\n"
    )
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr


def test_stores_without_fast_hashes_are_checked_by_sha256(store_copy):
    """Stores written before xxh3 was recorded: readers fall back to each file's sha256."""
    for name in ["manifest.json"] + [f"chunks/{i:06d}.json" for i in range(N_PROMPTS // CHUNK)]:
        def drop(record):
            for chunk in record.get("chunks", [record]):
                for entry in [*chunk["sites"].values(), chunk["images"]]:
                    entry.pop("xxh3")
        _edit_json(store_copy / name, drop)
    consume(store_copy)
    _flip(store_copy / SHARD, (store_copy / SHARD).stat().st_size // 2)
    with pytest.raises(DiffdictError, match=rf"corrupt file .*{SHARD}: sha256 does not match"):
        consume(store_copy)
