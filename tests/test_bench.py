"""The ground-truth benchmark: each score on constructed cases with known answers, the
baselines, and the command end to end on a tiny store of the toy model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _interpret_fixtures import SITE, make_sae, make_store


def brute_best_f1(values: torch.Tensor, labels: torch.Tensor) -> float:
    best = 0.0
    for t in torch.unique(values[values > 0]):
        pred = values >= t
        tp = float((pred & labels).sum())
        best = max(best, 2 * tp / (float(pred.sum()) + float(labels.sum())))
    return best


def test_best_threshold_f1_matches_brute_force():
    from diffdict.bench.detection import best_threshold_f1, rank_entries

    g = torch.Generator().manual_seed(0)
    n_items, n_features = 300, 5
    values = torch.rand(n_items, n_features, generator=g)
    values[values < 0.6] = 0.0
    values[:, 3] = torch.where(values[:, 3] > 0, torch.tensor(0.5), values[:, 3])  # ties
    labels = torch.rand(n_items, 3, generator=g) < 0.3
    item, feature = values.nonzero(as_tuple=True)
    best, threshold = best_threshold_f1(rank_entries(item, feature, values[item, feature], n_features), labels,
                                        n_features)
    for f in range(n_features):
        for c in range(3):
            assert best[f, c].item() == pytest.approx(brute_best_f1(values[:, f], labels[:, c]), abs=1e-6)  # float32
            pred = values[:, f] >= threshold[f, c]
            f1 = 2 * float((pred & labels[:, c]).sum()) / (float(pred.sum()) + float(labels[:, c].sum()))
            assert f1 == pytest.approx(best[f, c].item(), abs=1e-6)


def test_detect_picks_the_planted_feature_and_random_ones_score_chance():
    from diffdict.bench.detection import detect

    g = torch.Generator().manual_seed(1)
    n = 4000
    labels = (torch.rand(n, 2, generator=g) < 0.2)
    values = torch.rand(n, 6, generator=g) * (torch.rand(n, 6, generator=g) < 0.3)
    values[:, 0] = labels[:, 0].float() * 2.0  # exactly concept 0
    selection = torch.rand(n, generator=g) < 0.5
    item, feature = values.nonzero(as_tuple=True)
    result = detect(item, feature, values[item, feature], labels, selection, 6)
    assert result.feature[0] == 0
    assert result.test_f1[0] == pytest.approx(1.0) and result.test_auroc[0] == pytest.approx(1.0)
    # concept 1 has no planted feature: the best random one is near chance on the test half
    assert abs(result.test_auroc[1] - 0.5) < 0.05
    assert result.test_f1[1] < 0.4


@pytest.mark.parametrize("low", [0.0, 1e-3])
def test_entry_order_is_by_feature_then_value_descending_keeping_ties_in_place(low):
    """The one-key radix sort (values > 0) and the two stable sorts (low = 0 gives a zero
    value, which takes the two-sort path) give the order of a reference sort."""
    from diffdict.bench.detection import entry_order

    g = torch.Generator().manual_seed(5)
    n, features = 20_000, 37
    feature = torch.randint(0, features, (n,), generator=g)
    value = (torch.rand(n, generator=g) * 3).to(torch.bfloat16).float() + low  # many ties
    value[:3] = torch.tensor([0.0, float("inf"), 1e-38]) + low
    order = entry_order(feature, value, features).tolist()
    expected = sorted(range(n), key=lambda i: (int(feature[i]), -float(value[i]), i))
    assert order == expected


def test_purity_rewards_a_planted_feature_not_a_dense_one():
    from diffdict.bench.detection import rank_entries
    from diffdict.bench.purity import precisions, purity

    g = torch.Generator().manual_seed(2)
    n = 2000
    labels = torch.rand(n, 3, generator=g) < torch.tensor([0.1, 0.3, 0.5])
    values = torch.zeros(n, 3)
    values[:, 0] = labels[:, 0].float() * (1 + torch.rand(n, generator=g))  # planted on concept 0
    values[:, 1] = 1.0  # dense, constant
    values[:, 2] = torch.rand(n, generator=g)  # dense, random
    selection = torch.arange(n) % 2 == 0

    def ranked(mask):
        v = values[mask]
        item, feature = v.nonzero(as_tuple=True)
        return rank_entries(item, feature, v[item, feature], 3)

    precision, top, concept, live = purity(precisions(ranked(selection), ranked(~selection), labels[selection],
                                                      labels[~selection], 3, top=50, min_count=10))
    assert bool(live.all())
    assert precision[0].item() == pytest.approx(1.0) and top[0].item() == pytest.approx(1.0) and concept[0].item() == 0
    # the constant feature's bins and top-50 are ties across all items: both are the base rate
    base = labels[~selection][:, concept[1]].double().mean().item()
    assert precision[1].item() == pytest.approx(base, abs=1e-9) and top[1].item() == pytest.approx(base, abs=1e-9)
    assert precision[1].item() < 0.6 and precision[2].item() < 0.7


def test_purity_bins_weigh_each_activation_decile_equally():
    """20 firing items, concept on the strongest 10 only: with 10 bins of 2, purity is the
    mean of five bins at 1 and five at 0; the top-4 precision is 1."""
    from diffdict.bench.detection import rank_entries
    from diffdict.bench.purity import concept_precision, rank_weights

    value = torch.arange(20, 0, -1).float()
    labels = (torch.arange(20) < 10).unsqueeze(1)
    ranked = rank_entries(torch.arange(20), torch.zeros(20, dtype=torch.long), value, 1)
    assert torch.allclose(rank_weights(ranked, bins=10), torch.full((20,), 0.5, dtype=torch.float64))
    assert concept_precision(ranked, labels, 1, bins=10)[0].item() == pytest.approx(0.5)
    assert concept_precision(ranked, labels, 1, top=4)[0].item() == pytest.approx(1.0)
    # three items tied at the top-2 cut-off share its one remaining place: 1/3 each
    tied = rank_entries(torch.arange(4), torch.zeros(4, dtype=torch.long), torch.tensor([3.0, 2.0, 2.0, 2.0]), 1)
    assert torch.allclose(rank_weights(tied, top=2), torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3], dtype=torch.float64))


def test_purity_separates_learnt_features_from_random_directions_in_clustered_data():
    """Tokens in three background clusters (one common concept each) with a rare object
    concept that shifts them slightly along one axis. Every random direction's top
    activations lie in the cluster at its extreme, so top precision cannot tell random
    directions from learnt cluster and concept features; purity over the activation range
    can (a random direction fires on the next cluster further down), and so can concept
    purity on the rare concept, which no random direction reaches."""
    from diffdict.bench.detection import rank_entries
    from diffdict.bench.purity import concept_purity, precisions, purity

    g = torch.Generator().manual_seed(3)
    n, d = 6000, 32
    cluster = torch.randint(0, 3, (n,), generator=g)
    rare = torch.rand(n, generator=g) < 0.05
    labels = torch.cat([torch.nn.functional.one_hot(cluster, 3).bool(), rare.unsqueeze(1)], 1)  # 3 common + 1 rare
    x = (torch.randn(3, d, generator=g) * 6)[cluster] + torch.randn(n, d, generator=g) * 0.5
    x[rare, 0] += 1.0
    selection = torch.arange(n) % 2 == 0

    def scores(values):
        def ranked(mask):
            v = values[mask]
            item, feature = v.nonzero(as_tuple=True)
            return rank_entries(item, feature, v[item, feature], values.shape[1])
        p = precisions(ranked(selection), ranked(~selection), labels[selection], labels[~selection],
                       values.shape[1], top=50, min_count=10)
        feature_purity, top_precision, _, _ = purity(p)
        return feature_purity, top_precision, concept_purity(p)[0]

    random_codes = torch.relu(x @ torch.randn(d, 16, generator=g))
    noise = 1 + torch.rand(n, 4, generator=g)
    learnt_codes = labels.float() * noise  # one feature per concept
    random_purity, random_top, random_concept = scores(random_codes)
    learnt_purity, learnt_top, learnt_concept = scores(learnt_codes)
    # top precision: random directions are pure about a cluster, as pure as learnt features
    assert torch.nanmean(random_top).item() > 0.9 and torch.nanmean(learnt_top).item() > 0.9
    # over the activation range a learnt feature stays pure; random directions that reach
    # two clusters are not
    assert learnt_purity.min().item() == pytest.approx(1.0)
    assert torch.nanmean(learnt_purity).item() - torch.nanmean(random_purity).item() > 0.1
    pure_at_top_only = (random_top > 0.9) & (random_purity < 0.7)  # two clusters: the extreme one, then the next
    assert int(pure_at_top_only.sum()) >= 3
    # concept purity: both reach the common concepts; only the dictionary the rare one
    assert random_concept[:3].min().item() > 0.9 and learnt_concept[:3].min().item() > 0.9
    assert random_concept[3].item() < 0.2  # about the base rate, 0.05
    assert learnt_concept[3].item() == pytest.approx(1.0)


def test_best_strength_is_chosen_on_the_other_half_of_the_prompts():
    """Two strengths that each succeed on alternate prompts only: choosing the best on the
    prompts scored reports 0.5; cross-fitting reports what a strength chosen in advance
    gets, here 0. With one strength nothing is chosen."""
    from diffdict.bench.steering import cross_fitted

    by_strength = {"4.0": {"success": [1.0, 0.0, 1.0, 0.0], "retain": [0.9, 0.8, 0.9, 0.8]},
                   "8.0": {"success": [0.0, 1.0, 0.0, 1.0], "retain": [0.5, 0.6, 0.5, 0.6]}}
    best, success, retain = cross_fitted(by_strength)
    assert best == "4.0"  # tie over all prompts: the weaker strength
    assert success == [0.0, 0.0, 0.0, 0.0]
    assert retain == [0.5, 0.8, 0.5, 0.8]
    # a strength that is better on both halves is chosen for both
    by_strength["4.0"]["success"] = [0.0, 0.0, 1.0, 0.0]
    by_strength["8.0"]["success"] = [1.0, 1.0, 1.0, 1.0]
    assert cross_fitted(by_strength)[:2] == ("8.0", [1.0, 1.0, 1.0, 1.0])
    single = {"6.0": {"success": [1.0, 0.0], "retain": [1.0, 1.0]}}
    assert cross_fitted(single) == ("6.0", [1.0, 0.0], [1.0, 1.0])


def test_the_feature_that_both_reads_and_writes_a_concept():
    """Feature 0 points along the concept's direction but detects nothing; feature 1 is
    half aligned and detects it well; feature 2 detects it perfectly but is orthogonal.
    The writer is 0, the reader 2, the feature that does both 1 (cosine x F1)."""
    from diffdict.bench.data import BENCH_CONCEPTS
    from diffdict.bench.runner import concept_writers

    class Directions:
        d_in, n_features = 2, 3
        decoder_directions = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])

    concept = BENCH_CONCEPTS[0]
    supervised = {concept: torch.tensor([2.0, 0.0])}
    live = torch.ones(3, dtype=torch.bool)
    f1 = torch.zeros(3, len(BENCH_CONCEPTS))
    f1[:, 0] = torch.tensor([0.1, 0.9, 1.0])
    assert concept_writers(Directions(), supervised, live, 2) == {concept: 0}
    assert concept_writers(Directions(), supervised, live, 2, f1) == {concept: 1}
    live[1] = False  # a dead feature is never chosen
    assert concept_writers(Directions(), supervised, live, 2, f1) == {concept: 0}


def test_a_feature_writes_the_value_of_a_family_it_is_closest_to():
    """Feature 0 is blue's (cosine 0.97 with blue, 0.65 with purple), feature 1 purple's
    (0.89 with purple, 0 with blue): purple's writer is 1 although 0 detects purple
    better and cosine x F1 would pick it. Alone, purple has no rival and takes 0."""
    from diffdict.bench.data import BENCH_CONCEPTS
    from diffdict.bench.runner import concept_writers

    class Directions:
        d_in, n_features = 2, 2
        decoder_directions = torch.tensor([[1.0, 0.25], [0.0, 1.0]])

    blue, purple = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0])
    live = torch.ones(2, dtype=torch.bool)
    f1 = torch.zeros(2, len(BENCH_CONCEPTS))
    f1[:, BENCH_CONCEPTS.index("color:purple")] = torch.tensor([0.9, 0.5])
    f1[:, BENCH_CONCEPTS.index("color:blue")] = torch.tensor([0.9, 0.1])
    both = {"color:blue": blue, "color:purple": purple}
    assert concept_writers(Directions(), both, live, 2, f1) == {"color:blue": 0, "color:purple": 1}
    assert concept_writers(Directions(), {"color:purple": purple}, live, 2, f1) == {"color:purple": 0}


def test_a_concept_steers_only_when_the_steered_feature_also_detects_it():
    from diffdict.bench.runner import _causal_summary

    steering = {"color:red": {"feature_success": [1.0] * 20, "random_success": [0.0] * 20, "feature_retain": [1.0] * 20}}
    erasure = {"color:red": {"feature": {"erased": [1.0], "retain": [1.0]}}}
    concepts = {"color:red": {"token_f1": 0.9, "writer_token_f1": 0.5, "writer_image_f1": 0.6}}
    # the reader detects red at 0.9, the writer at 0.6: whether red steers depends on which was steered
    assert _causal_summary(steering, erasure, concepts, 0, "reader")["steered_concepts"] == ["color:red"]
    for feature in ("writer", "both"):
        assert _causal_summary(steering, erasure, concepts, 0, feature)["steered_concepts"] == []
    assert steering["color:red"]["writer_f1"] == 0.6


def test_absorption_counts_tokens_a_specific_feature_takes_over():
    from diffdict.bench.absorption import absorption
    from diffdict.bench.detection import rank_entries

    n = 1000
    labels = torch.zeros(n, 1, dtype=torch.bool)
    labels[:400] = True
    values = torch.zeros(n, 3)
    values[:200, 0] = 1.0  # main feature fires on half the concept's tokens
    values[200:400, 1] = 1.0  # a specific feature takes the other half
    values[400:, 2] = 1.0  # an unrelated feature
    item, feature = values.nonzero(as_tuple=True)
    ranked = rank_entries(item, feature, values[item, feature], 3)
    rate = absorption(ranked, labels, item, feature, values[item, feature], labels, np.array([0]),
                      np.array([1.0]), 3)
    assert rate[0] == pytest.approx(0.5)


def test_interpretability_scores_of_a_feature_that_is_a_concept_mask():
    """Codes built from the ground truth itself: feature 0 is exactly color:red's token
    mask, feature 1 fires on every token (dense), features 2.. are random and sparse."""
    from diffdict.bench.data import BENCH_CONCEPTS, Codes, GroundTruth
    from diffdict.bench.interpretability import interpretability_scores
    from diffdict.interpret.groundtruth import CONCEPTS

    g = torch.Generator().manual_seed(4)
    P, T, n = 200, 16, 10
    grid = torch.rand(P, len(CONCEPTS), T, generator=g) < 0.15
    image = grid.any(-1)
    selection = torch.arange(P) % 2 == 0
    prompt = torch.arange(P).repeat_interleave(T)
    position = torch.arange(T).repeat(P)
    red = grid[prompt, CONCEPTS.index("color:red"), position].float()
    values = torch.rand(P * T, n, generator=g) * (torch.rand(P * T, n, generator=g) < 0.1)
    values[:, 0] = red * (1 + torch.rand(P * T, generator=g))
    values[:, 1] = 1.0
    token, feature = values.nonzero(as_tuple=True)
    image_max = values.reshape(P, T, n).amax(1)
    codes = Codes(token, feature, values[token, feature], prompt, position, image_max, n)
    scores = interpretability_scores(codes, GroundTruth(grid, image, selection, 4, 4))
    red_entry = scores["concepts"]["color:red"]
    assert red_entry["token_feature"] == 0 and red_entry["token_f1"] == 1.0 and red_entry["token_auroc"] == 1.0
    assert red_entry["image_f1"] == 1.0
    assert scores["features"]["token_purity"][0] == 1.0 and scores["features"]["token_concept"][0] == "color:red"
    assert scores["features"]["token_purity"][1] < 0.3  # the dense feature: the base rate
    assert red_entry["purest_feature"] == 0 and red_entry["concept_purity"] == 1.0
    assert scores["summary"]["pure_coverage"] == pytest.approx(1 / len(BENCH_CONCEPTS))
    others = [scores["concepts"][c]["token_auroc"] for c in BENCH_CONCEPTS if c != "color:red"]
    assert abs(np.mean(others) - 0.5) < 0.05  # random features sit at chance on the test half
    assert scores["summary"]["coverage"] == pytest.approx(1 / len(BENCH_CONCEPTS))


def test_interpretability_scores_on_planted_features(tmp_path):
    """The fixture store's features 0 and 1 are the renderer's red and blue coverage of each
    token: they detect their colours almost perfectly; the random-init twin does not."""
    from diffdict.bench.baselines import random_init_twin, raw_basis, site_sample
    from diffdict.bench.data import dictionary_codes, ground_truth
    from diffdict.bench.interpretability import interpretability_scores

    store = make_store(tmp_path / "store")
    sae = make_sae()
    truth = ground_truth(store, SITE, seed=0)
    scores = interpretability_scores(dictionary_codes(sae, store, SITE), truth)
    for concept, feature in (("color:red", 0), ("color:blue", 1)):
        entry = scores["concepts"][concept]
        assert entry["token_feature"] == feature
        # the labels are read from the rendered image (anti-aliased edges): near, not exactly, 1
        assert entry["token_f1"] > 0.85 and entry["token_auroc"] > 0.97
        assert entry["image_f1"] > 0.9
    assert scores["features"]["token_concept"][0] == "color:red"
    sample = site_sample(store, SITE)
    twin = random_init_twin(sae, sample)
    assert twin.n_features == sae.n_features and not torch.equal(twin.W_dec, sae.W_dec)
    assert raw_basis(sample).n_features == 2 * sae.d_in
    # same seed, same numbers; another seed, another split
    again = interpretability_scores(dictionary_codes(sae, store, SITE), ground_truth(store, SITE, seed=0))
    assert again["summary"] == scores["summary"]
    assert not torch.equal(ground_truth(store, SITE, seed=1).selection, truth.selection)


def test_stability_of_identical_and_permuted_dictionaries():
    from diffdict.bench.runner import stability
    from diffdict.dictionaries import SparseAutoencoder

    a = SparseAutoencoder(8, 16, mechanism="topk", mechanism_options={"k": 2}, seed=0)
    b = SparseAutoencoder(8, 16, mechanism="topk", mechanism_options={"k": 2}, seed=0)
    with torch.no_grad():
        b.W_dec.copy_(a.W_dec[torch.randperm(16, generator=torch.Generator().manual_seed(0))])
    c = SparseAutoencoder(8, 16, mechanism="topk", mechanism_options={"k": 2}, seed=5)
    assert stability(a, [b])["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert stability(a, [c])["mean_cosine"] < 0.8


def test_wilson_interval():
    from diffdict.bench.runner import proportion_interval

    p = proportion_interval([1] * 30 + [0] * 2)
    assert p["mean"] == pytest.approx(30 / 32)
    assert 0.78 < p["low"] < 0.80 and 0.98 < p["high"] < 0.99  # Wilson 95% for 30/32


@pytest.fixture(scope="session")
def toy_bench_data(tmp_path_factory):
    """A 16-prompt store of the toy model at up.1.1 (one captured step) and a TopK SAE."""
    from diffdict.cli import main

    root = tmp_path_factory.mktemp("bench")
    assert main(["collect", "--sites", "up.1.1", "--prompts", "16", "--split", "test", "--steps", "9",
                 "--denoise-steps", "10", "--seed", "0", "--no-progress", "--out", str(root / "store")]) == 0
    from diffdict.bench.baselines import site_sample
    from diffdict.dictionaries import SparseAutoencoder
    from diffdict.store import open_store

    sae = SparseAutoencoder(64, 128, mechanism="topk", mechanism_options={"k": 8}, normalization="standardise", seed=0)
    sae.initialize(site_sample(open_store(root / "store"), "up.1.1"))
    sae.save(root / "sae")
    return root


def test_bench_command_end_to_end(toy_bench_data, tmp_path, capsys):
    from diffdict.cli import main

    args = ["bench", "--run", str(toy_bench_data / "sae"), "--site", "up.1.1", "--store", str(toy_bench_data / "store"),
            "--concepts", "color:red", "--steer-prompts", "2", "--erase-prompts", "2", "--fidelity-prompts", "2",
            "--strengths", "4", "--baselines", "random-init", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "bench.json").read_text())
    summary = result["dictionary"]["summary"]
    assert set(result["dictionary"]["concepts"]) >= {"color:red", "shape:circle", "texture:dots"}
    assert 0 <= summary["token_f1"]["mean"] <= 1 and summary["steer_feature"]["n"] == 2
    steer = result["dictionary"]["steering"]["color:red"]
    assert len(steer["feature_success"]) == 2 and set(steer["feature_success"]) <= {0.0, 1.0}
    # an edit's size is the strength times the norm of the concept's supervised direction,
    # whatever the dictionary: the random-init twin is edited at the same norm
    twin_steer = result["baselines"]["random-init"]["steering"]["color:red"]
    assert steer["edit_norm"] > 0 and twin_steer["edit_norm"] == steer["edit_norm"]
    assert 0 <= result["dictionary"]["fidelity"]["lpips"] and "token_f1" in result["differences"]["random-init"]
    table = (tmp_path / "a" / "table.md").read_text()
    assert table.count("| color:red |") == 1
    header = next(line for line in table.splitlines() if line.startswith("| concept |"))
    red = next(line for line in table.splitlines() if line.startswith("| color:red |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in red.split("|")]))
    assert cells["steered"] == str(steer["feature"]) and cells["steered F1"] != "—"
    assert (tmp_path / "a" / "detection.png").stat().st_size > 0 and (tmp_path / "a" / "steering.png").exists()
    # the same seed gives the same numbers
    assert main([*args, "--no-causal", "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "bench.json").read_text())
    detection = ("token_feature", "token_f1", "token_auroc", "image_feature", "image_f1", "absorption")
    for concept, entry in again["dictionary"]["concepts"].items():
        assert {k: entry[k] for k in detection} == {k: result["dictionary"]["concepts"][concept][k] for k in detection}
    # the writer steered is the live feature closest to the concept's direction; without
    # generation the writer, its F1 and its cosine are still reported, the same
    assert result["dictionary"]["concepts"]["color:red"]["writer_feature"] == steer["feature"]
    red, red_again = result["dictionary"]["concepts"]["color:red"], again["dictionary"]["concepts"]["color:red"]
    assert -1 <= red["writer_cosine"] <= 1 and red_again["writer_cosine"] == red["writer_cosine"]
    assert red_again["writer_feature"] == red["writer_feature"] and "shape:circle" not in [
        c for c, e in again["dictionary"]["concepts"].items() if "writer_cosine" in e]


@pytest.mark.parametrize("extra, message", [
    (["--site", "nosuch"], "unknown site 'nosuch'"),
    (["--site", "up.1.1", "--concepts", "color:pink"], "unknown concept 'color:pink'"),
    (["--site", "up.1.1", "--strengths", "x"], "--strengths must be comma-separated numbers"),
    (["--site", "up.1.1", "--steer-feature", "best"], "invalid choice: 'best'"),
])
def test_bench_bad_input_gets_one_line(toy_bench_data, tmp_path, capsys, extra, message):
    from diffdict.cli import main

    try:
        code = main(["bench", "--run", str(toy_bench_data / "sae"), "--store", str(toy_bench_data / "store"), *extra,
                     "--out", str(tmp_path / "out")])
    except SystemExit as exit_:  # argparse's own checks exit with status 2
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out" / "bench.json").exists()


def test_bench_generates_with_the_toy_weights_the_store_recorded(toy_bench_data, tmp_path, capsys):
    """Causal scores on a given store regenerate with the model that made it: other toy
    weights are refused in one line, not silently used."""
    import torch

    from diffdict.cli import main
    from diffdict.models import ToyDiffusion

    other = ToyDiffusion.from_pretrained(None)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    other.save_pretrained(tmp_path / "other-toy", dtype=torch.float32)
    code = main(["bench", "--run", str(toy_bench_data / "sae"), "--store", str(toy_bench_data / "store"),
                 "--site", "up.1.1", "--model-path", str(tmp_path / "other-toy"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "was collected with toy weights" in err[0]
    assert not (tmp_path / "out" / "bench.json").exists()


def test_bench_refuses_a_missing_run(tmp_path, capsys):
    from diffdict.cli import main

    assert main(["bench", "--run", str(tmp_path / "nope"), "--site", "up.1.1", "--out", str(tmp_path / "o")]) != 0
    assert "dictionary folder not found" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_bench_reads_sae_lens_and_sparsify_folders(toy_bench_data, tmp_path, fmt):
    """The same SAE exported to SAE Lens or sparsify scores the same as diffdict's folder."""
    from diffdict.cli import main
    from diffdict.dictionaries import load_dictionary
    from diffdict.dictionaries.export import export_dictionary

    export_dictionary(load_dictionary(toy_bench_data / "sae"), tmp_path / fmt, fmt)
    common = ["--site", "up.1.1", "--store", str(toy_bench_data / "store"), "--no-causal", "--baselines", "raw-basis",
              "--seed", "1"]
    assert main(["bench", "--run", str(tmp_path / fmt), *common, "--out", str(tmp_path / "theirs")]) == 0
    assert main(["bench", "--run", str(toy_bench_data / "sae"), *common, "--out", str(tmp_path / "ours")]) == 0
    theirs = json.loads((tmp_path / "theirs" / "bench.json").read_text())["dictionary"]["concepts"]
    ours = json.loads((tmp_path / "ours" / "bench.json").read_text())["dictionary"]["concepts"]
    for concept in ours:
        assert theirs[concept]["token_feature"] == ours[concept]["token_feature"]
        assert theirs[concept]["token_f1"] == pytest.approx(ours[concept]["token_f1"], abs=1e-6)
