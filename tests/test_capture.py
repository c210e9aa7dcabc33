"""Capture and edit hooks on the toy host: what is read, which CFG half, edits, bad input.

A tiny randomly initialised toy model (16x16 images) keeps this fast; the hooks do not
depend on the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdict.capture import CAPTURE_MODES, WHATS, EditHook, ReadHook, Recorder, capture, capture_mode_of
from diffdict.errors import DiffdictError
from diffdict.hosts import HOSTS, load_host
from diffdict.models.text_encoder import TextEncoderConfig
from diffdict.models.toy import ToyConfig, ToyDiffusion
from diffdict.world import sample_prompts

STEPS = 3
GUIDANCE = 3.0


def tiny_toy_config() -> ToyConfig:
    return ToyConfig(image_size=16, block_out_channels=(8, 16, 32), attention_heads=2, norm_num_groups=4,
                     text=TextEncoderConfig(width=32, layers=1, heads=2))


@pytest.fixture(scope="module")
def host():
    torch.manual_seed(0)
    return load_host("toy", model=ToyDiffusion(tiny_toy_config()))


@pytest.fixture(scope="module")
def prompts():
    return sample_prompts(3, seed=0)


def generate(host, prompts, **kwargs):
    return host.generate(prompts, seed=5, steps=STEPS, guidance=GUIDANCE, **kwargs)


def hand_hook(module_path, store):
    """A plain torch hook recording (step, input, output) of the module in NCHW."""

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output.sample
        store.append((module.__host.current_step, x.detach().clone(), out.detach().clone()))

    return hook


def record_by_hand(host, site, prompts):
    module = host.module(host.site(site).module)
    module.__host = host
    records = []
    handle = module.register_forward_hook(hand_hook(site, records), with_kwargs=True)
    try:
        images = generate(host, prompts)
    finally:
        handle.remove()
    return images, records


def to_tokens(x):
    return x.flatten(2).transpose(1, 2)


def test_sites_of_toy(host):
    sites = host.sites()
    blocks = [s for s, info in sites.items() if info.kind == "unet-block"]
    assert blocks == ["down.1.0", "down.2.0", "mid.0", "up.0.0", "up.0.1", "up.1.0", "up.1.1"]
    assert sites["mid.0"].d == 32 and sites["mid.0"].grid == (4, 4)
    assert sites["down.1.0"].d == 16 and sites["down.1.0"].grid == (8, 8)
    assert sites["up.1.1"].grid == (8, 8)
    assert sites["mid.0.mlp"].kind == "mlp" and sites["mid.0.mlp"].d == 4 * 32
    assert sites["mid.0"].module == "unet.mid_block.attentions.0"
    assert host.module(sites["up.0.1"].module) is host.model.unet.up_blocks[0].attentions[1]
    assert host.default_steps == 10 and host.current_step is None


def test_update_is_output_minus_input_on_the_conditional_half(host, prompts):
    plain, by_hand = record_by_hand(host, "mid.0", prompts)
    assert [step for step, _, _ in by_hand] == list(range(STEPS))
    n = len(prompts)
    images, acts, meta = capture(host, prompts, ["mid.0", "up.1.0"], capture="update", steps=[0, 2], seed=5,
                                 num_steps=STEPS, guidance=GUIDANCE)
    assert np.array_equal(images, plain)  # reading changes nothing
    x = acts["mid.0"].view(n, 2, 16, 32)  # prompt, step, token, d
    for k, step in enumerate([0, 2]):
        _, x_in, x_out = by_hand[step]
        assert x_in.shape[0] == 2 * n  # CFG batch [uncond; cond]
        expected = to_tokens(x_out[n:]) - to_tokens(x_in[n:])
        torch.testing.assert_close(x[:, k], expected, rtol=0, atol=1e-6)
        assert not torch.allclose(x[:, k], to_tokens(x_out[:n]) - to_tokens(x_in[:n]))
    m = meta["mid.0"]
    assert m["prompt_id"].tolist() == [p for p in range(n) for _ in range(2 * 16)]
    assert m["step"].tolist() == [s for _ in range(n) for s in (0, 2) for _ in range(16)]
    assert m["row"].tolist()[:16] == [r for r in range(4) for _ in range(4)]
    assert m["col"].tolist()[:16] == [c for _ in range(4) for c in range(4)]
    assert acts["up.1.0"].shape == (n * 2 * 64, 16)


def test_output_and_mlp_and_halves(host, prompts):
    _, by_hand = record_by_hand(host, "up.0.0", prompts)
    n = len(prompts)
    seen = {}

    def keep(name):
        return lambda x, step: seen.setdefault((name, step), x.clone())

    hooks = [ReadHook("up.0.0", keep("cond"), capture="output", steps=[1]),
             ReadHook("up.0.0", keep("uncond"), capture="output", steps=[1], half="uncond"),
             ReadHook("up.0.0", keep("both"), capture="output", steps=[1], half="both"),
             ReadHook("up.0.0.mlp", keep("mlp"), steps=[1])]
    with host.hooks(hooks):
        generate(host, prompts)
    out = to_tokens(by_hand[1][2])
    torch.testing.assert_close(seen[("cond", 1)], out[n:], rtol=0, atol=0)
    torch.testing.assert_close(seen[("uncond", 1)], out[:n], rtol=0, atol=0)
    torch.testing.assert_close(seen[("both", 1)], out, rtol=0, atol=0)
    assert seen[("mlp", 1)].shape == (n, 16, 4 * 32)
    assert set(seen) == {("cond", 1), ("uncond", 1), ("both", 1), ("mlp", 1)}  # gated to step 1
    # capture='mlp' on a block site reads its MLP
    _, acts, _ = capture(host, prompts[:1], ["up.0.0"], capture="mlp", steps=[1], num_steps=STEPS)
    assert list(acts) == ["up.0.0.mlp"] and acts["up.0.0.mlp"].shape == (16, 4 * 32)


def test_without_guidance_hooks_see_the_whole_batch(host, prompts):
    seen = []
    with host.hooks([ReadHook("mid.0", lambda x, s: seen.append(x.shape[0]))]):
        host.generate(prompts, steps=2, guidance=1.0)
    assert seen == [len(prompts)] * 2


def test_identity_edit_changes_nothing_and_a_real_edit_changes_the_image(host, prompts):
    plain = generate(host, prompts)
    for mode in ("update", "output"):
        with host.hooks([EditHook("mid.0", lambda x, s: x, capture=mode)]):
            assert np.array_equal(generate(host, prompts), plain)
    with host.hooks([EditHook("up.1.0.mlp", lambda x, s: x.clone())]):
        assert np.array_equal(generate(host, prompts), plain)
    # ablate the update of a block (conditional half only)
    with host.hooks([EditHook("up.1.1", lambda x, s: torch.zeros_like(x))]):
        ablated = generate(host, prompts)
    assert (ablated != plain).mean() > 0.05
    # step gate: a step the run never reaches changes nothing; the last step changes less than all steps
    with host.hooks([EditHook("up.1.1", lambda x, s: torch.zeros_like(x), steps=[99])]):
        assert np.array_equal(generate(host, prompts), plain)
    with host.hooks([EditHook("up.1.1", lambda x, s: torch.zeros_like(x), steps=[STEPS - 1])]):
        late = generate(host, prompts)
    assert 0 < np.abs(late.astype(int) - plain).sum() < np.abs(ablated.astype(int) - plain).sum()
    # the hooks are removed after the block
    assert np.array_equal(generate(host, prompts), plain)


def test_edit_sees_conditional_half_and_reads_after_it_see_the_edit(host, prompts):
    n = len(prompts)
    shift = torch.randn(32, generator=torch.Generator().manual_seed(1))
    seen = []
    hooks = [EditHook("mid.0", lambda x, s: x + shift, capture="output", steps=[0]),
             ReadHook("mid.0", lambda x, s: seen.append(x.clone()), capture="output", steps=[0], half="both")]
    _, by_hand = record_by_hand(host, "mid.0", prompts)
    with host.hooks(hooks):
        generate(host, prompts)
    out = to_tokens(by_hand[0][2])
    torch.testing.assert_close(seen[0][:n], out[:n])  # unconditional half untouched
    torch.testing.assert_close(seen[0][n:], out[n:] + shift)


def test_recorder_across_batches(host, prompts):
    recorder = Recorder(host, ["down.2.0"], "output", steps=[0])
    with host.hooks(recorder.hooks()):
        host.generate(prompts[:2], seeds=[10, 11], steps=2)
        a, m = recorder.take([10, 11])
        host.generate(prompts[2:], seeds=[12], steps=2)
        b, m2 = recorder.take([12])
    assert a["down.2.0"].shape == (2 * 16, 32) and b["down.2.0"].shape == (16, 32)
    assert m["down.2.0"]["prompt_id"].unique().tolist() == [10, 11]
    assert m2["down.2.0"]["prompt_id"].unique().tolist() == [12]


def test_bad_input(host, prompts):
    with pytest.raises(DiffdictError, match=r"unknown site 'mid\.9'.*valid sites: down\.1\.0, .*mid\.0"):
        host.site("mid.9")
    with pytest.raises(DiffdictError, match="unknown site"):
        with host.hooks([ReadHook("nope", lambda x, s: None)]):
            pass
    with pytest.raises(DiffdictError, match=r"unknown model 'sd3'; available: toy, sdxl-turbo, sdxl, flux-schnell"):
        load_host("sd3")
    assert list(HOSTS)[0] == "toy"
    with pytest.raises(DiffdictError, match="takes no option 'quantize'"):
        load_host("toy", model=host.model, quantize="nf4")
    with pytest.raises(DiffdictError, match="no update"):
        Recorder(host, ["mid.0.mlp"], "update")
    with pytest.raises(DiffdictError, match="unknown capture 'residual'"):
        ReadHook("mid.0", lambda x, s: None, capture="residual")
    with pytest.raises(DiffdictError, match="unknown batch half"):
        EditHook("mid.0", lambda x, s: x, half="top")
    with pytest.raises(DiffdictError, match=r"edit hook at site mid\.0 returned \(3, 4\)"):
        with host.hooks([EditHook("mid.0", lambda x, s: torch.zeros(3, 4))]):
            generate(host, prompts)
    with pytest.raises(DiffdictError, match="unknown word|not in the vocabulary|vocabulary"):
        host.generate(["a purple zeppelin"], steps=1)
    with pytest.raises(DiffdictError, match="toy model weights not found"):
        load_host("toy", path="/nonexistent/toy")
    with pytest.raises(DiffdictError, match="toy model weights not found"):
        load_host("toy", model="/nonexistent/toy")  # every host takes its weights folder as model=
    assert load_host("toy", only_taken=True, model=host.model, quantize="nf4").model is host.model


def test_capture_modes_and_their_former_names():
    import diffdict.hosts

    assert CAPTURE_MODES == ("update", "output", "mlp")
    assert WHATS is CAPTURE_MODES and diffdict.hosts.WHATS is CAPTURE_MODES  # the former name still imports
    assert diffdict.hosts.CAPTURE_MODES is CAPTURE_MODES
    assert ReadHook("mid.0", lambda x, s: None, capture="output").capture == "output"
    # records on disk name the mode "what"; "capture" (a mode name) is read too
    assert capture_mode_of({"what": "output", "steps": [0]}) == "output"
    assert capture_mode_of({"capture": "mlp"}) == "mlp"
    assert capture_mode_of({"what": "update", "capture": "output"}) == "update"
    assert capture_mode_of({"capture": {"what": "update"}}) is None  # a store's settings: read settings["capture"]
    assert capture_mode_of(None) is None and capture_mode_of({}) is None


def test_hosts_say_what_they_draw_without_callers_naming_them():
    from diffdict.hosts import host_class, is_real_host

    assert host_class("toy").shapes_world and host_class("toy").default_judge == "shapes-clip"
    for name in ("sd", "sdxl", "sdxl-turbo", "flux-schnell"):
        assert not host_class(name).shapes_world and host_class(name).default_judge == "open-clip"
        assert is_real_host(name)
    assert not is_real_host("toy") and is_real_host(None)
