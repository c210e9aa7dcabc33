"""Interpretation: the streaming statistics pass, the concept oracle, the VLM client against a
local fake endpoint, the clip scorer, the ``interpret`` command and its bad input.
Tiny synthetic stores only (see _interpret_fixtures.py); no model weights needed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _interpret_fixtures import OTHER_SITE, SITE, FakeVlm, fake_answer, make_sae, make_store, scenes
from diffdict.cli import main as cli_main
from diffdict.errors import DiffdictError
from diffdict.interpret import InterpretContext, compute_activation_stats, interpret, oracle_results
from diffdict.interpret.vlm import VlmClient, VlmConfig, parse_score, user_message


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("interp") / "store")


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae") / "sae"
    make_sae(folder)
    return folder


@pytest.fixture(scope="module")
def oracle(store, sae_dir):
    sae = make_sae()
    stats = compute_activation_stats(store, sae, SITE, top_n=4)
    return oracle_results(InterpretContext(store, sae, SITE, stats), list(range(8)))


# ------------------------------------------------------------------------------ statistics


def brute_force(store, dictionary, rank_by):
    x, meta = store.read(SITE)
    codes = dictionary.encode(x).detach()
    rows, cols = store.grid(SITE)
    maps = codes.view(store.num_prompts, rows * cols, -1)  # one step: tokens in row-major order
    score = maps.amax(1) if rank_by == "max" else maps.mean(1)
    active = (maps > 0).sum(1)
    return maps, score, active


@pytest.mark.parametrize("rank_by", ["max", "mean"])
def test_streaming_top_n_equals_brute_force(store, rank_by):
    from diffdict.dictionaries import SparseAutoencoder

    sae = SparseAutoencoder(8, 24, mechanism="topk", mechanism_options={"k": 3}, seed=5)
    top_n, min_active = 5, 2
    # small blocks: many merges, and prompts cut across reads
    stats = compute_activation_stats(store, sae, SITE, top_n=top_n, rank_by=rank_by, min_active=min_active,
                                     block_tokens=150)
    maps, score, active = brute_force(store, sae, rank_by)
    assert stats.num_images == store.num_prompts and stats.num_tokens == store.num_tokens(SITE)
    checked = 0
    for f in range(sae.n_features):
        s = torch.where((score[:, f] > 0) & (active[:, f] >= min_active), score[:, f], torch.tensor(-math.inf))
        order = torch.argsort(s, descending=True, stable=True)
        order = order[torch.isfinite(s[order])][:top_n]
        k = len(order)
        assert stats.num_examples(f) == k
        assert torch.allclose(stats.top_scores[f, :k], s[order], atol=1e-5)
        assert torch.allclose(stats.top_maps[f, :k].float().flatten(1), maps[order, :, f], atol=1e-2)
        if k and len(set(s[order].tolist())) == k:
            assert stats.top_prompts[f, :k].tolist() == order.tolist()
            checked += 1
    assert checked >= 10
    # frequency and mean activation come from diffdict.feature_stats, the same numbers
    x, _ = store.read(SITE)
    codes = sae.encode(x).detach()
    assert torch.allclose(stats.frequency.double(), (codes != 0).double().mean(0), atol=1e-6)
    # the histogram holds every non-zero activation
    assert int(stats.hist.sum()) == int((codes != 0).sum())


def test_stats_save_load_and_examples(store, tmp_path):
    from diffdict.interpret.stats import ActivationStats, activation_maps

    sae = make_sae()
    stats = compute_activation_stats(store, sae, SITE, top_n=3)
    stats.save(tmp_path / "stats")
    again = ActivationStats.load(tmp_path / "stats")
    assert torch.equal(again.top_prompts, stats.top_prompts) and torch.equal(again.hist, stats.hist)
    e = again.top_examples(0)[0]
    dense = activation_maps(store, sae, SITE, [e.prompt_id], again)[0, 0].numpy()
    assert np.allclose(dense, e.map, atol=1e-2)
    with pytest.raises(DiffdictError, match=r"bad feature 99: expected an integer in 0\.\.\d+ \(the dictionary has"):
        again.top_examples(99)


# ------------------------------------------------------------------------------ the oracle


def test_oracle_finds_planted_concepts(oracle):
    assert oracle[0]["concept"] == "color:red" and oracle[0]["auroc"] > 0.98
    assert oracle[1]["concept"] == "color:blue" and oracle[1]["auroc"] > 0.98
    assert oracle[2]["concept"] == "background" and oracle[2]["auroc"] > 0.98
    assert oracle[0]["held_out"] and oracle[0]["f1"] > 0.8


def test_oracle_random_features_score_near_chance(oracle):
    random = [oracle[f]["auroc"] for f in range(3, 8)]
    assert all(abs(a - 0.5) < 0.15 for a in random), random
    assert abs(float(np.mean(random)) - 0.5) < 0.08


def test_segmentation_matches_the_renderer():
    from diffdict.interpret.groundtruth import CONCEPT_INDEX, pixel_concepts
    from diffdict.world import caption, render

    for scene in scenes(6):
        rendered = render(scene)
        masks = pixel_concepts(rendered.image, caption(scene))
        for name in ("object", "background", f"color:{scene.objects[0].color}", f"shape:{scene.objects[0].shape}"):
            truth = rendered.masks[name] >= 0.5
            got = masks[CONCEPT_INDEX[name]] > 0
            iou = (truth & got).sum() / max((truth | got).sum(), 1)
            # shape/size/region come from assigning pixels to the prompt's objects: touching
            # objects may trade edge pixels
            assert iou > (0.75 if name.startswith("shape:") else 0.85), (name, iou)


def test_anti_aliased_edges_keep_their_objects_colour():
    # known answer: every colour on every background and texture, at both sizes; read as
    # the nearest palette colour, the edge of a yellow or cyan object on black is green
    # and that of a blue or red one on white purple or yellow
    from diffdict.interpret.groundtruth import CONCEPT_INDEX, pixel_concepts
    from diffdict.world import BACKGROUNDS, COLORS, TEXTURES, caption, render
    from diffdict.world.scene import Scene, SceneObject

    wrong = []
    for background in BACKGROUNDS:
        for texture in TEXTURES:
            for colour in COLORS:
                for size in ("small", "large"):
                    scene = Scene((SceneObject("circle", colour, size, (0.45, 0.55)),), background, texture)
                    masks = pixel_concepts(render(scene).image, caption(scene))
                    shown = [c for c in COLORS if masks[CONCEPT_INDEX[f"color:{c}"]].sum() > 0]
                    if shown != [colour]:
                        wrong.append((background, texture, colour, size, shown))
    assert not wrong, wrong


# ------------------------------------------------------------------------------ the VLM client


def client_for(server, tmp_path, **overrides):
    config = dict(base_url=server.url, model="fake-vlm", api_key_env="DIFFDICT_TEST_KEY",
                  cache_dir=str(tmp_path / "cache"), timeout=0.5, max_retries=2, backoff=0.01,
                  requests_per_minute=0)
    config.update(overrides)
    return VlmClient(VlmConfig(**config))


def cached_files(tmp_path):
    return sorted((tmp_path / "cache").rglob("*.json")) if (tmp_path / "cache").exists() else []


MESSAGE = [user_message("score this", [np.zeros((8, 8, 3), np.uint8)])]


def test_vlm_retries_429_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFDICT_TEST_KEY", "sk-test")
    with FakeVlm(["429", "500"]) as server:
        client = client_for(server, tmp_path)
        assert client.chat(MESSAGE, parse=parse_score) == pytest.approx(0.9)
        assert len(server.requests) == 3 and server.auth[-1] == "Bearer sk-test"
        assert len(cached_files(tmp_path)) == 1
        again = client_for(server, tmp_path)  # a rerun: read from the cache, nothing sent
        assert again.chat(MESSAGE, parse=parse_score) == pytest.approx(0.9)
        assert len(server.requests) == 3 and again.requests_sent == 0 and again.cache_hits == 1


def test_vlm_retries_a_timeout(tmp_path):
    with FakeVlm(["sleep"], sleep=1.5) as server:
        client = client_for(server, tmp_path, timeout=0.3)
        assert client.chat(MESSAGE, parse=parse_score) == pytest.approx(0.9)
        assert client.requests_sent == 2


def test_vlm_malformed_reply_retries_then_clear_error_and_caches_nothing(tmp_path):
    with FakeVlm(default="garbage") as server:
        client = client_for(server, tmp_path)
        with pytest.raises(DiffdictError, match="no usable reply after 3 attempts: malformed reply"):
            client.chat(MESSAGE, parse=parse_score)
        assert len(server.requests) == 3 and cached_files(tmp_path) == []
    with FakeVlm(["malformed", "garbage"]) as server:  # bad twice, then good: the good one is cached
        client = client_for(server, tmp_path)
        assert client.chat(MESSAGE, parse=parse_score) == pytest.approx(0.9)
        [entry] = cached_files(tmp_path)
        assert json.loads(entry.read_text())["reply"] == "0.9"


def test_vlm_refused_key_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFDICT_TEST_KEY", raising=False)
    with FakeVlm(default="401") as server:
        client = client_for(server, tmp_path)
        with pytest.raises(DiffdictError, match=r"refused the API key \(HTTP 401; \$DIFFDICT_TEST_KEY is not set\)"):
            client.chat(MESSAGE, parse=parse_score)
        assert len(server.requests) == 1  # no retry on a refused key


def test_vlm_sdk_is_optional(monkeypatch):
    import subprocess
    import sys

    # importing diffdict (and its interpret package) never imports the SDK
    code = "import sys, diffdict, diffdict.interpret, diffdict.cli; assert 'openai' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    monkeypatch.setitem(sys.modules, "openai", None)  # as if it were not installed
    with pytest.raises(DiffdictError, match=r'pip install "diffdict\[vlm\]"'):
        VlmClient(VlmConfig())


def test_vlm_explainer_and_judge_through_interpret(store, sae_dir, tmp_path):
    with FakeVlm(answer=fake_answer) as server:
        options = dict(base_url=server.url, model="fake-vlm", cache_dir=str(tmp_path / "cache"), backoff=0.01,
                       requests_per_minute=0, timeout=5)
        index = interpret(sae_dir, store, tmp_path / "out", explainer="vlm", scorers=["vlm"], features="0",
                          top_n=12, options=options)
        sent = len(server.requests)
        assert sent == 1 + 5 + 5  # one explanation, 5 activating + 5 other images judged
        record = json.loads((tmp_path / "out" / "features" / "f000000.json").read_text())
        assert record["explanation"]["text"] == "red objects"
        vlm = record["scores"]["vlm"]
        assert len(vlm["activating"]) == 5 and len(vlm["other"]) == 5
        assert vlm["score"] == pytest.approx(0.5 * (0.8 + 0.2))
        assert not set(vlm["activating_ids"]) & set(record["explanation"]["details"]["images_shown"])
        assert index["features"][0]["scores"]["vlm"] == pytest.approx(0.5)
        # the explainer saw images with heatmaps, as data URLs
        parts = server.requests[0]["messages"][0]["content"]
        assert sum(p["type"] == "image_url" for p in parts) == 5
        assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
        interpret(sae_dir, store, tmp_path / "out2", explainer="vlm", scorers=["vlm"], features="0", top_n=12,
                  options=options)
        assert len(server.requests) == sent  # the rerun cost nothing


# ------------------------------------------------------------------------------ clip and the command


def test_clip_scorer_with_shapes_clip(store, sae_dir, tmp_path):
    from diffdict.models.shapes_clip import ShapesClip

    torch.manual_seed(0)
    clip = ShapesClip().eval()
    index = interpret(sae_dir, store, tmp_path / "out", explainer="concept-oracle", scorers=["concept-oracle", "clip"],
                      features=[0, 2], top_n=4, clip=clip)
    record = json.loads((tmp_path / "out" / "features" / "f000000.json").read_text())
    assert record["explanation"]["text"] == "red"
    clip_score = record["scores"]["clip"]
    assert -1 <= clip_score["score"] <= 1 and "contrast" in clip_score and clip_score["text"] == "red"
    assert record["scores"]["concept-oracle"]["score"] > 0.98
    assert {r["feature"] for r in index["features"]} == {0, 2}


def test_interpret_command(store, sae_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["interpret", "--run", str(sae_dir), "--store", str(store.path), "--out", str(out),
                     "--features", "0-2", "--top-n", "4", "--seed", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "concept-oracle: mean score" in captured.out
    index = json.loads((out / "interpret.json").read_text())
    assert [r["feature"] for r in index["features"]] == [0, 1, 2]
    record = json.loads((out / "features" / "f000001.json").read_text())
    assert record["explanation"]["text"] == "blue"
    for key in ("top", "top_0", "hist"):
        assert (out / record["files"][key]).read_bytes().startswith(b"\x89PNG")
    assert record["stats"]["frequency"] > 0 and len(record["examples"]) == 4


# ------------------------------------------------------------------------------ bad input


def run_cli(argv, capsys):
    code = cli_main(argv)
    return code, capsys.readouterr().err.strip()


def test_bad_input_one_clear_line(store, tmp_path, capsys):
    # a dictionary of another width than the store's sites
    narrow = tmp_path / "narrow"
    make_sae(narrow, d=5, site=None)
    code, err = run_cli(["interpret", "--run", str(narrow), "--store", str(store.path), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and err.count("\n") == 0 and "d=5" in err and err.startswith("diffdict: error:")
    # a dictionary trained on a site the store lacks
    elsewhere = tmp_path / "elsewhere"
    make_sae(elsewhere, site="down.2.0")
    code, err = run_cli(["interpret", "--run", str(elsewhere), "--store", str(store.path), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and err.count("\n") == 0 and "trained on site 'down.2.0'" in err
    # a dictionary trained on mid.0 used on another site of another d
    onsite = tmp_path / "onsite"
    make_sae(onsite)
    code, err = run_cli(["interpret", "--run", str(onsite), "--store", str(store.path), "--site", OTHER_SITE,
                         "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and err.count("\n") == 0 and "not on --site 'up.1.0'" in err
    # a store without images
    bare = make_store(tmp_path / "bare", images=False, n=8, chunk=8)
    code, err = run_cli(["interpret", "--run", str(onsite), "--store", str(bare.path), "--out", str(tmp_path / "o4")], capsys)
    assert code == 2 and err.count("\n") == 0 and "has no images" in err
    # an endpoint that refuses the key
    with FakeVlm(default="401") as server:
        code, err = run_cli(["interpret", "--run", str(onsite), "--store", str(store.path), "--out", str(tmp_path / "o5"),
                             "--explainer", "vlm", "--scorer", "", "--features", "0", "--vlm-url", server.url,
                             "--vlm-key-env", "DIFFDICT_NO_SUCH_KEY"], capsys)
    assert code == 2 and err.count("\n") == 0 and "refused the API key (HTTP 401" in err
    # unknown explainer, feature out of range
    code, err = run_cli(["interpret", "--run", str(onsite), "--store", str(store.path), "--out", str(tmp_path / "o6"),
                         "--explainer", "oracle"], capsys)
    assert code == 2 and "unknown explainer 'oracle'" in err
    code, err = run_cli(["interpret", "--run", str(onsite), "--store", str(store.path), "--out", str(tmp_path / "o7"),
                         "--features", "3,99"], capsys)
    assert code == 2 and "bad feature 99: expected an integer in 0.." in err


# ------------------------------------------------------------------------------ provenance


def test_trained_dictionary_records_its_provenance_and_interpret_uses_it(store, tmp_path):
    from diffdict.dictionaries import load_dictionary, read_provenance
    from diffdict.feature_stats import dictionary_metadata, recorded_host, recorded_store
    from diffdict.interpret.run import dictionary_site, load_for_store
    from diffdict.train import TrainSettings, train

    settings = TrainSettings(acts=str(store.path), site=SITE, arch=["topk"], k=[2], expansion=[1.0], batch_size=256,
                             tokens=1024, init_tokens=512, seed=3)
    folder = train(settings, tmp_path / "run", progress=False)["topk-k2-x1"]
    expected = {"version": 1, "site": SITE, "what": "update", "model": "toy", "model_weights": None,
                "host": store.settings["host"], "generation": store.settings["generation"],
                "store": str(store.path.resolve()), "store_digest": store.digest, "acts": None, "tokens": 1024,
                "seed": 3}
    assert json.loads((folder / "config.json").read_text())["provenance"] == expected
    assert load_dictionary(folder).provenance == expected
    # the record alone is read: nothing of the run folder is needed
    (tmp_path / "run" / "settings.json").unlink()
    assert read_provenance(folder) == expected and dictionary_site(folder) == SITE
    assert dictionary_metadata(folder) == {"site": SITE, "what": "update", "model": "toy"}
    assert recorded_store(folder) == store.path.resolve()
    assert recorded_host(folder) == {"model": "toy", "host": store.settings["host"],
                                     "generation": store.settings["generation"]}
    assert load_for_store(folder, store)[2] == SITE
    with pytest.raises(DiffdictError, match="trained on site 'mid.0', not on --site 'up.1.0'"):
        load_for_store(folder, store, site=OTHER_SITE)


def test_folders_without_provenance_use_the_one_fallback(store, tmp_path):
    from diffdict.dictionaries import read_provenance
    from diffdict.dictionaries.export import export_dictionary
    from diffdict.interpret.run import dictionary_site, load_for_store

    # saved before records existed: the run's settings.json and the store it names
    old = tmp_path / "run" / "topk"
    sae = make_sae(old, site=None)
    (tmp_path / "run" / "settings.json").write_text(json.dumps({"acts": str(store.path), "site": SITE}))
    assert "provenance" not in json.loads((old / "config.json").read_text())
    known = read_provenance(old)
    assert {k: known[k] for k in ("site", "what", "model", "store")} == {
        "site": SITE, "what": "update", "model": "toy", "store": str(store.path)}
    assert known["generation"] == store.settings["generation"] and dictionary_site(old) == SITE
    assert load_for_store(old, store)[2] == SITE
    # a folder SAE Lens wrote: its cfg.json's hook_name and model_name
    lens = export_dictionary(sae, tmp_path / "lens", "saelens", metadata={"hook_name": SITE, "model_name": "toy"})
    assert read_provenance(lens) == {"site": SITE, "model": "toy"} and dictionary_site(lens) == SITE
    # nothing recorded anywhere
    bare = tmp_path / "bare"
    make_sae(bare, site=None)
    assert read_provenance(bare) == {} and dictionary_site(bare) is None
    # a config naming the capture mode "capture" rather than "what" is read the same
    named = tmp_path / "named"
    make_sae(named, site=None)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "site": SITE, "capture": "output"}))
    assert read_provenance(named) == {"site": SITE, "what": "output"}
