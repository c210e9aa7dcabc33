"""Interventions on the toy host (random-init model, 2 denoising steps, tiny dictionaries)."""

import json

import numpy as np
import pytest
import torch

from diffdict.capture import ReadHook
from diffdict.cli import main
from diffdict.dictionaries import ITDA, NeuronDictionary, SparseAutoencoder, load_dictionary
from diffdict.errors import DiffdictError
from diffdict.feature_stats import (
    FeatureStatsAccumulator,
    compute_feature_stats,
    load_feature_stats,
    save_feature_stats,
)
from diffdict.interventions import (
    Ablate,
    Add,
    Icon,
    LatentEdit,
    PixelBox,
    RandomDirection,
    Splice,
    TokenBox,
    feature_icon,
    generate,
    intervene,
    parse_steps,
    resolve_mask,
)

STEPS = 2
PROMPTS = ["a red circle", "a large blue square at the top left"]


@pytest.fixture(scope="module")
def host():
    from diffdict.hosts import load_host
    from diffdict.models.toy import ToyConfig, ToyDiffusion

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return load_host("toy", model=ToyDiffusion(ToyConfig()))


@pytest.fixture(scope="module")
def original(host):
    return generate(host, PROMPTS, [], seed=0, num_steps=STEPS)


@pytest.fixture(scope="module")
def backbone():
    from diffdict.metrics.backbones import ShapesClipBackbone
    from diffdict.models.shapes_clip import ShapesClip

    torch.manual_seed(1)
    return ShapesClipBackbone(ShapesClip())


def sae(d=128, n=32, seed=0):
    return SparseAutoencoder(d, n, mechanism="topk", mechanism_options={"k": 4}, seed=seed)


def identity_sae(d):
    """A ReLU SAE that reconstructs exactly: features +e_j and -e_j."""
    eye = torch.eye(d)
    model = SparseAutoencoder(d, 2 * d, mechanism="relu", normalize_decoder=False)
    model.load_state_tensors({"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d),
                              "W_dec": torch.cat([eye, -eye], 0), "b_dec": torch.zeros(d)})
    return model


def gen(host, interventions, prompts=PROMPTS):
    return generate(host, prompts, interventions, seed=0, num_steps=STEPS)


# -- exactness ------------------------------------------------------------------------------------
def test_strength_zero_reproduces_original(host, original):
    edits = [Add("mid.0", sae(), 3, 0.0, activation=2.0),
             Add("up.1.0", sae(64), 5, 0.0, activation=1.5, mask="4,4,20,20", steps="0")]
    assert np.array_equal(gen(host, edits), original)


def test_identity_latent_edit_reproduces_original(host, original):
    itda = ITDA(128, l0=3)
    itda.add_atoms(torch.randn(16, 128, generator=torch.Generator().manual_seed(0)))
    edits = [LatentEdit("mid.0", sae(), 3, 1.0, "scale"),  # keep_error is the default
             LatentEdit("mid.0", itda, 2, 0.0, "add", activation=1.0)]
    assert np.array_equal(gen(host, edits), original)


def test_edits_change_the_image(host, original):
    changed = gen(host, [Add("mid.0", sae(), 3, 50.0, activation=2.0)])
    assert not np.array_equal(changed, original)
    dropped = gen(host, [LatentEdit("mid.0", sae(), 3, 1.0, "scale", keep_error=False)])
    assert not np.array_equal(dropped, original)


def test_splice_with_identity_dictionary_reproduces_original(host, original):
    assert np.array_equal(gen(host, [Splice("mid.0", identity_sae(128)), Splice("up.1.1", identity_sae(64))]), original)
    assert not np.array_equal(gen(host, [Splice("mid.0", sae())]), original)


def test_ablate_scale_one_is_identity_and_zero_is_not(host, original):
    assert np.array_equal(gen(host, [Ablate("mid.0", 1.0)]), original)
    assert not np.array_equal(gen(host, [Ablate("mid.0")]), original)


def read_site(host, site, interventions):
    seen = {}

    def keep(x, step):
        seen[step] = x.clone()

    hooks = [h for i in interventions for h in i.bind(host, STEPS)] + [ReadHook(site, keep, steps=[0])]
    for i in interventions:
        i.set_batch(range(len(PROMPTS)))
    with host.hooks(hooks):
        host.generate(PROMPTS, seed=0, steps=STEPS)
    return seen[0]


def test_add_with_mask_changes_nothing_outside_the_mask(host):
    model = sae()
    plain = read_site(host, "mid.0", [])
    # 32x32 image, 8x8 grid: 4 px per token; x 6..24 covers column 1 by half, columns 2..5 fully
    edit = Add("mid.0", model, 7, 3.0, activation=2.0, mask="6,8,24,24")
    edited = read_site(host, "mid.0", [edit])
    weights = resolve_mask("6,8,24,24", (8, 8), (32, 32)).view(8, 8)
    assert weights[2, 1] == pytest.approx(0.5) and weights[2, 2] == 1 and weights[0, 0] == 0
    outside = (weights == 0).reshape(-1)
    assert torch.equal(edited[:, outside], plain[:, outside])
    expected = weights.reshape(-1)[~outside, None] * 3.0 * 2.0 * model.decoder_directions[7]
    torch.testing.assert_close(edited[:, ~outside] - plain[:, ~outside], expected.expand_as(edited[:, ~outside]),
                               atol=1e-5, rtol=1e-4)
    # the random control touches exactly the same tokens with the same norms
    control = read_site(host, "mid.0", [RandomDirection(Add("mid.0", model, 7, 3.0, activation=2.0, mask="6,8,24,24"), 3)])
    assert torch.equal(control[:, outside], plain[:, outside])
    torch.testing.assert_close((control - plain).norm(dim=-1), (edited - plain).norm(dim=-1), atol=1e-4, rtol=1e-4)


def test_latent_set_and_neuron_dictionary(host):
    model = sae()
    plain = read_site(host, "mid.0", [])
    set_edit = LatentEdit("mid.0", model, 3, 2.0, "set", activation=1.5, mask=TokenBox(0, 0, 2, 2))
    edited = read_site(host, "mid.0", [set_edit])
    inside = resolve_mask(TokenBox(0, 0, 2, 2), (8, 8), (32, 32)) > 0
    assert torch.equal(edited[:, ~inside], plain[:, ~inside])
    current = model.encode(plain.reshape(-1, 128))[:, 3].view(len(PROMPTS), 64)
    expected = (3.0 - current[:, inside]).unsqueeze(-1) * model.decoder_directions[3]  # set c_3 = 2.0 * 1.5
    torch.testing.assert_close(edited[:, inside] - plain[:, inside], expected, atol=1e-5, rtol=1e-4)
    # neurons: the MLP site's value is the neuron activations; add moves neuron i only
    neurons = NeuronDictionary(torch.randn(128, 512, generator=torch.Generator().manual_seed(0)), k=8)
    plain_n = read_site(host, "mid.0.mlp", [])
    edited_n = read_site(host, "mid.0.mlp", [Add("mid.0.mlp", neurons, 11, 2.0, activation=0.5)])
    diff = edited_n - plain_n
    assert torch.allclose(diff[..., 11], torch.full_like(diff[..., 11], 1.0))
    assert torch.equal(diff[..., :11], torch.zeros_like(diff[..., :11]))


def test_icon_and_composition(host):
    model = sae()
    icons = feature_icon(host, "mid.0", model, 4, activation=2.0, count=2, num_steps=STEPS)
    assert icons.shape == (2, 32, 32, 3) and icons.dtype == np.uint8
    both = gen(host, [Icon("mid.0", model, 4, activation=2.0, mask=PixelBox(0, 0, 16, 16)),
                      Add("up.1.0", sae(64), 1, 5.0, activation=1.0, steps=[1])])
    assert both.shape == (2, 32, 32, 3)


def test_random_control_is_seeded(host):
    inner = Add("mid.0", sae(), 3, 20.0, activation=2.0)
    a = gen(host, [RandomDirection(inner, seed=5)])
    b = gen(host, [RandomDirection(inner, seed=5)])
    c = gen(host, [RandomDirection(inner, seed=6)])
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # a prompt's direction does not depend on how the prompts are batched
    single = generate(host, PROMPTS[1:], [RandomDirection(inner, seed=5)], seeds=[1], num_steps=STEPS)
    batched = generate(host, PROMPTS, [RandomDirection(inner, seed=5)], seed=0, num_steps=STEPS, batch_size=2)
    assert single.shape == (1, 32, 32, 3) and batched.shape == (2, 32, 32, 3)


def test_causal_strength_control_is_seeded(host, backbone):
    from diffdict.metrics import causal_strength

    edit = Add("mid.0", sae(), 3, 20.0, activation=2.0, mask="0,0,16,16")
    r1, _ = causal_strength(host, edit, "color:red", PROMPTS, seed=0, backbone=backbone, num_steps=STEPS)
    r2, _ = causal_strength(host, edit, "color:red", PROMPTS, seed=0, backbone=backbone, num_steps=STEPS)
    r3, _ = causal_strength(host, edit, "color:red", PROMPTS, seed=0, control_seed=9, backbone=backbone,
                            num_steps=STEPS)
    assert r1.to_json() == r2.to_json()
    assert not np.array_equal(r1.control, r3.control)
    assert set(r1.summary) >= {"effect", "control_effect", "strength", "win_rate"}


def test_run_intervention_report(host, backbone, tmp_path):
    from diffdict.interventions.experiments import run_intervention, save_intervention_report

    edit = LatentEdit("mid.0", sae(), 3, 5.0, "set", activation=2.0, mask="0,0,16,16", steps="0")
    report = run_intervention(host, edit, PROMPTS, num_steps=STEPS, target="color:red", backbone=backbone)
    path = save_intervention_report(report, tmp_path, scale=1)
    data = json.loads(path.read_text())
    assert len(data["per_image"]) == 2 and (tmp_path / "grid.png").exists() and (tmp_path / "control.png").exists()
    for key in ("pixel_mae", "perceptual", "locality_distance", "inside_share", "p_target_edited", "clip_explanation_edited"):
        assert key in data["aggregate"] and key in data["per_image"][0]
    assert data["causal_strength"]["target"] == "color:red"


def test_block_ablation_and_spliced_fidelity(host, backbone, tmp_path):
    from diffdict.metrics import spliced_fidelity
    from diffdict.interventions.experiments import block_ablation, save_block_ablation

    result = block_ablation(host, ["mid.0", "up.1.1"], PROMPTS, num_steps=STEPS, backbone=backbone)
    assert set(result["sites"]) == {"mid.0", "up.1.1"}
    assert set(result["sites"]["mid.0"]["families"]) >= {"color", "shape", "bg_color"}
    save_block_ablation(result, tmp_path, scale=1)
    assert (tmp_path / "table.md").read_text().count("| mid.0 |") == 1
    fidelity = spliced_fidelity(host, identity_sae(128), "mid.0", PROMPTS, num_steps=STEPS, backbone=backbone)
    assert fidelity["spliced_pixel_mae"] == 0 and fidelity["spliced_perceptual"] == 0
    assert fidelity["clip_score_drop"] == 0 and fidelity["fidelity_prompts"] == 2
    # built from a store, as `diffdict evaluate` uses it: generation settings come from the store
    from diffdict.collect import collect
    from diffdict.metrics import store_fidelity

    collect(host, PROMPTS, ["mid.0"], tmp_path / "store", num_steps=STEPS, progress=False)
    fn = store_fidelity(tmp_path / "store", "mid.0", prompts=2, host=host, backbone=None)
    assert fn(identity_sae(128))["spliced_pixel_mae"] == 0 and fn(sae())["spliced_pixel_mae"] > 0
    # a trained member knows its site, model and capture from its run's settings.json and store
    from diffdict.feature_stats import dictionary_metadata

    sae().save(tmp_path / "run" / "topk")
    (tmp_path / "run" / "settings.json").write_text(json.dumps({"acts": str(tmp_path / "store"), "site": None}))
    assert dictionary_metadata(tmp_path / "run" / "topk") == {"site": "mid.0", "what": "update", "model": "toy"}


def test_evaluate_command_reports_spliced_fidelity(host, tmp_path, capsys):
    from diffdict.collect import collect
    from diffdict.store import import_array

    collect(host, PROMPTS, ["mid.0"], tmp_path / "store", num_steps=STEPS, progress=False)
    run = tmp_path / "run"
    identity_sae(128).save(run / "identity")
    sae().save(run / "random")
    (run / "settings.json").write_text(json.dumps({"acts": str(tmp_path / "store"), "site": "mid.0"}))
    # the store records the weights' fingerprint: other toy weights are refused, not silently used
    assert main(["evaluate", "--run", str(run), "--acts", str(tmp_path / "store"), "--fidelity-prompts", "2",
                 "--out", str(tmp_path / "eval.json")]) == 2
    assert "was collected with toy weights" in capsys.readouterr().err
    host.model.save_pretrained(tmp_path / "toy", dtype=torch.float32)
    assert main(["evaluate", "--run", str(run), "--acts", str(tmp_path / "store"), "--fidelity-prompts", "2",
                 "--model-path", str(tmp_path / "toy"), "--out", str(tmp_path / "eval.json")]) == 0
    members = json.loads((tmp_path / "eval.json").read_text())["members"]
    exact, lossy = members["identity"], members["random"]
    assert exact["fidelity_prompts"] == lossy["fidelity_prompts"] == 2
    assert exact["fvu"] < 1e-6 and exact["spliced_pixel_mae"] == 0 and exact["clip_score_drop"] == 0
    assert lossy["spliced_pixel_mae"] > 0 and lossy["spliced_perceptual"] > 0
    assert "spliced mae 0.0000" in capsys.readouterr().out
    # an imported array records no host model: fidelity is skipped by default, refused when asked for
    np.save(tmp_path / "plain.npy", np.random.default_rng(0).standard_normal((64, 128)).astype("float32"))
    import_array(tmp_path / "plain.npy", tmp_path / "plain", site="mid.0", dtype="float32", progress=False)
    assert main(["evaluate", "--run", str(run), "--acts", str(tmp_path / "plain"), "--out", str(tmp_path / "p.json")]) == 0
    assert "spliced_pixel_mae" not in json.loads((tmp_path / "p.json").read_text())["members"]["identity"]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--acts", str(tmp_path / "plain"), "--fidelity-prompts", "2",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "spliced fidelity needs a store made by a host model" in capsys.readouterr().err

# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make, message", [
    (lambda: Add("mid.0", sae(), 32, 1.0, activation=1.0), "bad feature 32: expected an integer in 0..31"),
    (lambda: Add("mid.0", sae(), 3, 1.0, activation=1.0, mask="0,0,33,8"), "outside the 32x32 image"),
    (lambda: Add("mid.0", sae(), 3, 1.0, activation=1.0, mask=TokenBox(0, 0, 9, 2)), "outside the site's 8x8 token grid"),
    (lambda: Add("mid.0", sae(), 3, 1.0, activation=1.0, mask=np.zeros((5, 5))), "matches neither"),
    (lambda: Add("mid.0", sae(), 3, 1.0, activation=1.0, steps="0-3"), "step 2 is outside the schedule"),
    (lambda: LatentEdit("up.1.0", sae(), 3, 1.0, activation=1.0), "has d=64"),
    (lambda: Splice("mid.0.mlp", sae()), "has d=512"),
    (lambda: Add("mid.0", sae(), 3, 1.0), "typical activation is unknown"),
    (lambda: LatentEdit("mid.0", sae(), 3, 1.0, "double", activation=1.0), "unknown latent edit"),
])
def test_bad_input_is_one_clear_line(host, make, message):
    with pytest.raises(DiffdictError, match=message) as info:
        with intervene(host, [make()], num_steps=STEPS):
            pass
    assert "\n" not in str(info.value)


def test_dictionary_from_another_site_is_refused(host):
    model = sae()
    acc = FeatureStatsAccumulator(model.n_features)
    acc.update(model.encode_sparse(torch.randn(16, 128)))
    stats = acc.result(site="up.0.0", what="update", model="toy")
    with pytest.raises(DiffdictError, match="trained on site up.0.0, but the edit is at site mid.0"):
        with intervene(host, [Add("mid.0", model, 1, 1.0, stats=stats)], num_steps=STEPS):
            pass


def test_dictionary_trained_in_another_capture_mode_is_refused(host):
    model = sae()
    acc = FeatureStatsAccumulator(model.n_features)
    acc.update(model.encode_sparse(torch.randn(16, 128)))
    stats = acc.result(site="mid.0", what="output", model="toy")  # the key every store and stats file records
    assert stats.capture == "output" and stats.what == "output"
    with pytest.raises(DiffdictError, match="trained on the site's output, but the edit is of its update; "
                                            "pass capture='output'"):
        with intervene(host, [Add("mid.0", model, 1, 1.0, stats=stats, capture="update")], num_steps=STEPS):
            pass
    renamed = acc.result(site="mid.0", capture="output", model="toy")  # a record naming the mode "capture"
    assert renamed.capture == "output"
    with pytest.raises(DiffdictError, match="trained on the site's output"):
        with intervene(host, [Add("mid.0", model, 1, 1.0, stats=renamed)], num_steps=STEPS):
            pass


def test_parse_steps_and_masks():
    assert parse_steps("0-3") == frozenset({0, 1, 2, 3})
    assert parse_steps("0,2") == frozenset({0, 2}) and parse_steps("all") is None and parse_steps(1) == frozenset({1})
    with pytest.raises(DiffdictError, match="bad steps"):
        parse_steps("3-1")
    w = resolve_mask("0,0,16,16", (16, 16), (32, 32)).view(16, 16)
    assert w[:8, :8].eq(1).all() and w.sum() == 64
    pixel = np.zeros((32, 32))
    pixel[:4, :4] = 1
    assert resolve_mask(pixel, (8, 8), (32, 32)).view(8, 8)[0, 0] == 1


# -- feature statistics ---------------------------------------------------------------------
def test_feature_stats_streaming_equals_brute_force(tmp_path):
    from diffdict.store import import_array

    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "acts.npy", x.numpy())
    store = import_array(tmp_path / "acts.npy", tmp_path / "store", site="acts", dtype="float32", progress=False)
    itda = ITDA(16, l0=4)
    itda.add_atoms(torch.randn(12, 16, generator=torch.Generator().manual_seed(1)))
    for model in (SparseAutoencoder(16, 24, mechanism="topk", mechanism_options={"k": 3}, seed=1), itda):
        stats = compute_feature_stats(model, store, batch_size=64)
        dense = model.encode(x)
        fired = dense != 0
        assert torch.equal(stats.count, fired.sum(0))
        assert torch.allclose(stats.frequency, fired.float().mean(0))
        mean = torch.where(fired.any(0), (dense * fired).sum(0) / fired.sum(0).clamp_min(1), torch.zeros(()))
        assert torch.allclose(stats.mean_activation, mean, atol=1e-5)
        best = torch.where(fired, dense, torch.full_like(dense, -float("inf"))).max(0).values
        assert torch.allclose(stats.max_activation[fired.any(0)], best[fired.any(0)], atol=1e-6)
        assert stats.site == "acts" and stats.tokens == 300
    folder = tmp_path / "dict"
    model.save(folder)
    save_feature_stats(folder, stats)
    loaded = load_feature_stats(folder, load_dictionary(folder))
    assert torch.equal(loaded.mean_activation, stats.mean_activation) and loaded.meta == stats.meta
    other = ITDA(16, l0=4)
    other.add_atoms(torch.randn(12, 16))
    with pytest.raises(DiffdictError, match="other weights"):
        load_feature_stats(folder, other)


# -- the commands -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, host):
    root = tmp_path_factory.mktemp("cli")
    host.model.save_pretrained(root / "toy", dtype=torch.float32)
    model = sae()
    model.save(root / "dict")
    x = torch.randn(200, 128, generator=torch.Generator().manual_seed(0))
    np.save(root / "acts.npy", x.numpy())
    return root


def test_cli_feature_stats_and_intervene(cli_setup, capsys):
    root = cli_setup
    from diffdict.store import import_array

    import_array(root / "acts.npy", root / "store", site="acts", dtype="float32", progress=False)
    assert main(["feature-stats", "--run", str(root / "dict"), "--store", str(root / "store")]) == 0
    assert (root / "dict" / "feature_stats.safetensors").exists()
    stats = load_feature_stats(root / "dict")
    feature = int(stats.count.argmax())
    args = ["intervene", "--run", str(root / "dict"), "--site", "mid.0", "--feature", str(feature), "--strength", "5",
            "--mask", "8,8,24,24", "--steps", "0", "--prompt", "a red circle", "--denoise-steps", str(STEPS),
            "--model-path", str(root / "toy"), "--backbone", "none", "--scale", "1", "--seed", "0"]
    assert main(args + ["--out", str(root / "out1")]) == 0
    assert main(args + ["--out", str(root / "out2")]) == 0
    one = json.loads((root / "out1" / "metrics.json").read_text())
    two = json.loads((root / "out2" / "metrics.json").read_text())
    assert one["aggregate"] == two["aggregate"] and (root / "out1" / "grid.png").exists()
    assert one["intervention"]["activation"] == pytest.approx(float(stats.mean_activation[feature]))
    capsys.readouterr()


def test_cli_capture_option_is_checked_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["intervene", "--run", "x", "--capture", "residual", "--out", "y"])
    assert exit_.value.code == 2 and "argument --capture: invalid choice: 'residual'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["intervene", "--help"])
    text = capsys.readouterr().out
    assert "--capture" in text and "--what" not in text


@pytest.mark.parametrize("extra, message", [
    (["--feature", "40"], "bad feature 40: expected an integer in 0.."),
    (["--feature", "1", "--mask", "0,0,64,64"], "outside the 32x32 image"),
    (["--feature", "1", "--steps", "0-5"], "outside the schedule"),
    (["--feature", "1", "--site", "up.1.0"], "d=64"),
    (["--feature", "40", "--capture", "update"], "bad feature 40: expected an integer in 0.."),
    (["--feature", "40", "--what", "update"], "bad feature 40: expected an integer in 0.."),  # --capture's former name
])
def test_cli_bad_input(cli_setup, capsys, extra, message):
    root = cli_setup
    args = ["intervene", "--run", str(root / "dict"), "--prompt", "a red circle", "--num-steps", str(STEPS),
            "--model-path", str(root / "toy"), "--backbone", "none", "--activation", "1", "--out", str(root / "bad")]
    if "--site" not in extra:
        args += ["--site", "mid.0"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("diffdict: error: ") and message in err[0]
