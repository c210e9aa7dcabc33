"""The CLI on real model classes, offline: tiny random SDXL Turbo, FLUX schnell and SD 1.x
pipelines saved with ``save_pretrained`` and loaded through ``--model-path``; free-text
prompts; ``collect`` -> ``train`` -> ``intervene`` (every mode) -> ``report`` with nothing
run by hand in between. Also the toy model's whole chain on a fresh store and run."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("tokenizers")
from _tiny_pipelines import (  # noqa: E402
    SIZE,
    save_tiny_clip,
    tiny_flux_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)
from PIL import Image  # noqa: E402

from diffdict.cli import main  # noqa: E402
from diffdict.feature_stats import STATS_FILE, load_feature_stats  # noqa: E402
from diffdict.metrics.backbones import backbone_available  # noqa: E402

PIPELINES = {"sdxl-turbo": tiny_sdxl_pipeline, "flux-schnell": tiny_flux_pipeline, "sd": tiny_sd_pipeline}
SITES = {"sdxl-turbo": "mid.0", "flux-schnell": "double.1", "sd": "mid.0"}
PROMPTS = ["a photo of a dog", "a red car on the left", "a cat", "a big blue car", "a photo of a small cat",
           "a dog at the top"]
TRAIN = ["--arch", "topk", "--k", "2", "--expansion", "2", "--tokens", "1024", "--batch-size", "128",
         "--init-tokens", "256", "--no-progress"]


def run_cli(argv, capsys):
    """(exit code, stdout, the error line): diffusers may draw loading bars on stderr first."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("diffdict: error")]
    return code, captured.out, "\n".join(errors) if errors else captured.err.strip()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each tiny pipeline saved once, as a user's save_pretrained folder."""
    root = tmp_path_factory.mktemp("pipelines")
    for name, build in PIPELINES.items():
        build().save_pretrained(root / name)
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(saved, tmp_path_factory):
    """Per host: a store collected through the CLI from the saved folder, and a run trained on it."""
    root = tmp_path_factory.mktemp("runs")
    for name in PIPELINES:
        store, run = root / f"{name}-store", root / f"{name}-run"
        assert main(["collect", "--model", name, "--model-path", str(saved / name), "--image-size", str(SIZE),
                     "--sites", SITES[name], "--prompts", str(saved / "prompts.txt"), "--denoise-steps", "2",
                     "--dtype", "float32", "--out", str(store), "--no-progress"]) == 0
        assert main(["train", "--acts", str(store), *TRAIN, "--out", str(run)]) == 0
    return root


def member(run):
    return next(p for p in run.iterdir() if (p / "config.json").exists())


# -- generate --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PIPELINES))
def test_generate_free_text_on_every_real_host(saved, tmp_path, capsys, name):
    argv = ["generate", "--model", name, "--model-path", saved / name, "--image-size", SIZE, "--steps", 2,
            "--prompt", "a photo of a dog", "--prompt", "a red car", "--seed", 3]
    code, out, err = run_cli(argv + ["--out", tmp_path / "a.png", "--out-dir", tmp_path / "each"], capsys)
    assert code == 0, err
    assert f"wrote 2 image(s) of {name}" in out
    assert Image.open(tmp_path / "each" / "00000.png").size == (SIZE, SIZE)
    # 16 px images are shown at 8x (about 128 px a tile): two tiles and a 1 px gap
    assert Image.open(tmp_path / "a.png").size == (2 * 8 * SIZE + 1, 8 * SIZE)
    assert run_cli(argv + ["--out", tmp_path / "b.png"], capsys)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # same seed, same image


def test_generate_refuses_what_the_host_cannot_take(saved, tmp_path, capsys):
    cases = [
        (["--prompt", "a red dog"], "prompt word 'dog' is not in the shapes world's vocabulary"),
        (["--model", "sdxl-turbo", "--model-path", saved / "sdxl-turbo", "--image-size", SIZE,
          "--prompt", " ".join(["red"] * 20)], "prompt 0 has 22 CLIP tokens, more than the model's 16"),
        (["--model", "sd", "--model-path", tmp_path / "nowhere", "--prompt", "a dog"], "cannot load sd model from"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(["generate", *extra, "--out", tmp_path / "x.png"], capsys)
        assert code == 2 and err.count("\n") == 0 and message in err, err
    # no abbreviations: --model is not read as --model-path
    with pytest.raises(SystemExit):
        main(["generate", "--model-p", str(saved / "sd"), "--prompt", "a dog", "--out", str(tmp_path / "x.png")])


# -- intervene, every mode -------------------------------------------------------------------
MODES = {
    "add": ["--feature", "F", "--strength", "8"],
    "latent": ["--feature", "F", "--op", "add", "--strength", "8"],
    "splice": [],
    "ablate": ["--ablate-scale", "0"],
    "icon": ["--feature", "F", "--count", "2"],
}


def firing_feature(folder, capsys, argv) -> int:
    """Feature 0 through the CLI with no typical activation given: the statistics are
    computed from the recorded store and cached (the call fails when feature 0 never fired).
    Returns the feature that fired most."""
    assert not (folder / STATS_FILE).exists()
    code, _, err = run_cli(["intervene", "--run", folder, "--feature", 0, *argv], capsys)
    assert code == 0 or "never fired" in err, err
    return int(load_feature_stats(folder).count.argmax())


@pytest.mark.parametrize("name", list(PIPELINES))
def test_intervene_every_mode_on_real_hosts(saved, trained, tmp_path, capsys, name):
    folder = member(trained / f"{name}-run")
    feature = firing_feature(folder, capsys, ["--prompt", "a dog", "--out", tmp_path / "first"])
    stats = load_feature_stats(folder)
    assert stats.tokens == len(PROMPTS) * 2 * stats.meta["grid"][0] * stats.meta["grid"][1]
    assert stats.meta["host"]["source"] == str((saved / name).resolve())
    for mode, options in MODES.items():
        argv = [a if a != "F" else feature for a in options]
        prompts = [] if mode == "icon" else ["--prompt", "a photo of a dog", "--prompt", "a red car"]
        out = tmp_path / mode
        code, text, err = run_cli(["intervene", "--run", folder, "--mode", mode, *argv, *prompts, "--seed", 1,
                                   "--out", out], capsys)
        assert code == 0, (mode, err)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["intervention"]["mode"] == mode and metrics["settings"]["model"] == name
        assert metrics["settings"]["num_steps"] == 2  # generated as the store was
        assert len(metrics["per_image"]) == 2 and "pixel MAE" in text
        assert Image.open(out / "grid.png").size == (3 * 8 * SIZE + 2, 2 * 8 * SIZE + 1)
        if mode in ("add", "ablate", "icon"):
            assert metrics["aggregate"]["pixel_mae"]["mean"] > 0, mode
    assert metrics["per_image"][0]["prompt"] == ""  # icon: the empty prompt


@pytest.mark.parametrize("name", ["sdxl-turbo"])
def test_intervene_checks_everything_before_generating(trained, tmp_path, capsys, name):
    folder = member(trained / f"{name}-run")
    base = ["intervene", "--run", folder, "--prompt", "a photo of a dog", "--out", tmp_path / "o"]
    cases = [] if backbone_available("open-clip")[0] else [
        (["--mode", "add", "--feature", 0, "--activation", 1, "--target", "a photo of a dog"],
         "--target on sdxl-turbo is read by the open-clip backbone"),
    ]
    cases += [
        (["--mode", "add", "--feature", 0, "--activation", 1, "--backbone", "shapes-clip"],
         "shapes-clip backbone reads only shapes-world images"),
        (["--mode", "splice", "--feature", 3], "--feature does not apply to --mode splice"),
        (["--mode", "ablate", "--op", "add"], "--op does not apply to --mode ablate (it takes --ablate-scale)"),
        (["--mode", "latent", "--strength", 2], "--mode latent needs --feature N"),
        (["--mode", "add", "--feature", 0, "--activation", 1, "--steps", "0-5"], "outside the schedule"),
    ]
    for extra, message in cases:
        code, _, err = run_cli(base + extra, capsys)
        assert code == 2 and err.count("\n") == 0 and message in err, (extra, err)
        assert not list(tmp_path.glob("o/*.png")) and not (tmp_path / "o" / "metrics.json").exists()  # no image made


@pytest.mark.parametrize("name", ["sdxl-turbo", "flux-schnell"])
def test_free_text_target_judged_by_a_clip_backbone(trained, tmp_path, capsys, name):
    save_tiny_clip(tmp_path / "clip")
    folder = member(trained / f"{name}-run")
    argv = ["intervene", "--run", folder, "--mode", "add", "--feature", 0, "--activation", 1, "--strength", 8,
            "--prompt", "a photo of a cat", "--prompt", "a red car", "--target", "a photo of a dog",
            "--backbone", "clip", "--backbone-path", tmp_path / "clip", "--seed", 0]
    code, text, err = run_cli(argv + ["--out", tmp_path / "one"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["settings"]["backbone"] == "clip" and metrics["causal_strength"]["target"] == "a photo of a dog"
    row = metrics["per_image"][0]
    assert -1 <= row["clip_explanation_edited"] <= 1 and row["perceptual"] > 0
    assert "p_target_control" in row and "causal strength on a photo of a dog" in text
    assert run_cli(argv + ["--out", tmp_path / "two"], capsys)[0] == 0  # same seed, same numbers
    again = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert again["aggregate"] == metrics["aggregate"] and again["causal_strength"] == metrics["causal_strength"]


def test_moved_model_folder_and_store_are_one_clear_line(saved, trained, tmp_path, capsys):
    # a run whose store and model folder have both moved
    shutil.copytree(saved / "sd", tmp_path / "sd")
    store = tmp_path / "store"
    assert main(["collect", "--model", "sd", "--model-path", str(tmp_path / "sd"), "--image-size", str(SIZE),
                 "--sites", "mid.0", "--prompts", str(saved / "prompts.txt"), "--denoise-steps", "2",
                 "--dtype", "float32", "--out", str(store), "--no-progress"]) == 0
    assert main(["train", "--acts", str(store), *TRAIN, "--out", str(tmp_path / "run")]) == 0
    folder = member(tmp_path / "run")
    shutil.move(tmp_path / "sd", tmp_path / "sd-moved")
    capsys.readouterr()
    argv = ["intervene", "--run", folder, "--mode", "splice", "--prompt", "a dog", "--out", tmp_path / "o"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "was collected with the sd model folder" in err and "--model-path" in err
    assert run_cli(argv + ["--model-path", tmp_path / "sd-moved"], capsys)[0] == 0
    shutil.move(store, tmp_path / "store-moved")
    code, _, err = run_cli(["intervene", "--run", folder, "--mode", "add", "--feature", 0, "--prompt", "a dog",
                            "--model-path", tmp_path / "sd-moved", "--out", tmp_path / "o2"], capsys)
    assert code == 2 and err.count("\n") == 0 and "which is missing (moved or deleted); pass --store" in err
    code, _, err = run_cli(["report", "--run", folder, "--out", tmp_path / "site"], capsys)
    assert code == 2 and err.count("\n") == 0 and "which is missing (moved or deleted)" in err
    code, _, err = run_cli(["report", "--run", folder, "--store", tmp_path / "store-moved", "--out",
                            tmp_path / "site"], capsys)
    assert code == 0 and (tmp_path / "site" / "index.html").exists()


# -- the toy chain: nothing run by hand in between ------------------------------------------
def test_collect_train_intervene_report_on_a_fresh_store(tmp_path, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert main(["collect", "--sites", "mid.0", "--prompts", "8", "--denoise-steps", "2", "--out", str(store),
                 "--dtype", "float32", "--no-progress"]) == 0
    assert main(["train", "--acts", str(store), *TRAIN, "--out", str(run)]) == 0
    folder = member(run)
    code, _, err = run_cli(["intervene", "--run", run, "--feature", 0, "--activation", 1, "--prompts", 2,
                            "--no-control", "--out", tmp_path / "warm"], capsys)
    assert code == 0, err
    assert not (folder / STATS_FILE).exists()  # an explicit activation needs no statistics
    feature = firing_feature(folder, capsys, ["--prompts", 2, "--no-control", "--out", tmp_path / "first"])
    stats = load_feature_stats(folder)
    assert stats.tokens == 8 * 2 * 8 * 8 and stats.meta["store"] == str(store.resolve())  # mid.0: 8x8 tokens
    code, _, err = run_cli(["intervene", "--run", run, "--feature", feature, "--strength", 4, "--prompts", 2,
                            "--target", "color:red", "--out", tmp_path / "edit"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "edit" / "metrics.json").read_text())
    assert metrics["causal_strength"]["target"] == "color:red" and metrics["settings"]["num_steps"] == 2
    assert metrics["intervention"]["activation"] == pytest.approx(float(stats.mean_activation[feature]))
    # the toy model's judge knows the shapes world's words only: refused before any image is made
    code, _, err = run_cli(["intervene", "--run", run, "--feature", feature, "--prompts", 2, "--target",
                            "a photo of a dog", "--out", tmp_path / "dog"], capsys)
    assert code == 2 and "'photo' is not in the shapes world's vocabulary" in err
    assert not list(tmp_path.glob("dog/*.png"))  # refused before any image was made
    code, out, err = run_cli(["report", "--run", run, "--out", tmp_path / "site"], capsys)
    assert code == 0, err
    index = (tmp_path / "site" / "index.html").read_text()
    assert "mid.0" in index and (tmp_path / "site" / "img").is_dir()
    # toy top images (32 px) are shown at 4x
    top = sorted((tmp_path / "site" / "interpret" / "images").glob("*_top_0.png"))[0]
    assert Image.open(top).size == (128, 128)


def test_evaluate_fidelity_rebuilds_the_recorded_real_host(trained, tmp_path, capsys):
    run = trained / "sdxl-turbo-run"
    code, out, err = run_cli(["evaluate", "--run", run, "--acts", trained / "sdxl-turbo-store", "--fidelity-prompts", 2,
                              "--out", tmp_path / "eval.json"], capsys)
    assert code == 0, err
    (metrics,) = json.loads((tmp_path / "eval.json").read_text())["members"].values()
    assert metrics["fidelity_prompts"] == 2 and metrics["spliced_pixel_mae"] > 0
    if not backbone_available("open-clip")[0]:  # pixel metrics only, never shapes-clip on a real model
        assert "clip_score_drop" not in metrics


def test_ablate_block_on_a_real_host_measures_distances_only(saved, tmp_path, capsys):
    base = ["ablate-block", "--model", "sdxl-turbo", "--model-path", saved / "sdxl-turbo", "--image-size", SIZE,
            "--sites", "mid.0,up.0.1", "--prompt", "a photo of a dog", "--prompt", "a red car"]
    code, _, err = run_cli(base + ["--out", tmp_path / "refused"], capsys)
    assert code == 2 and "shapes-clip backbone reads only shapes-world images, not sdxl-turbo's" in err
    code, _, err = run_cli(base + ["--backbone", "none", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(metrics["sites"]) == {"mid.0", "up.0.1"} and metrics["settings"]["backbone"] is None
    assert all(entry["pixel_mae"]["mean"] > 0 and "families" not in entry for entry in metrics["sites"].values())
    assert "No concept columns" in (tmp_path / "a" / "table.md").read_text()


def test_app_backend_needs_only_the_dictionary(saved, trained, tmp_path):
    """The app finds the store the dictionary was trained on, rebuilds its host from the
    saved folder and computes the statistics and top images it shows."""
    from diffdict.report.app import make_backend

    run = tmp_path / "run"
    shutil.copytree(trained / "sd-run", run)
    backend = make_backend(run)
    assert backend.host.name == "sd" and backend.host.source == str((saved / "sd").resolve())
    assert backend.num_steps == 2 and (member(run) / STATS_FILE).exists()
    feature = int(load_feature_stats(member(run)).count.argmax())
    tiles, text = backend.browse(feature)
    assert tiles and tiles[0][0].shape[:2] == (SIZE * 16, SIZE * 16)  # 16 px shown at about 256 px
    image, features, order = backend.generate("a photo of a dog", seed=0)
    assert image.shape == (SIZE, SIZE, 3)
    original, edited = backend.edit("a photo of a dog", feature, 10.0)
    assert (original != edited).any()


def test_interpret_on_a_real_store(trained, tmp_path, capsys):
    run = trained / "flux-schnell-run"
    code, _, err = run_cli(["interpret", "--run", run, "--out", tmp_path / "o", "--explainer", "concept-oracle"], capsys)
    assert code == 2 and err.count("\n") == 0 and "concept-oracle judge knows only the shapes world" in err
    assert "--explainer vlm" in err
    # defaults: no shapes-world explainer, the store the run was trained on, icons from the recorded host
    code, out, err = run_cli(["interpret", "--run", run, "--out", tmp_path / "i", "--features", "0-3", "--icons"],
                             capsys)
    assert code == 0, err
    index = json.loads((tmp_path / "i" / "interpret.json").read_text())
    assert index["settings"]["explainer"] is None and index["settings"]["scorers"] == []
    assert index["store"].endswith("flux-schnell-store")
    icons = sorted((tmp_path / "i" / "images").glob("*_icon.png"))
    assert icons and Image.open(icons[0]).size == (8 * SIZE, 8 * SIZE)
