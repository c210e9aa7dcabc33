"""The ablation studies, in --quick form on the toy model (random-init weights saved to a
folder, so that the tests do not depend on the shipped ones): each study's table has every
row and column it names with values in range; properties any correct run shows; the
cache (a second run trains nothing); `study all --quick` end to end through the CLI; bad
input gives one clear line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from diffdict.cli import main
from diffdict.errors import DiffdictError
from diffdict.options import load_config_file, resolve
from diffdict.studies import STUDIES, get_study, run_study
from diffdict.studies.base import StudyContext
from diffdict.studies.cache import Cache

SEEDS = 2


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory):
    """A random-init toy model and shapes-clip, saved like the shipped weights."""
    from diffdict.models import ShapesClip, ToyConfig, ToyDiffusion

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ToyDiffusion(ToyConfig()).save_pretrained(root / "toy", dtype=torch.float32)
    torch.manual_seed(1)
    ShapesClip().save_pretrained(root / "clip", dtype=torch.float32)
    return {"model_path": str(root / "toy"), "judge_path": str(root / "clip")}


def model_args(folders) -> list[str]:
    # one thread: OpenMP threads thrash when the machine's cores are busy; one process: the
    # tests count what the cache computed
    return ["--model-path", folders["model_path"], "--judge-path", folders["judge_path"], "--threads", "1",
            "--jobs", "1"]


@pytest.fixture(scope="session")
def study_all(tmp_path_factory, model_folders):
    """`diffdict study all --quick` once for the session: every study, one cache, the report."""
    out = tmp_path_factory.mktemp("study-all")
    code = main(["study", "all", "--quick", "--seeds", str(SEEDS), "--out", str(out), *model_args(model_folders)])
    assert code == 0
    return out


def read_results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


# -- every study writes its table ---------------------------------------------------------------
@pytest.mark.parametrize("name", list(STUDIES))
def test_study_table_has_every_row_and_column_in_range(study_all, name):
    folder = study_all / name
    results = read_results(folder)
    study = get_study(name)
    config = json.loads((folder / "config.json").read_text())
    assert config["study"] == name and config["quick"] is True and config["seeds"] == SEEDS
    assert results["rows"] == config["resolved"]["rows"] and results["rows"]
    with open(folder / "table.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["variant"] for r in table] == results["rows"]
    markdown = (folder / "table.md").read_text()
    for row in results["rows"]:
        assert f"| {row} |" in markdown
    for metric in study.metrics:
        for row in table:
            for stat in ("mean", "std", "ci95_low", "ci95_high", "n"):
                assert f"{metric.name}_{stat}" in row
            mean = float(row[f"{metric.name}_mean"])
            assert metric.check(mean), f"{name}: {metric.name} = {mean} for {row['variant']} out of range"
    for record in results["per_seed"]:
        for metric in study.metrics:
            if metric.name in record:
                assert metric.check(record[metric.name]), (name, metric.name, record)
    # every row has one record per seed
    for row in results["rows"]:
        assert sorted(r["seed"] for r in results["per_seed"] if r["row"] == row) == list(range(SEEDS))
    for plot in results["plots"]:
        assert (folder / plot).read_bytes().startswith(b"\x89PNG")


def test_reconstruction_and_ground_truth_columns_are_filled(study_all):
    """On the toy model the benchmark's ground-truth scores and the reconstruction metrics
    are never n/a, and every row is compared with TopK, paired over concepts and trials."""
    results = read_results(study_all / "sparsity-mechanism")
    for row in results["rows"]:
        if row != "topk":
            diff = results["differences"][row]
            assert diff["reference"] == "topk"
            # detection F1 pairs the 27 concepts of every seed (less those no test prompt of the
            # tiny quick store has); steering pairs every trial
            assert 20 <= diff["detect_f1"]["n"] <= 27 * SEEDS
            assert diff["steer_success"]["n"] == diff["causal_strength"]["n"] >= 2
        for name in ("mse", "fvu", "explained_variance", "l0", "dead_fraction", "detect_f1", "purity", "coverage",
                     "steer_success", "causal_strength"):
            assert results["summary"][row][name]["n"] == SEEDS, (row, name)
        ci = results["summary"][row]["fvu"]["ci95"]
        assert ci[0] <= results["summary"][row]["fvu"]["mean"] <= ci[1]


def test_fvu_falls_as_k_rises(study_all):
    results = read_results(study_all / "sparsity-level")
    fvu = {row: results["summary"][row]["fvu"]["mean"] for row in results["rows"]}
    assert fvu["k=5"] > fvu["k=10"] > fvu["k=20"]
    l0 = {row: results["summary"][row]["l0"]["mean"] for row in results["rows"]}
    assert l0 == pytest.approx({"k=5": 5, "k=10": 10, "k=20": 20})


def test_without_auxk_no_fewer_dead_features(study_all):
    results = read_results(study_all / "auxk")
    by_seed = {}
    for record in results["per_seed"]:
        by_seed.setdefault(record["seed"], {})[record["row"]] = record
    for records in by_seed.values():
        assert records["without AuxK"]["train_dead_fraction"] >= records["with AuxK"]["train_dead_fraction"]
    curves = results["curves"]["dead_fraction"]
    assert set(curves) == {"with AuxK", "without AuxK"} and all(len(c) == SEEDS for c in curves.values())


def test_sparsity_mechanism_reports_l0_reached_and_knobs(study_all):
    results = read_results(study_all / "sparsity-mechanism")
    assert results["rows"] == ["topk", "soft-threshold", "relu-l1", "relu", "batchtopk", "jumprelu",
                               "matryoshka-batchtopk"]
    assert results["summary"]["topk"]["l0"]["mean"] == pytest.approx(10)
    assert any(note.startswith("relu-l1 (up.1.1): l1 = ") for note in results["notes"])
    # every calibration member's L0 is measured, but only the chosen ones are scored further
    computed = results["cache"]["computed"]
    not_chosen = 3  # relu-l1, soft-threshold and jumprelu each try two values in --quick, on the first seed
    assert computed["reconstruction"] == computed["evaluation"] + not_chosen


def test_blocks_rows_are_every_block_site(study_all):
    results = read_results(study_all / "blocks")
    config = json.loads((study_all / "blocks" / "config.json").read_text())
    assert results["rows"] == config["resolved"]["sites"]
    assert "mid.0" in results["rows"] and not any(r.endswith(".mlp") for r in results["rows"])


def test_report_links_tables_plots_and_browsers(study_all):
    index = (study_all / "index.html").read_text()
    for name in STUDIES:
        assert f'href="{name}/table.md"' in index
        for plot in read_results(study_all / name)["plots"]:
            assert f'src="{name}/{plot}"' in index
    summary = json.loads((study_all / "summary.json").read_text())
    assert summary["browsers"]
    for path in set(summary["browsers"].values()):
        assert (study_all / path).exists() and f'href="{path}"' in index


# -- caching ----------------------------------------------------------------------------------
def test_second_run_trains_nothing(study_all, model_folders, tmp_path):
    """The same study on the same cache: nothing trained, nothing collected, same table."""
    options = {"seeds": SEEDS, "threads": 1, "jobs": 1, **model_folders}
    results = run_study("sparsity-level", tmp_path / "again", options, quick=True, cache_dir=study_all / "cache",
                        log=lambda message: None)
    assert results["trained"] == 0
    assert "dictionary" not in results["cache"]["computed"] and "store" not in results["cache"]["computed"]
    assert results["cache"]["hits"]["dictionary"] == 3 * SEEDS
    first = read_results(study_all / "sparsity-level")
    assert json.dumps(results["summary"], sort_keys=True) == json.dumps(first["summary"], sort_keys=True)


def test_changing_a_setting_recomputes_only_what_depends_on_it(study_all, model_folders, tmp_path):
    """A new k trains one new member per seed; the stores and the other members are reused."""
    options = {"seeds": SEEDS, "ks": "10,12", "threads": 1, "jobs": 1, **model_folders}
    results = run_study("sparsity-level", tmp_path / "k12", options, quick=True, cache_dir=study_all / "cache",
                        log=lambda message: None)
    assert results["trained"] == SEEDS
    assert results["cache"]["computed"]["dictionary"] == SEEDS
    assert "store" not in results["cache"]["computed"]


def test_cache_keys_depend_on_settings_only(tmp_path):
    cache = Cache(tmp_path)
    calls = []
    for settings in ({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, {"a": 2, "b": [1, 2]}):
        cache.json("step", settings, lambda: calls.append(1) or {"value": float("nan")})
    stats = cache.stats()
    assert len(calls) == 2 and (stats["hits"], stats["computed"]) == ({"step": 1}, {"step": 2})
    assert set(stats["seconds"]) == {"step"}
    assert math.isnan(cache.json("step", {"a": 1, "b": [1, 2]}, lambda: {})["value"])


def test_cache_time_is_counted_for_the_step_that_spent_it(tmp_path, monkeypatch):
    from diffdict.studies import cache as cache_module

    clock = [0.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: clock[0])
    cache = Cache(tmp_path)

    def inner() -> dict:
        clock[0] += 5.0
        return {}

    def outer() -> dict:
        clock[0] += 2.0
        cache.json("inner", {}, inner)
        clock[0] += 1.0
        return {}

    cache.json("outer", {}, outer)
    cache.json("outer", {}, outer)  # served: no time
    assert cache.stats()["seconds"] == {"outer": 3.0, "inner": 5.0}


def _build_slowly(root: str, ready, log: str) -> None:
    """Build the entry "slow" in a cache at ``root``, signalling ``ready`` once its lock is held."""
    import time

    def build(folder: Path) -> None:
        ready.set()
        time.sleep(1.0)
        with open(log, "a") as handle:
            handle.write("built\n")
        (folder / "value.txt").write_text("1")

    Cache(root).folder("slow", {"a": 1}, build)


def test_two_processes_build_a_shared_entry_once(tmp_path):
    """The second process waits for the first one's build and is served its entry."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready, log = context.Event(), tmp_path / "builds.txt"
    first = context.Process(target=_build_slowly, args=(str(tmp_path / "cache"), ready, str(log)))
    first.start()
    assert ready.wait(60)
    cache = Cache(tmp_path / "cache")
    folder = cache.folder("slow", {"a": 1}, lambda f: _build_slowly_here(f, log))
    first.join(60)
    assert first.exitcode == 0
    assert log.read_text() == "built\n" and (folder / "value.txt").read_text() == "1"
    assert cache.stats()["hits"] == {"slow": 1} and cache.stats()["computed"] == {}


def _build_slowly_here(folder: Path, log: Path) -> None:
    with open(log, "a") as handle:
        handle.write("built here\n")


def test_a_helper_works_through_loops_backwards(model_folders, tmp_path):
    study = get_study("sparsity-level")
    config = resolve(study.Config, {"model_path": model_folders["model_path"]}, quick=True)
    ctx = StudyContext(study, config, tmp_path, Cache(tmp_path / "cache"), log=lambda message: None)
    assert ctx.order([0, 1, 2]) == [0, 1, 2]
    ctx.helper = True
    assert ctx.order([0, 1, 2]) == [2, 1, 0]


def test_a_study_with_a_helper_process_writes_the_same_table(study_all, model_folders, tmp_path):
    """--jobs 2 on a fresh cache: the helper shares the work, the table is the one of one process."""
    options = {"seeds": SEEDS, "threads": 1, "jobs": 2, **model_folders}
    results = run_study("sparsity-level", tmp_path / "parallel", options, quick=True, cache_dir=tmp_path / "cache",
                        log=lambda message: None)
    first = read_results(study_all / "sparsity-level")
    assert json.dumps(results["summary"], sort_keys=True) == json.dumps(first["summary"], sort_keys=True)
    assert not (tmp_path / "cache" / ".helpers").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*.tmp")]
    built = len(list((tmp_path / "cache" / "dictionary").glob("*/entry.json")))
    assert built == 3 * SEEDS  # every dictionary once, whichever process trained it


def test_a_helper_whose_main_process_was_killed_stops(model_folders, tmp_path):
    """The main process dies without stopping its helper (kill -9): the helper notices and
    stops, leaving no half-built entry."""
    import os
    import subprocess
    import sys
    import time

    script = f"""
import os, time
from diffdict.studies.parallel import Helpers
helpers = Helpers(1, 1, options={{"seeds": 1, "model_path": {model_folders['model_path']!r},
                                  "judge_path": {model_folders['judge_path']!r}}},
                  quick=True, names=["sparsity-mechanism"], cache_root={str(tmp_path / 'cache')!r}, browsers=False,
                  browser_features=None, verify=True)
print(helpers.processes[0][0].pid, flush=True)
time.sleep(3)
os._exit(0)
"""
    output = tmp_path / "main.txt"  # a file, not a pipe: the helper inherits it and keeps it open
    with open(output, "w") as handle:
        done = subprocess.run([sys.executable, "-c", script], stdout=handle, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, output.read_text()
    helper = int(output.read_text().split()[0])
    deadline = time.monotonic() + 20  # its own work would take longer
    while time.monotonic() < deadline:
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(helper, 9)
        raise AssertionError("the helper outlived its main process by 20 s")
    assert not [p for p in (tmp_path / "cache").rglob("*.tmp")]
    assert not (tmp_path / "cache" / ".helpers").exists()


# -- bad input ---------------------------------------------------------------------------------
def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("diffdict: error: ")
    return err


def test_unknown_study(capsys, tmp_path):
    err = one_line_error(capsys, ["study", "sparsity-levels", "--out", str(tmp_path)])
    assert "unknown study 'sparsity-levels'" in err and "sparsity-level" in err


def test_unknown_site(capsys, tmp_path, model_folders):
    err = one_line_error(capsys, ["study", "sparsity-level", "--quick", "--sites", "mid.9", "--out", str(tmp_path),
                                  *model_args(model_folders)])
    assert "unknown site 'mid.9'" in err and "up.0.1" in err


@pytest.mark.parametrize("argv, expected", [
    (["sparsity-mechanism", "--mechanisms", "topk,sparsemax"], "--mechanisms: 'sparsemax' is not one of"),
    (["sparsity-level", "--ks", "5,ten,20"], "--ks member 2 ('ten'): expected an integer"),
    (["sparsity-level", "--ks", "5,0"], "--ks: 0 must be at least 1"),
    (["intervention-method", "--methods", "add,paint"], "--methods: 'paint' is not one of"),
    (["sparsity-level", "--model", "sdxl-turbo", "--judge", "shapes-clip"], "--judge shapes-clip reads only the shapes world"),
    (["dictionaries", "--kinds", "sae,pca"], "--kinds: 'pca' is not one of"),
    (["sparsity-level", "--seeds", "0"], "--seeds: 0 must be at least 1"),
    (["all", "--seeds", "0"], "--seeds: 0 must be at least 1"),
    (["blocks", "--bogus", "1"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_clear_line(capsys, tmp_path, argv, expected):
    err = one_line_error(capsys, ["study", argv[0], "--out", str(tmp_path), *argv[1:]])
    assert expected in err


def test_python_api_validates_list_members():
    study = get_study("sparsity-mechanism")
    with pytest.raises(DiffdictError, match="--mechanisms: 'nope' is not one of"):
        resolve(study.Config, {"mechanisms": ["topk", "nope"]})
    with pytest.raises(DiffdictError, match="--l1-grid member 2"):
        resolve(study.Config, {"l1_grid": [0.1, "x"]})
    config = resolve(study.Config, {"mechanisms": ("topk", "relu")}, quick=True)
    assert config.mechanisms == ("topk", "relu") and config.quick and config.seeds == 2


def test_capture_option_and_its_former_name(capsys):
    from diffdict.commands.study import study_parser

    study = get_study("sparsity-level")
    assert resolve(study.Config, {"capture": "output"}).capture == "output"
    assert resolve(study.Config, {"what": "output"}).capture == "output"  # the former name, from Python
    assert resolve(study.Config, {"what": "output", "capture": "output"}).capture == "output"
    assert resolve(study.Config, {}).capture is None
    with pytest.raises(DiffdictError, match="--what is the former name of --capture"):
        resolve(study.Config, {"what": "output", "capture": "update"})
    with pytest.raises(DiffdictError, match="--capture: 'mlp' is not one of"):
        resolve(study.Config, {"what": "mlp"})
    for name in ("sparsity-level", "all"):
        parser = study_parser(name)
        for flag in ("--capture", "--what"):
            assert vars(parser.parse_args(["--out", "x", flag, "output"]))["capture"] == "output"
        text = parser.format_help()
        assert "--capture" in text and "--what" not in text  # the former name works, unlisted


def test_a_config_file_sets_study_options_and_flags_override_it(tmp_path, monkeypatch):
    import diffdict.studies

    study = get_study("sparsity-level")
    path = tmp_path / "study.toml"
    path.write_text('seeds = 2\nsites = "up.1.1"\nks = [5, 10]\nwhat = "output"\ndenoise-steps = 4\n')
    config = resolve(study.Config, load_config_file(path, study.Config))
    assert (config.seeds, config.sites, config.ks, config.capture, config.denoise_steps) == (
        2, ("up.1.1",), (5, 10), "output", 4)
    path.write_text('seeds = 2\nsites = ["up.1.1", "up.0.1"]\n')
    given = {}
    monkeypatch.setattr(diffdict.studies, "run_study", lambda name, out, options, **kwargs: given.update(
        options) or {"rows": [], "seconds": 0, "trained": 0})
    assert main(["study", "sparsity-level", "--config", str(path), "--seeds", "3", "--out", str(tmp_path / "out")]) == 0
    config = resolve(study.Config, given)
    assert (config.seeds, config.sites) == (3, ("up.1.1", "up.0.1"))


@pytest.mark.parametrize("study, line, argv", [
    ("sparsity-level", "seeds = 0", ["--seeds", "0"]),
    ("all", "seeds = 0", ["--seeds", "0"]),
    ("sparsity-level", 'ks = [5, "ten"]', ["--ks", "5,ten"]),
    ("dictionaries", 'kinds = "sae,pca"', ["--kinds", "sae,pca"]),
    ("sparsity-level", 'capture = "mlp"', ["--capture", "mlp"]),
    ("all", "jobs = 0", ["--jobs", "0"]),
])
def test_a_bad_value_in_a_config_file_reads_as_the_same_bad_flag(capsys, tmp_path, study, line, argv):
    path = tmp_path / "study.toml"
    path.write_text(line + "\n")
    base = ["study", study, "--out", str(tmp_path / "out")]
    assert one_line_error(capsys, [*base, "--config", str(path)]) == one_line_error(capsys, [*base, *argv])


def test_config_file_errors_are_one_line_naming_the_file(capsys, tmp_path):
    path = tmp_path / "study.toml"
    base = ["study", "sparsity-level", "--out", str(tmp_path / "out"), "--config", str(path)]
    assert "study.toml: no such file" in one_line_error(capsys, base)
    path.write_text("seed = 1\nnseeds = 2\n")
    err = one_line_error(capsys, base)
    assert f"--config {path}: unknown option 'nseeds'; did you mean seeds?" in err
    path.write_text("ks = [5, 10\n")
    assert f"--config {path}: not valid TOML" in one_line_error(capsys, base)


# -- real-model adapters, offline: shapes and files --------------------------------------------
@pytest.mark.parametrize("model, site", [("sdxl-turbo", "down.1.0"), ("flux-schnell", "double.0")])
def test_real_model_adapters_produce_the_same_table(tmp_path, model, site):
    pytest.importorskip("tokenizers")
    import test_hosts_real as tiny
    from diffdict.hosts import load_host
    from diffdict.metrics.backbones import ShapesClipBackbone
    from diffdict.models import ShapesClip

    if model == "sdxl-turbo":
        host = load_host(model, pipeline=tiny.tiny_sdxl_pipeline(), image_size=tiny.SIZE, device="cpu")
    else:
        host = load_host(model, pipeline=tiny.tiny_flux_pipeline(), image_size=tiny.SIZE, device="cpu",
                         max_sequence_length=24)
    torch.manual_seed(1)
    judge = ShapesClipBackbone(model=ShapesClip())
    prompts = tmp_path / "prompts.txt"  # the tiny tokenizers know a few words and 16 tokens
    prompts.write_text("\n".join(tiny.PROMPTS) + "\n")
    options = {"model": model, "sites": site, "seeds": 1, "ks": "2,4", "threads": 1, "prompts_file": str(prompts)}
    results = run_study("sparsity-level", tmp_path / model, options, quick=True, host=host, judge=judge,
                        log=lambda message: None)
    assert results["rows"] == ["k=2", "k=4"]
    summary = results["summary"]
    for row in results["rows"]:
        assert summary[row]["fvu"]["n"] == 1 and summary[row]["fidelity_lpips"]["n"] == 1
        assert summary[row]["detect_f1"]["n"] == 0  # no ground truth outside the shapes world
        assert summary[row]["causal_strength"]["n"] == 0
    assert (tmp_path / model / "table.md").exists()
    config = json.loads((tmp_path / model / "config.json").read_text())
    assert config["resolved"]["host"]["host"] == model
    if model == "sdxl-turbo":  # without concepts, the edits use the most frequent features
        options = {k: v for k, v in options.items() if k != "ks"}
        edits = run_study("intervention-method", tmp_path / "edits", options, quick=True, host=host, judge=judge,
                          log=lambda message: None)
        for row in edits["rows"]:
            assert edits["summary"][row]["lpips"]["n"] == 1 and edits["summary"][row]["causal_strength"]["n"] == 0


def test_context_sites_default_per_host(model_folders, tmp_path):
    study = get_study("sparsity-level")
    config = resolve(study.Config, {"model_path": model_folders["model_path"]}, quick=True)
    ctx = StudyContext(study, config, tmp_path, Cache(tmp_path / "cache"), log=lambda message: None)
    assert ctx.sites == ["up.1.1"]


def test_generation_defaults_to_the_hosts_study_steps(model_folders, tmp_path):
    from diffdict.studies.stages import generation_settings

    study = get_study("sparsity-level")
    for options, steps in (({}, 6), ({"denoise_steps": 10}, 10)):
        config = resolve(study.Config, {"model_path": model_folders["model_path"], **options})
        ctx = StudyContext(study, config, tmp_path, Cache(tmp_path / "cache"), log=lambda message: None)
        assert generation_settings(ctx) == {"num_steps": steps, "guidance": 3.0}
    assert ctx.host.default_steps == 10  # other commands keep the model's default


def test_the_random_steering_control_does_not_depend_on_the_order_of_concepts(tmp_path, monkeypatch):
    # the control is cached once per site and shared by every dictionary; whichever
    # dictionary computes it first (its concepts sorted by its own F1), the same concept
    # must get the same random directions
    from types import SimpleNamespace

    import diffdict.bench.steering as steering
    from diffdict.studies import scoring
    from diffdict.studies.cache import Cache

    calls = []

    def fake_scores(generator, judge, pool, concepts, directions, norms, strengths, prompts, seed, log, random=True):
        calls.append(list(concepts))
        return {c: {"random_success": [float(i), float(seed)]} for i, c in enumerate(concepts)}

    monkeypatch.setattr(steering, "steering_scores", fake_scores)
    monkeypatch.setattr(scoring, "study_generator", lambda ctx, site: None)
    monkeypatch.setattr(scoring, "steering_pool", lambda ctx, site: None)
    host = SimpleNamespace(describe=lambda: {"host": "fake"}, study_steps=6, default_steps=10, default_guidance=3.0)
    config = SimpleNamespace(seed=5, steer_prompts=2, strength=2.0, denoise_steps=None, guidance=None)
    judge = SimpleNamespace(name="fake-judge")
    norms = {"color:blue": 2.0, "color:red": 1.0}
    first = scoring.steering_controls(SimpleNamespace(cache=Cache(tmp_path / "a"), config=config, host=host,
                                                      judge=judge), "up.1.1", norms)
    reordered = dict(reversed(list(norms.items())))
    second = scoring.steering_controls(SimpleNamespace(cache=Cache(tmp_path / "b"), config=config, host=host,
                                                       judge=judge), "up.1.1", reordered)
    assert calls == [["color:red", "color:blue"], ["color:red", "color:blue"]]
    assert first == second == {"color:red": [0.0, 5.0], "color:blue": [1.0, 5.0]}
