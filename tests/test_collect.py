"""``diffdict collect``: toy model -> activation store, end to end; resume after an
interruption; torchrun with 2 processes equals 1 process; refusing to mix; bad input.

A tiny randomly initialised toy model saved to a folder stands in for the shipped weights
(``--model-path``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdict.capture import capture
from diffdict.cli import main as cli_main
from diffdict.collect import collect, steps_to_capture
from diffdict.errors import DiffdictError
from diffdict.hosts import load_host
from diffdict.models.text_encoder import TextEncoderConfig
from diffdict.models.toy import ToyConfig, ToyDiffusion
from diffdict.store import StoreWriter, open_store, store_info, verify_store
from diffdict.world import sample_prompts

N_PROMPTS = 6
COMMON = ["--sites", "mid.0,up.1.0", "--prompts", str(N_PROMPTS), "--capture", "update", "--steps", "0,1",
          "--denoise-steps", "2", "--seed", "7", "--chunk-size", "2", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ToyConfig(image_size=16, block_out_channels=(8, 16, 32), attention_heads=2, norm_num_groups=4,
                       text=TextEncoderConfig(width=32, layers=1, heads=2))
    folder = tmp_path_factory.mktemp("toy") / "model"
    ToyDiffusion(config).save_pretrained(folder, dtype=torch.float32)
    return folder


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """One uninterrupted in-process run."""
    out = tmp_path_factory.mktemp("ref") / "store"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(["collect", "--model-path", str(model_dir), "--out", str(out), *COMMON]) == 0
    finally:
        torch.set_num_threads(old)
    return out


def run_cli(args, capsys):
    code = cli_main(args)
    return code, capsys.readouterr()


def test_collect_writes_a_store_of_what_the_hooks_capture(reference, model_dir):
    info = store_info(reference)
    assert info["finalized"] and info["model"] == "toy" and info["dtype"] == "float16"
    assert info["n_prompts"] == N_PROMPTS and info["num_chunks"] == 3
    assert info["tokens"] == {"mid.0": N_PROMPTS * 2 * 16, "up.1.0": N_PROMPTS * 2 * 64}
    assert info["d"] == {"mid.0": 32, "up.1.0": 16} and info["grid"]["up.1.0"] == [8, 8]
    assert info["settings"]["capture"] == {"what": "update", "steps": [0, 1], "half": "cond"}
    verify_store(reference)
    store = open_store(reference)
    assert store.prompts == sample_prompts(N_PROMPTS, seed=7)
    # chunk 1 (prompts 2, 3) equals a direct capture with the same seeds
    host = load_host("toy", path=model_dir)
    images, acts, meta = capture(host, store.prompts[2:4], ["mid.0"], "update", steps=[0, 1], seeds=[9, 10],
                                 prompt_ids=[2, 3], num_steps=2, guidance=host.default_guidance)
    x, m = store.read("mid.0", 2 * 2 * 16, 4 * 2 * 16)
    torch.testing.assert_close(x, acts["mid.0"].half().float())
    for key in ("prompt_id", "step", "row", "col"):
        assert m[key].tolist() == meta["mid.0"][key].tolist()
    assert np.array_equal(store.images([2, 3]), images)


def test_resume_after_interruption_gives_the_same_store(reference, model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "store"
    real_write = StoreWriter.write_chunk
    calls = []

    def dying_write(self, index, *args, **kwargs):
        calls.append(index)
        if len(calls) == 2:
            # leave a half-written temporary file behind, as a kill -9 would
            (self.path / "shards" / "mid.0" / f".{index:06d}.safetensors.999.dead.tmp").write_bytes(b"junk")
            raise KeyboardInterrupt
        return real_write(self, index, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_chunk", dying_write)
    code, _ = run_cli(["collect", "--model-path", str(model_dir), "--out", str(out), *COMMON], capsys)
    assert code == 130
    assert store_info(out)["chunks_complete"] == 1 and not store_info(out)["finalized"]
    monkeypatch.setattr(StoreWriter, "write_chunk", real_write)
    written = []
    monkeypatch.setattr(StoreWriter, "write_chunk",
                        lambda self, i, *a, **k: (written.append(i), real_write(self, i, *a, **k))[1])
    code, captured = run_cli(["collect", "--model-path", str(model_dir), "--out", str(out), *COMMON], capsys)
    assert code == 0, captured.err
    assert written == [1, 2]  # chunk 0 was complete and skipped
    assert store_info(out)["digest"] == store_info(reference)["digest"]
    assert store_info(out)["images_digest"] == store_info(reference)["images_digest"]
    verify_store(out)
    # a third run has nothing to do and changes nothing
    written.clear()
    assert run_cli(["collect", "--model-path", str(model_dir), "--out", str(out), *COMMON], capsys)[0] == 0
    assert written == [] and store_info(out)["digest"] == store_info(reference)["digest"]


def test_refuses_to_mix(reference, model_dir, capsys):
    before = store_info(reference)["digest"]
    # --what, the former name of --capture, still works (given after --capture, it wins)
    for change in (["--capture", "output"], ["--what", "output"], ["--sites", "mid.0"], ["--steps", "1"],
                   ["--dtype", "float32"]):
        args = list(COMMON)
        if change[0] in args:
            args[args.index(change[0]) + 1] = change[1]
        else:
            args += change
        code, captured = run_cli(["collect", "--model-path", str(model_dir), "--out", str(reference), *args], capsys)
        assert code == 2
        assert "refuses to mix" in captured.err and captured.err.count("\n") == 1
    assert store_info(reference)["digest"] == before
    verify_store(reference)


def test_capture_option_and_its_former_name(capsys):
    from diffdict.cli import build_parser

    parser = build_parser()
    for flag in ("--capture", "--what"):
        args = parser.parse_args(["collect", "--sites", "mid.0", "--prompts", "2", "--out", "x", flag, "output"])
        assert args.capture == "output"
    assert parser.parse_args(["collect", "--sites", "mid.0", "--prompts", "2", "--out", "x"]).capture == "update"
    with pytest.raises(SystemExit):
        cli_main(["collect", "--help"])
    text = capsys.readouterr().out
    assert "--capture" in text and "--what" not in text  # the former name works, unlisted


def test_torchrun_two_processes_equal_one(reference, model_dir, tmp_path):
    # the reference is one process (in this one, one thread); torchrun gives each rank one thread
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    two = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffdict",
         "collect", "--model-path", str(model_dir), "--out", str(two), *COMMON],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("wrote ") == 1  # rank 0 reports
    assert store_info(two)["digest"] == store_info(reference)["digest"]
    assert store_info(two)["images_digest"] == store_info(reference)["images_digest"]
    verify_store(two)


def test_bad_input(model_dir, tmp_path, capsys):
    out = tmp_path / "store"
    base = ["collect", "--model-path", str(model_dir), "--out", str(out), "--no-progress"]

    def fails(args, pattern):
        code, captured = run_cli(args, capsys)
        assert code == 2, captured.err
        assert captured.err.count("\n") == 1 and captured.err.startswith("diffdict: error: ")
        assert __import__("re").search(pattern, captured.err), captured.err

    fails(base + ["--sites", "mid.7", "--prompts", "4"], r"unknown site 'mid\.7'.*valid sites: down\.1\.0, .*up\.1\.1")
    fails(base + ["--model", "sd15", "--sites", "mid.0", "--prompts", "4"],
          r"unknown model 'sd15'; available: toy, sdxl-turbo, sdxl, flux-schnell")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    fails(base + ["--sites", "mid.0", "--prompts", str(empty)], r"prompt file .*empty\.txt has no prompts")
    fails(base + ["--sites", "mid.0", "--prompts", str(tmp_path / "missing.txt")], r"prompt file not found")
    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\na red zeppelin\n")
    fails(base + ["--sites", "mid.0", "--prompts", str(bad)], r"'zeppelin' is not in the shapes world's vocabulary")
    fails(base + ["--sites", "mid.0", "--prompts", "4", "--steps", "3", "--denoise-steps", "2"],
          r"step 3 out of range: the run has 2 denoising step")
    fails(base + ["--sites", "mid.0", "--prompts", "4", "--steps", "0-2", "--denoise-steps", "2"],
          r"step 2 out of range: the run has 2 denoising step")  # ranges, as for intervene
    fails(base + ["--sites", "mid.0", "--prompts", "4", "--steps", "0-x"], r"bad steps '0-x'")
    fails(base + ["--sites", "mid.0.mlp", "--prompts", "4"], r"holds MLP neurons.*--capture mlp")
    fails(base + ["--sites", "mid.0", "--prompts", "4", "--quantize", "nf4"], r"model toy takes no option 'quantize'")
    assert not out.exists()  # every check ran before anything was written


def test_collect_reads_steps_with_the_parser_intervene_uses():
    assert steps_to_capture("all", 3) == [0, 1, 2] and steps_to_capture(None, 2) == [0, 1]
    assert steps_to_capture("0-1,3", 4) == [0, 1, 3] and steps_to_capture([2, 0], 3) == [0, 2]


def test_nonfinite_activations_are_refused_naming_site_and_prompt(model_dir, tmp_path):
    host = load_host("toy", path=model_dir)
    prompts = sample_prompts(4, seed=0)
    module = host.module(host.site("up.1.0").module)
    state = {"batch": 0}

    def poison(mod, args, output):
        # the second batch holds prompts 2 and 3; poison prompt 3 (last row: conditional half)
        if state["batch"] == 1:
            output = output[0].clone()
            output[-1, 0, 0, 0] = float("nan")
            return (output,)
        return None

    handle = module.register_forward_hook(poison)
    original = host.generate

    def generate(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            state["batch"] += 1

    host.generate = generate
    try:
        with pytest.raises(DiffdictError, match=r"non-finite activations \(NaN\) at site 'up\.1\.0' for prompt id 3"):
            collect(host, prompts, ["mid.0", "up.1.0"], tmp_path / "store", steps=[0], num_steps=1,
                    chunk_size=2, batch_size=2, progress=False)
    finally:
        handle.remove()
    writer = StoreWriter.open(tmp_path / "store", settings=store_info(tmp_path / "store")["settings"],
                              sites={"mid.0": 32, "up.1.0": 16}, grid={"mid.0": (4, 4), "up.1.0": (8, 8)},
                              prompts=prompts, chunk_size=2)
    assert writer.is_complete(0) and not writer.is_complete(1)
    assert not list(Path(tmp_path / "store" / "shards" / "up.1.0").glob("000001*"))
