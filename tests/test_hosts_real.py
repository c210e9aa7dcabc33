"""The real adapters (sd, sdxl-turbo, sdxl, flux-schnell), offline: tiny randomly initialised
pipelines of the real diffusers classes (StableDiffusionPipeline, StableDiffusionXLPipeline,
FluxPipeline), built in _tiny_pipelines.py."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

pytest.importorskip("tokenizers")
from _tiny_pipelines import SIZE, tiny_flux_pipeline, tiny_sd_pipeline, tiny_sdxl_pipeline  # noqa: E402

from diffdict.capture import EditHook, ReadHook, capture  # noqa: E402
from diffdict.errors import DiffdictError  # noqa: E402
from diffdict.hosts import load_host  # noqa: E402

PROMPTS = ["a red circle at the left", "a big blue square", "a small yellow triangle on top"]


@pytest.fixture(scope="module")
def sdxl_pipe():
    return tiny_sdxl_pipeline()


@pytest.fixture(scope="module")
def flux():
    return load_host("flux-schnell", pipeline=tiny_flux_pipeline(), image_size=SIZE, device="cpu",
                     max_sequence_length=24)


def hand_record(module, take_in, take_out):
    records = []

    def hook(mod, args, kwargs, output):
        records.append((take_in(args, kwargs), take_out(output)))

    return records, module.register_forward_hook(hook, with_kwargs=True)


def tokens(x):
    return x.flatten(2).transpose(1, 2)


# -- SDXL ----------------------------------------------------------------------------------
def test_sdxl_sites(sdxl_pipe):
    host = load_host("sdxl", pipeline=sdxl_pipe, image_size=SIZE, device="cpu")
    sites = host.sites()
    assert [s for s, i in sites.items() if i.kind == "unet-block"] == ["down.1.0", "mid.0", "up.0.0", "up.0.1"]
    assert sites["down.1.0"].d == 16 and sites["down.1.0"].grid == (4, 4)  # 16 px / vae 2 / down 2
    assert host.module(sites["up.0.1"].module) is sdxl_pipe.unet.up_blocks[0].attentions[1]
    # two transformer layers in these blocks: .mlp is the last one's GEGLU (width 4 * 16)
    assert sites["mid.0.mlp"].module == "unet.mid_block.attentions.0.transformer_blocks.1.ff.net.0"
    assert sites["mid.0.mlp"].d == 64
    assert (host.default_steps, host.default_guidance) == (50, 5.0)
    turbo = load_host("sdxl-turbo", pipeline=sdxl_pipe, image_size=SIZE, device="cpu")
    assert (turbo.default_steps, turbo.default_guidance) == (1, 0.0)
    assert set(turbo.sites()) == set(sites)


def test_sdxl_cfg_reads_the_conditional_half(sdxl_pipe):
    host = load_host("sdxl", pipeline=sdxl_pipe, image_size=SIZE, device="cpu")
    n = len(PROMPTS)
    module = host.module(host.site("down.1.0").module)
    records, handle = hand_record(module, lambda a, k: (a[0] if a else k["hidden_states"]).clone(),
                                  lambda o: o[0].clone())
    steps = []
    try:
        with host.hooks([ReadHook("mid.0", lambda x, s: steps.append(s))]):
            plain = host.generate(PROMPTS, seed=3, steps=2, guidance=5.0)
    finally:
        handle.remove()
    assert steps == [0, 1]
    images, acts, meta = capture(host, PROMPTS, ["down.1.0"], "update", steps=[1], seed=3, num_steps=2, guidance=5.0)
    assert images.shape == (n, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert np.array_equal(images, plain)
    x_in, x_out = records[1]
    assert x_in.shape[0] == 2 * n
    expected = (tokens(x_out[n:]) - tokens(x_in[n:])).reshape(-1, 16)
    torch.testing.assert_close(acts["down.1.0"], expected, rtol=0, atol=1e-6)
    assert meta["down.1.0"]["step"].unique().tolist() == [1]
    # an identity edit leaves the image unchanged; an edit of the conditional half changes it
    with host.hooks([EditHook("down.1.0", lambda x, s: x)]):
        assert np.array_equal(host.generate(PROMPTS, seed=3, steps=2, guidance=5.0), plain)
    with host.hooks([EditHook("mid.0", lambda x, s: 20 * x)]):
        edited = host.generate(PROMPTS, seed=3, steps=2, guidance=5.0)
    assert (edited != plain).mean() > 0.05


def test_sdxl_turbo_no_cfg_and_edits(sdxl_pipe):
    host = load_host("sdxl-turbo", pipeline=sdxl_pipe, image_size=SIZE, device="cpu")
    rows = []
    with host.hooks([ReadHook("up.0.0", lambda x, s: rows.append((x.shape, s)), capture="output")]):
        plain = host.generate(PROMPTS)
    assert rows == [(torch.Size([len(PROMPTS), 16, 16]), 0)]  # one step, the whole batch
    _, acts, _ = capture(host, PROMPTS, ["up.0.1"], capture="mlp")
    assert acts["up.0.1.mlp"].shape == (len(PROMPTS) * 16, 64)
    with host.hooks([EditHook("up.0.1", lambda x, s: x, capture="output")]):
        assert np.array_equal(host.generate(PROMPTS), plain)
    direction = torch.randn(16, generator=torch.Generator().manual_seed(0))
    with host.hooks([EditHook("up.0.1", lambda x, s: x + 30 * direction, capture="output")]):
        assert (host.generate(PROMPTS) != plain).mean() > 0.05


def test_sdxl_loads_from_a_local_folder_and_bad_input(sdxl_pipe, tmp_path):
    sdxl_pipe.save_pretrained(tmp_path / "tiny-sdxl")
    host = load_host("sdxl-turbo", model=str(tmp_path / "tiny-sdxl"), image_size=SIZE, device="cpu")
    same = load_host("sdxl-turbo", pipeline=sdxl_pipe, image_size=SIZE, device="cpu")
    assert np.array_equal(host.generate(PROMPTS[:1]), same.generate(PROMPTS[:1]))
    assert host.describe()["source"] == os.path.realpath(tmp_path / "tiny-sdxl")
    with pytest.raises(DiffdictError, match="prompt 1 has .* CLIP tokens, more than the model's 16"):
        host.generate(["a red circle", " ".join(["red"] * 20)])
    with pytest.raises(DiffdictError, match="cannot load sdxl-turbo model from .*no file named model_index.json"):
        load_host("sdxl-turbo", model=str(tmp_path), device="cpu")
    with pytest.raises(DiffdictError, match="image size 17x17 must be a positive multiple of 4"):
        load_host("sdxl-turbo", pipeline=sdxl_pipe, image_size=17, device="cpu")
    with pytest.raises(DiffdictError, match=r"unknown site 'down\.2\.1' for model sdxl-turbo; valid sites: down\.1\.0"):
        host.site("down.2.1")


def test_nf4_needs_bitsandbytes():
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    with pytest.raises(DiffdictError, match=r"needs bitsandbytes.*diffdict\[real\]"):
        load_host("flux-schnell", model="/nonexistent/flux", quantize="nf4", device="cpu")
    with pytest.raises(DiffdictError, match="unknown quantization 'int3'"):
        load_host("flux-schnell", model="/nonexistent/flux", quantize="int3", device="cpu")


# -- FLUX ----------------------------------------------------------------------------------
def test_flux_sites(flux):
    sites = flux.sites()
    assert list(sites) == ["double.0", "double.1", "single.0", "single.1",
                           "double.0.mlp", "double.1.mlp", "single.0.mlp", "single.1.mlp"]
    assert sites["double.1"].d == 16 and sites["double.1"].grid == (8, 8)  # 16 px / vae 1 / 2x2 patches
    assert sites["double.1.mlp"].d == 64 and sites["single.0.mlp"].d == 64
    assert sites["single.0.mlp"].module == "transformer.single_transformer_blocks.0.act_mlp"
    assert sites["double.0.mlp"].module == "transformer.transformer_blocks.0.ff.net.0"
    assert (flux.default_steps, flux.default_guidance, flux.image_size) == (1, 0.0, (SIZE, SIZE))


def test_flux_captures_image_tokens(flux):
    transformer = flux.pipe.transformer
    n, t = len(PROMPTS), 64
    take_in = lambda a, k: k["hidden_states"].clone()  # noqa: E731
    take_out = lambda o: (o[0].clone(), o[1].clone())  # noqa: E731
    double, h1 = hand_record(transformer.transformer_blocks[1], take_in, take_out)
    single, h2 = hand_record(transformer.single_transformer_blocks[0], take_in, take_out)
    mlp_records = []
    h3 = transformer.single_transformer_blocks[0].act_mlp.register_forward_hook(
        lambda m, a, o: mlp_records.append(o.clone()))
    try:
        plain = flux.generate(PROMPTS, seed=1, steps=2)
    finally:
        for h in (h1, h2, h3):
            h.remove()
    images, acts, meta = capture(flux, PROMPTS, ["double.1", "single.0"], "output", seed=1, num_steps=2)
    assert np.array_equal(images, plain)
    for site, records in (("double.1", double), ("single.0", single)):
        x = acts[site].view(n, 2, t, 16)
        for step in range(2):
            text, image = records[step][1]
            assert image.shape == (n, t, 16) and text.shape[1] == 24  # text tokens kept apart
            torch.testing.assert_close(x[:, step], image, rtol=0, atol=0)
    assert meta["single.0"]["row"].max() == 7 and meta["single.0"]["col"].max() == 7
    _, updates, _ = capture(flux, PROMPTS, ["double.1"], "update", steps=[0], seed=1, num_steps=2)
    torch.testing.assert_close(updates["double.1"].view(n, t, 16), double[0][1][1] - double[0][0], rtol=0, atol=1e-6)
    # single-block neurons: the joint sequence is [text; image]; only the image tokens are kept
    _, neurons, _ = capture(flux, PROMPTS, ["single.0", "double.0"], "mlp", steps=[1], seed=1, num_steps=2)
    assert mlp_records[1].shape == (n, 24 + t, 64)
    torch.testing.assert_close(neurons["single.0.mlp"].view(n, t, 64), mlp_records[1][:, 24:], rtol=0, atol=0)
    assert neurons["double.0.mlp"].shape == (n * t, 64)


def test_flux_edits(flux):
    plain = flux.generate(PROMPTS, seed=2, steps=1)
    for site, mode in (("double.0", "output"), ("single.1", "update"), ("single.0.mlp", None)):
        with flux.hooks([EditHook(site, lambda x, s: x, capture=mode)]):
            assert np.array_equal(flux.generate(PROMPTS, seed=2, steps=1), plain), site
    direction = torch.randn(16, generator=torch.Generator().manual_seed(0))
    with flux.hooks([EditHook("double.0", lambda x, s: x + 10 * direction, capture="output")]):
        assert (flux.generate(PROMPTS, seed=2, steps=1) != plain).mean() > 0.05
    with flux.hooks([EditHook("single.0.mlp", lambda x, s: torch.zeros_like(x))]):
        assert (flux.generate(PROMPTS, seed=2, steps=1) != plain).mean() > 0.05
    with pytest.raises(DiffdictError, match="prompt 0 has .* T5 tokens, more than the model's 24"):
        flux.generate([" ".join(["blue"] * 30)])


def test_flux_collect_into_a_store(flux, tmp_path):
    from diffdict.collect import collect
    from diffdict.store import open_store

    info = collect(flux, PROMPTS, ["double.1", "single.1.mlp"], tmp_path / "store", capture="mlp",
                   chunk_size=2, batch_size=2, dtype="float32")
    assert info["tokens"] == {"double.1.mlp": 3 * 64, "single.1.mlp": 3 * 64}
    assert info["settings"]["model"] == "flux-schnell" and info["images"] == {"height": SIZE, "width": SIZE}
    store = open_store(tmp_path / "store")
    assert store.d("single.1.mlp") == 64 and store.grid("double.1.mlp") == (8, 8)


# -- SD 1.x --------------------------------------------------------------------------------
def test_sd_sites_cfg_and_local_folder(tmp_path):
    pipe = tiny_sd_pipeline()
    host = load_host("sd", pipeline=pipe, image_size=SIZE, device="cpu")
    sites = host.sites()
    assert [s for s, i in sites.items() if i.kind == "unet-block"] == ["down.0.0", "mid.0", "up.1.0", "up.1.1"]
    assert sites["down.0.0"].grid == (8, 8) and sites["mid.0"].grid == (4, 4) and sites["mid.0"].d == 16
    assert host.module(sites["up.1.1"].module) is pipe.unet.up_blocks[1].attentions[1]
    assert (host.default_steps, host.default_guidance) == (50, 7.5) and host.uses_cfg(7.5)
    # CFG: hooks see the conditional half of the [unconditional; conditional] batch
    rows = []
    with host.hooks([ReadHook("mid.0", lambda x, s: rows.append(x.shape[0]))]):
        plain = host.generate(PROMPTS, seed=1, steps=2)
    assert rows == [len(PROMPTS)] * 2 and plain.shape == (len(PROMPTS), SIZE, SIZE, 3)
    with host.hooks([EditHook("mid.0", lambda x, s: 20 * x)]):
        assert (host.generate(PROMPTS, seed=1, steps=2) != plain).mean() > 0.05
    pipe.save_pretrained(tmp_path / "tiny-sd")
    loaded = load_host("sd", model=str(tmp_path / "tiny-sd"), image_size=SIZE, device="cpu")
    assert np.array_equal(loaded.generate(PROMPTS, seed=1, steps=2), plain)
    with pytest.raises(DiffdictError, match="prompt 0 has .* CLIP tokens, more than the model's 16"):
        loaded.generate([" ".join(["red"] * 20)])
