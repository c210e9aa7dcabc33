"""The trainer: the grid, planted-dictionary recovery, exact resume (also after kill -9),
2-process data parallel against 1 process, evaluation, and bad input."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffdict.cli import main as cli_main
from diffdict.dictionaries import load_dictionary
from diffdict.dictionaries.data import open_activations
from diffdict.errors import DiffdictError
from diffdict.evaluate import evaluate_run
from diffdict.train import TrainSettings, default_lr, grid_members, train

D, N_TRUE, ACTIVE, TOKENS = 32, 48, 3, 20000


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Sparse combinations (3 of 48) of known unit directions plus noise: (acts.npy, directions).
    Not seeded 0: an SAE seeded 0 draws its decoder with the same generator calls and
    would start on the planted directions."""
    gen = torch.Generator().manual_seed(1234)
    true = torch.randn(N_TRUE, D, generator=gen)
    true /= true.norm(dim=1, keepdim=True)
    chosen = torch.stack([torch.randperm(N_TRUE, generator=gen)[:ACTIVE] for _ in range(TOKENS)])
    magnitude = torch.rand(TOKENS, ACTIVE, generator=gen) + 0.5
    x = (magnitude.unsqueeze(2) * true[chosen]).sum(1) + 0.02 * torch.randn(TOKENS, D, generator=gen)
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, x.numpy())
    return path, true


def small_settings(acts, **overrides) -> TrainSettings:
    options = dict(acts=str(acts), arch=["topk"], k=[3], expansion=[3.0], lr=[3e-3], batch_size=256, tokens=6000,
                   dead_window=1000, init_tokens=2048)
    options.update(overrides)
    return TrainSettings(**options)


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p / "model.safetensors")) for p in sorted(run.iterdir()) if (p / "model.safetensors").exists()}


def test_grid_names_and_options():
    settings = TrainSettings(acts="x.npy", arch=["topk", "relu-l1", "itda"], k=[5, 10], l1=[1e-3, 1e-2],
                             expansion=[4.0], lr=[1e-4, 3e-4])
    names = [m.name for m in grid_members(settings)]
    assert names == [
        "topk-k5-x4-lr0.0001", "topk-k5-x4-lr0.0003", "topk-k10-x4-lr0.0001", "topk-k10-x4-lr0.0003",
        "relu-l1-l1_0.001-x4-lr0.0001", "relu-l1-l1_0.001-x4-lr0.0003", "relu-l1-l1_0.01-x4-lr0.0001",
        "relu-l1-l1_0.01-x4-lr0.0003", "itda-tau0.3-l0_10",
    ]
    assert [m.name for m in grid_members(TrainSettings(acts="x", auxk=[True, False], k=[10]))] == [
        "topk-k10-x4-auxk", "topk-k10-x4-noauxk"]


def recovered(folder: Path, true: torch.Tensor) -> float:
    """Share of the planted directions that some decoder row matches at cosine >= 0.9."""
    sae = load_dictionary(folder)
    directions = sae.decoder_directions / sae.decoder_directions.norm(dim=1, keepdim=True)
    return float(((true @ directions.t()).max(1).values >= 0.9).float().mean())


def test_default_learning_rate_recovers_planted_directions(planted, tmp_path):
    acts, true = planted
    settings = TrainSettings(acts=str(acts), k=[3], expansion=[3.0], batch_size=256, tokens=100_000, init_tokens=2048)
    folders = train(settings, tmp_path / "run", log_every=100, progress=False)
    assert recovered(folders["topk-k3-x3"], true) >= 0.95
    first = json.loads((folders["topk-k3-x3"] / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(default_lr(96)) and default_lr(2**14) == pytest.approx(2e-4)
    # the old fixed default, 1e-4, is far from converged on the same tokens
    old = train(dataclasses.replace(settings, lr=[1e-4]), tmp_path / "old", progress=False)
    assert recovered(old["topk-k3-x3"], true) < 0.5


def test_topk_sae_recovers_planted_directions(planted, tmp_path):
    acts, true = planted
    settings = small_settings(acts, tokens=40000, lr=[1e-2])
    folders = train(settings, tmp_path / "run", progress=False)
    assert recovered(folders["topk-k3-x3"], true) >= 0.9

    metrics = evaluate_run(tmp_path / "run", acts)["topk-k3-x3"]
    assert metrics["fvu"] < 0.1 and metrics["l0"] == pytest.approx(3, abs=0.01)
    assert metrics["explained_variance"] == pytest.approx(1 - metrics["fvu"])
    last = json.loads((tmp_path / "run" / "topk-k3-x3" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last) >= {"mse", "fvu", "explained_variance", "l0", "dead_fraction", "aux_loss", "tokens_per_s"}


GRID = dict(arch=["topk", "batchtopk", "jumprelu", "soft-threshold", "itda"], learn_theta=[True], tau=[0.2], l0=[4])


def test_resume_after_interruption_gives_identical_weights(planted, tmp_path):
    acts, _ = planted
    settings = small_settings(acts, **GRID, dead_window=512)
    train(settings, tmp_path / "whole", checkpoint_every=4, log_every=2, progress=False)
    # "killed" after 10 steps: the last checkpoint is step 8, steps 8-9 are redone
    assert train(settings, tmp_path / "cut", checkpoint_every=4, log_every=2, progress=False, stop_after_step=10) == {}
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["step"] == 8
    train(settings, tmp_path / "cut", checkpoint_every=4, log_every=2, progress=False)
    whole, cut = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert set(whole) == set(cut) and len(whole) == 5
    for member in whole:
        for name in whole[member]:
            assert torch.equal(whole[member][name], cut[member][name]), (member, name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "topk-k3-x3" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == settings.total_steps


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffdict", *args], capture_output=True, text=True, **kwargs)


def test_kill_9_then_rerun_the_same_command(planted, tmp_path):
    acts, _ = planted
    args = ["train", "--acts", str(acts), "--arch", "topk,relu-l1", "--k", "3", "--expansion", "3", "--lr", "0.003",
            "--batch-size", "32", "--tokens", "8000", "--init-tokens", "1024", "--checkpoint-every", "50",
            "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")]
    process = subprocess.Popen([sys.executable, "-m", "diffdict", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    state = tmp_path / "run" / "state.json"
    while not state.exists() and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if json.loads(state.read_text())["done"]:
        pytest.skip("the run finished before it could be killed")
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    settings = small_settings(acts, arch=["topk", "relu-l1"], batch_size=32, tokens=8000, init_tokens=1024,
                              dead_window=10_000_000)
    train(settings, tmp_path / "reference", checkpoint_every=50, progress=False)
    killed, reference = weights(tmp_path / "run"), weights(tmp_path / "reference")
    assert set(killed) == set(reference)
    for member in reference:
        for name in reference[member]:
            assert torch.equal(killed[member][name], reference[member][name]), (member, name)


def test_two_processes_equal_one(planted, tmp_path):
    acts, _ = planted
    common = ["--acts", str(acts), "--arch", "topk,batchtopk,itda", "--k", "3", "--expansion", "3", "--lr", "0.003",
              "--batch-size", "256", "--tokens", "2560", "--dead-window", "512", "--init-tokens", "1024",
              "--threads", "1", "--no-progress", "--bf16", "off"]  # bf16 kernels round by batch shape
    distributed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "diffdict",
         "train", *common, "--out", str(tmp_path / "two")], capture_output=True, text=True)
    assert distributed.returncode == 0, distributed.stderr[-2000:]
    assert cli_main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert set(one) == set(two) == {"topk-k3-x3", "batchtopk-k3-x3", "itda-tau0.3-l0_10"}
    for member in one:
        for name in one[member]:
            assert torch.allclose(one[member][name].float(), two[member][name].float(), atol=1e-5), (member, name)


def test_store_source_and_evaluate_command(planted, tmp_path, capsys):
    from diffdict.store import import_array

    acts, _ = planted
    import_array(acts, tmp_path / "store", site="mid.0", dtype="float32", chunk_tokens=4096, progress=False)
    assert cli_main(["train", "--acts", str(tmp_path / "store"), "--arch", "topk,itda", "--k", "3", "--expansion", "2",
                     "--batch-size", "256", "--tokens", "2048", "--init-tokens", "512", "--l0", "3",
                     "--no-progress", "--out", str(tmp_path / "run")]) == 0
    itda = load_dictionary(tmp_path / "run" / "itda-tau0.3-l0_3")
    assert set(itda.labels) == {"prompt_id", "step", "row", "col"} and itda.n_features > 0
    assert cli_main(["evaluate", "--run", str(tmp_path / "run"), "--acts", str(tmp_path / "store"), "--max-tokens",
                     "3000", "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["members"]
    assert set(result) == {"topk-k3-x2", "itda-tau0.3-l0_3"}
    assert all(m["tokens"] == 3000 for m in result.values())
    capsys.readouterr()
    assert cli_main(["train", "--acts", str(tmp_path / "store"), "--site", "up.9", "--out", str(tmp_path / "r2")]) == 2
    assert "unknown site 'up.9'" in capsys.readouterr().err


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffdict: error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_existing_run_with_other_settings_is_refused(planted, tmp_path, capsys):
    acts, _ = planted
    base = ["train", "--acts", str(acts), "--k", "3", "--expansion", "2", "--batch-size", "256", "--tokens", "1024",
            "--init-tokens", "512", "--no-progress", "--out", str(tmp_path / "run")]
    assert cli_main(base) == 0
    assert cli_main(base) == 0  # same settings: resumes (here: nothing left to do)
    one_line_error(capsys, base[:3] + ["--k", "4"] + base[5:], "holds a run with different settings", "k: [3] -> [4]")
    assert cli_main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
    one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "--resume", "--k", "5"], "--k [5] differs")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    one_line_error(capsys, base[:-1] + [str(tmp_path / "other")], "is not a diffdict training run")


def test_nan_batch_stops_with_step_and_row_and_keeps_checkpoint(planted, tmp_path):
    acts, _ = planted
    x = np.load(acts)
    bad_row = 777
    x[bad_row, 5] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, x)
    settings = small_settings(path, init_tokens=256)
    source = open_activations(path)
    bad_step = next(b.step for b in source.batches(256, settings.seed) if bad_row in b.labels["token"].tolist())
    assert 0 < bad_step < settings.total_steps
    with pytest.raises(DiffdictError) as error:
        train(settings, tmp_path / "run", checkpoint_every=1, progress=False)
    message = str(error.value)
    assert f"step {bad_step} (token {bad_row} of {path})" in message and "\n" not in message
    assert f"last good checkpoint (step {bad_step})" in message
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == bad_step
    assert (tmp_path / "run" / "topk-k3-x3" / f"checkpoint-{bad_step}.safetensors").exists()


def test_bad_input_one_line(planted, tmp_path, capsys):
    acts, _ = planted
    one_line_error(capsys, ["train", "--acts", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r")],
                   "activations not found", "missing.npy")
    one_line_error(capsys, ["train", "--acts", str(acts), "--k", "100", "--width", "8", "--out", str(tmp_path / "r")],
                   "k = 100 is larger than the dictionary width 8")
    one_line_error(capsys, ["train", "--acts", str(acts), "--arch", "gated", "--out", str(tmp_path / "r")],
                   "unknown --arch 'gated'")
    assert cli_main(["train", "--acts", str(acts), "--k", "3", "--expansion", "2", "--batch-size", "256", "--tokens",
                     "512", "--init-tokens", "256", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    narrow = tmp_path / "narrow.npy"
    np.save(narrow, np.zeros((10, D // 2), dtype=np.float32))
    one_line_error(capsys, ["evaluate", "--run", str(tmp_path / "run"), "--acts", str(narrow), "--out",
                            str(tmp_path / "e.json")], "d mismatch", f"expects d = {D}", f"has d = {D // 2}")


@pytest.mark.parametrize("fused", [True, False])
def test_adam_follows_torch_adam_and_loads_its_state(fused):
    from diffdict.adam import Adam

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(6, 4, generator=gen), torch.randn(4, generator=gen)]
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.clone().requires_grad_() for p in start]
    adam, reference = Adam(ours, lr=1e-2, fused=fused), torch.optim.Adam(theirs, lr=1e-2)
    for step in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in start]
        for params in (ours, theirs):
            for p, g in zip(params, grads):
                # the bias gets no gradient on step 2: its moments and step count stay
                p.grad = None if (step == 2 and p.ndim == 1) else g.clone()
        adam.step()
        reference.step()
    for p, q in zip(ours, theirs):
        assert torch.allclose(p, q, atol=1e-6)
    assert [float(s) for s in adam.steps] == [5.0, 4.0]
    resumed = Adam([p.detach().clone().requires_grad_() for p in ours], lr=1.0, fused=fused)
    resumed.load_state_dict(reference.state_dict())  # a checkpoint written with torch.optim
    assert resumed.lr == 1e-2 and [float(s) for s in resumed.steps] == [5.0, 4.0]
    assert torch.equal(resumed.exp_avg_sq[0], reference.state[theirs[0]]["exp_avg_sq"])


def test_small_steps_run_on_one_thread_and_restore_the_callers(planted, tmp_path, monkeypatch):
    trainer = importlib.import_module("diffdict.train.loop")  # the pass; diffdict.train is the function

    acts, _ = planted
    seen = []
    real = trainer._train
    monkeypatch.setattr(trainer, "_train", lambda *args: seen.append(torch.get_num_threads()) or real(*args))
    torch.set_num_threads(2)
    train(small_settings(acts), tmp_path / "auto", progress=False)
    train(small_settings(acts), tmp_path / "given", progress=False, threads=2)
    assert seen == [1, 2] and torch.get_num_threads() == 2
    big = TrainSettings(acts=str(acts), width=[5120], batch_size=4096)
    assert trainer._encoder_macs(big, 1280, trainer._Distributed(torch.device("cpu"))) > trainer.SMALL_STEP_MACS


def test_bf16_defaults_to_what_the_device_computes_natively_and_a_resumed_run_keeps_its_own(
        planted, tmp_path, monkeypatch):
    trainer = importlib.import_module("diffdict.train.loop")
    acts, _ = planted
    for native in (False, True):
        monkeypatch.setattr(trainer, "native_bf16", lambda device, native=native: native)
        train(small_settings(acts, tokens=512), tmp_path / f"native-{native}", progress=False)
        assert json.loads((tmp_path / f"native-{native}" / "settings.json").read_text())["bf16"] is native
        config = json.loads((tmp_path / f"native-{native}" / "topk-k3-x3" / "config.json").read_text())
        assert config["bf16"] is native
    # a run started where bf16 is native resumes as it was on a device without it
    monkeypatch.setattr(trainer, "native_bf16", lambda device: False)
    train(small_settings(acts, tokens=1024), tmp_path / "native-True-longer", progress=False, stop_after_step=2)
    settings = json.loads((tmp_path / "native-True-longer" / "settings.json").read_text())
    settings["bf16"] = True  # as written by a machine with native bf16
    (tmp_path / "native-True-longer" / "settings.json").write_text(json.dumps(settings))
    train(small_settings(acts, tokens=1024), tmp_path / "native-True-longer", progress=False)
    assert json.loads((tmp_path / "native-True-longer" / "topk-k3-x3" / "config.json").read_text())["bf16"] is True
    with pytest.raises(DiffdictError, match="--bf16 must be on, off or auto, got 'yes'"):
        train(small_settings(acts, bf16="yes"), tmp_path / "bad", progress=False)


def test_provenance_is_recorded_in_every_member_and_covered_by_the_checksum(planted, tmp_path):
    from diffdict.dictionaries import read_provenance

    acts, _ = planted
    settings = small_settings(acts, arch=["topk", "itda"], l0=[3], seed=7)
    folders = train(settings, tmp_path / "run", checkpoint_every=10, progress=False)
    for folder in folders.values():
        record = json.loads((folder / "config.json").read_text())["provenance"]
        assert record == {"version": 1, "site": None, "what": None, "model": None, "model_weights": None, "host": None,
                          "generation": None, "store": None, "store_digest": None, "acts": str(Path(acts).resolve()),
                          "seed": 7, "tokens": settings.total_steps * settings.batch_size}
        assert load_dictionary(folder).provenance == record == read_provenance(folder)
    # an edited record is refused like any other edited field
    config_path = folders["topk-k3-x3"] / "config.json"
    config = json.loads(config_path.read_text())
    config["provenance"]["seed"] = 8
    config_path.write_text(json.dumps(config))
    for read in (load_dictionary, read_provenance):
        with pytest.raises(DiffdictError, match="do not match their recorded sha256"):
            read(folders["topk-k3-x3"])


def test_a_mechanism_declares_its_own_flags(planted, tmp_path, capsys, monkeypatch):
    """A new mechanism with a new option is one class: its ``flags`` make the ``train`` flag,
    the grid and the saved options, with no edit to the trainer or the CLI."""
    from diffdict.dictionaries.sparsity import MECHANISMS, MechanismFlag, TopK

    acts, _ = planted

    class ScaledTopK(TopK):
        name = "scaled-topk"
        flags = {"scale": MechanismFlag(float, "scaled-topk: codes are multiplied by this")}

        def __init__(self, n_features, k=32, scale=1.0):
            super().__init__(n_features, k=k)
            self.scale = scale

        def options(self):
            return {**super().options(), "scale": self.scale}

        def forward(self, pre):
            return super().forward(pre) * self.scale

    monkeypatch.setitem(MECHANISMS, "scaled-topk", ScaledTopK)  # what @register does, undone after the test
    common = ["train", "--acts", str(acts), "--expansion", "2", "--batch-size", "256", "--tokens", "512",
              "--init-tokens", "256", "--no-progress"]
    assert cli_main([*common, "--arch", "scaled-topk,topk", "--k", "3", "--scale", "0.5,2",
                     "--out", str(tmp_path / "run")]) == 0
    members = sorted(p.name for p in (tmp_path / "run").iterdir() if (p / "config.json").exists())
    assert members == ["scaled-topk-k3-scale0.5-x2", "scaled-topk-k3-scale2-x2", "topk-k3-x2"]
    assert load_dictionary(tmp_path / "run" / "scaled-topk-k3-scale2-x2").mechanism.scale == 2.0
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["mechanism_options"] == {"scale": [0.5, 2.0]}
    one_line_error(capsys, ["train", "--out", str(tmp_path / "run"), "--resume", "--scale", "3"],
                   "--scale [3.0] differs from the run's [0.5, 2.0]")

    # Matryoshka's prefix widths: one list, not a grid
    assert cli_main([*common, "--arch", "matryoshka-batchtopk", "--k", "3", "--prefix-fractions", "0.25,0.5",
                     "--out", str(tmp_path / "matryoshka")]) == 0
    (folder,) = [p for p in (tmp_path / "matryoshka").iterdir() if (p / "config.json").exists()]
    assert load_dictionary(folder).mechanism.widths == (round(0.25 * 2 * D), round(0.5 * 2 * D))
    one_line_error(capsys, [*common, "--arch", "matryoshka-batchtopk", "--prefix-fractions", "0.5,0.25",
                            "--out", str(tmp_path / "bad")], "prefix_fractions [0.5, 0.25] give the prefix widths")
    one_line_error(capsys, [*common, "--prefix-fractions", "half", "--out", str(tmp_path / "bad")],
                   "--prefix-fractions: cannot read 'half'")


def test_an_explicit_member_list_trains_what_the_grid_would(planted, tmp_path):
    """``train(settings, out, members=[...])``: each member's weights are those of the same
    member trained in a grid (a member does not depend on what else is in the pass)."""
    from diffdict.train import MemberSpec, members_of

    acts, _ = planted
    grid = small_settings(acts, arch=["topk", "relu-l1"], k=[3], l1=[1e-3, 1e-2], tokens=1024)
    train(grid, tmp_path / "grid", progress=False)
    chosen = [spec for spec in grid_members(grid) if spec.name != "relu-l1-l1_0.001-x3"]
    renamed = [MemberSpec(f"m{i}", spec.arch, spec.options) for i, spec in enumerate(reversed(chosen))]
    folders = train(small_settings(acts, tokens=1024), tmp_path / "list", progress=False, members=renamed)
    assert sorted(folders) == ["m0", "m1"]
    for spec, mine in zip(reversed(chosen), renamed):
        expected = load_file(str(tmp_path / "grid" / spec.name / "model.safetensors"))
        got = load_file(str(folders[mine.name] / "model.safetensors"))
        assert all(torch.equal(expected[name], got[name]) for name in expected)
    saved = json.loads((tmp_path / "list" / "settings.json").read_text())["members"]
    assert [m["name"] for m in saved] == ["m0", "m1"]  # resumable: the list is part of the run's settings

    with pytest.raises(DiffdictError, match="members need distinct folder names"):
        train(small_settings(acts), tmp_path / "dup", members=[renamed[0], renamed[0]])
    with pytest.raises(DiffdictError, match="member x lacks the option"):
        train(small_settings(acts), tmp_path / "bad", members=[MemberSpec("x", "topk", {"k": 3})])
    assert not (tmp_path / "dup").exists() and not (tmp_path / "bad").exists()
    assert [m.name for m in members_of(grid)] == [m.name for m in grid_members(grid)]


def _train_parser():
    import argparse

    from diffdict.cli import build_parser

    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return subparsers.choices["train"]


def test_every_settings_field_is_a_train_flag_with_its_help(tmp_path):
    """``TrainSettings`` is the one place a training option is declared: each field not
    marked ``cli=False`` is a flag named after it, with the help from its metadata and the
    default from the dataclass."""
    from diffdict.commands.train import _mechanism_flags, settings_from_args
    from diffdict.dictionaries.sparsity import MECHANISMS

    parser = _train_parser()
    actions = {a.dest: a for a in parser._actions}
    cli_fields = [f for f in dataclasses.fields(TrainSettings) if f.metadata.get("cli", True)]
    assert {f.name for f in dataclasses.fields(TrainSettings)} - {f.name for f in cli_fields} == {
        "mechanism_options", "members"}
    command_flags = {"help", "config", "out", "resume", "checkpoint_every", "log_every", "device", "threads",
                     "no_verify", "progress"}
    assert set(actions) == {f.name for f in cli_fields} | set(_mechanism_flags()) | command_flags
    for f in cli_fields:
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.default is None  # unset flags leave the dataclass default
        text = f.metadata["help"].replace("{mechanisms}", ", ".join(MECHANISMS))
        assert text and action.help.startswith(text), (f.name, action.help)
        defaulted = f.default is not None and f.default is not dataclasses.MISSING or f.default_factory is not \
            dataclasses.MISSING
        assert ("(default:" in action.help) == (defaulted or "(default:" in text), (f.name, action.help)
    assert actions["arch"].help == f"architectures: {', '.join(MECHANISMS)}, itda (default: topk)"
    assert actions["batch_size"].help == "global batch size in tokens (default: 4096)"
    assert actions["expansion"].help.endswith("(default: 4)") and actions["auxk"].help.endswith("(default: on)")
    assert actions["lr"].help.count("(default:") == 1 and actions["bf16"].help.endswith("(default: auto)")

    args = parser.parse_args(["--acts", "a.npy", "--out", str(tmp_path / "run"), "--k", "3,5", "--expansion", "2", "--auxk", "on,off",
                              "--bf16", "auto", "--batch-size", "8", "--auxk-coef", "0.5", "--learn-theta", "off"])
    settings = settings_from_args(args)
    assert (settings.k, settings.expansion, settings.auxk, settings.bf16, settings.batch_size, settings.auxk_coef,
            settings.learn_theta) == ([3, 5], [2.0], [True, False], None, 8, 0.5, [False])


def test_a_new_settings_field_gets_its_flag_with_no_edit_to_the_command(monkeypatch, tmp_path):
    from diffdict.commands import train as train_command
    from diffdict.options import option, options_of
    from diffdict.train import settings as settings_module

    @dataclasses.dataclass
    class Settings(TrainSettings):
        grad_clip: float | None = option(None, "clip gradients to this norm (default: none)")
        warmup_tokens: int = option(0, "tokens of warmup")
        schedules: list[str] = option(["cosine", "linear"], "learning-rate schedules")
        ema: bool | None = option(None, "an EMA of the weights: on, off or auto")
        scratch: dict = option({}, cli=False)

    monkeypatch.setattr(settings_module, "TrainSettings", Settings)
    actions = {a.dest: a for a in _train_parser()._actions}
    assert "scratch" not in actions
    assert actions["grad_clip"].help == "clip gradients to this norm (default: none)"
    assert actions["warmup_tokens"].help == "tokens of warmup (default: 0)"
    assert actions["schedules"].help == "learning-rate schedules (default: cosine,linear)"
    assert actions["ema"].help == "an EMA of the weights: on, off or auto"
    args = _train_parser().parse_args(["--acts", "a.npy", "--out", str(tmp_path / "run"), "--warmup-tokens", "64",
                                       "--schedules", "cosine", "--ema", "off", "--grad-clip", "1.5", "--k", "4"])
    settings = train_command.settings_from_args(args)
    assert isinstance(settings, Settings)
    assert (settings.warmup_tokens, settings.schedules, settings.ema, settings.grad_clip, settings.k) == (
        64, ["cosine"], False, 1.5, [4])
    with pytest.raises(TypeError, match="declare it with cli=False"):
        options_of(dataclasses.make_dataclass(
            "Odd", [("shape", tuple[int, int], option((1, 2), "a shape"))], bases=(Settings,)))


def test_a_bad_flag_value_is_one_line(capsys, tmp_path):
    for argv, expected in ((["--k", "three"], "--k member 1 ('three'): expected an integer"),
                           (["--k", "3,0"], "--k: 0 must be at least 1"),
                           (["--auxk", "maybe"], "--auxk member 1 ('maybe'): expected on or off"),
                           (["--bf16", "maybe"], "--bf16: expected on, off or auto, got 'maybe'"),
                           (["--batch-size", "x"], "--batch-size: expected an integer, got 'x'"),
                           (["--pursuit", "omp"], "--pursuit: 'omp' is not one of mp, gp")):
        one_line_error(capsys, ["train", "--acts", "a.npy", *argv, "--out", str(tmp_path / "run")], expected)
    assert not (tmp_path / "run").exists()


def test_a_config_file_sets_train_options_and_flags_override_it(tmp_path):
    from diffdict.commands.train import settings_from_args

    config = tmp_path / "run.toml"
    config.write_text('acts = "a.npy"\nk = [8, 16]\nbatch-size = 256\nauxk = "on,off"\nbf16 = "auto"\n'
                      'arch = "matryoshka-batchtopk"\nprefix_fractions = [0.25, 0.5]\n')
    out = ["--out", str(tmp_path / "run")]
    settings = settings_from_args(_train_parser().parse_args(["--config", str(config), *out]))
    assert (settings.acts, settings.k, settings.batch_size, settings.auxk, settings.bf16, settings.arch) == (
        str(Path("a.npy").resolve()), [8, 16], 256, [True, False], None, ["matryoshka-batchtopk"])
    assert settings.mechanism_options == {"prefix_fractions": [0.25, 0.5]}
    settings = settings_from_args(_train_parser().parse_args(["--config", str(config), "--k", "4", "--bf16", "on",
                                                              *out]))
    assert (settings.k, settings.bf16, settings.batch_size) == ([4], True, 256)


@pytest.mark.parametrize("line, argv", [
    ("batch_size = 0", ["--batch-size", "0"]),
    ('k = [3, "three"]', ["--k", "3,three"]),
    ("k = [3, 3]", ["--k", "3,3"]),
    ('bf16 = "maybe"', ["--bf16", "maybe"]),
    ('b-dec-init = "median"', ["--b-dec-init", "median"]),
    ('prefix_fractions = "half"', ["--prefix-fractions", "half"]),
])
def test_a_bad_value_in_a_config_file_reads_as_the_same_bad_flag(capsys, tmp_path, line, argv):
    config = tmp_path / "run.toml"
    config.write_text(line + "\n")
    base = ["train", "--acts", "a.npy", "--out", str(tmp_path / "run")]
    assert one_line_error(capsys, [*base, "--config", str(config)]) == one_line_error(capsys, [*base, *argv])


def test_config_file_errors_are_one_line_naming_the_file(capsys, tmp_path):
    config = tmp_path / "run.toml"
    base = ["train", "--acts", "a.npy", "--out", str(tmp_path / "run"), "--config", str(config)]
    one_line_error(capsys, base, f"--config {config}: no such file")
    config.write_text("k = 3\nbatchsize = 256\n")
    one_line_error(capsys, base, f"--config {config}: unknown option 'batchsize'; did you mean batch_size?")
    config.write_text("members = []\n")  # a setting that is no flag is no key either
    one_line_error(capsys, base, f"--config {config}: unknown option 'members'")
    config.write_text("k = 3\nk = 4\n")
    one_line_error(capsys, base, f"--config {config}: not valid TOML")
    config.write_text("batch_size = 256\nbatch-size = 512\n")
    one_line_error(capsys, base, f"--config {config}: 'batch-size' sets batch_size a second time")
    assert not (tmp_path / "run").exists()
