"""``diffdict export``: SAE Lens and sparsify folders that encode and decode like diffdict.

The folders are read back by diffdict's own readers (always), and by the real
``sae_lens`` and ``sparsify`` loaders where those packages are installed.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from diffdict.cli import main
from diffdict.dictionaries import ITDA, SparseAutoencoder, load_dictionary
from diffdict.dictionaries.export import export_dictionary, max_differences, probe_inputs
from diffdict.errors import DiffdictError

D, N, K = 16, 48, 4
TOLERANCE = 1e-5
K_MECHANISMS = ("topk", "batchtopk", "matryoshka-batchtopk")

# (mechanism, input normalisation, apply_b_dec_to_input): every mechanism, every
# normalisation and both b_dec placements at least once.
CASES = [
    ("topk", "standardise", True), ("topk", "scalar", False), ("batchtopk", "standardise", True),
    ("matryoshka-batchtopk", "none", True), ("jumprelu", "standardise", False), ("relu-l1", "standardise", True),
    ("relu", "none", True), ("soft-threshold", "scalar", True),
]


def make_sae(mechanism: str, normalization: str = "standardise", apply_b_dec: bool = True) -> SparseAutoencoder:
    """An SAE with non-trivial normalisation, biases and thresholds, as training leaves them."""
    options = {"k": K} if mechanism in K_MECHANISMS else {"theta": 0.2} if mechanism == "soft-threshold" else {}
    sae = SparseAutoencoder(D, N, mechanism=mechanism, mechanism_options=options, normalization=normalization,
                            apply_b_dec_to_input=apply_b_dec, seed=1)
    generator = torch.Generator().manual_seed(2)
    sample = 3.0 + torch.randn(512, D, generator=generator) * (0.5 + 2 * torch.rand(D, generator=generator))
    sae.initialize(sample, b_dec_init="mean")
    with torch.no_grad():
        sae.b_dec.add_(0.3 * torch.randn(D, generator=generator))
        sae.b_enc.copy_(0.1 * torch.randn(N, generator=generator))
        if mechanism in ("batchtopk", "matryoshka-batchtopk"):
            sae.mechanism.threshold.fill_(0.2)
        if mechanism == "jumprelu":
            sae.mechanism.threshold.copy_(0.3 * torch.rand(N, generator=generator))
    return sae


def check_equal(sae: SparseAutoencoder, encode, decode) -> None:
    differences = max_differences(sae, probe_inputs(sae, 256, seed=3), encode, decode)
    assert differences["codes"] <= TOLERANCE and differences["reconstruction"] <= TOLERANCE, differences


@pytest.mark.parametrize("mechanism,normalization,apply_b_dec", CASES)
def test_saelens_export_reads_back_equal(tmp_path, mechanism, normalization, apply_b_dec):
    sae = make_sae(mechanism, normalization, apply_b_dec)
    exported = load_dictionary(export_dictionary(sae, tmp_path / "out", "saelens"))
    check_equal(sae, exported.encode, exported.decode)
    codes = sae.encode(probe_inputs(sae, 256, seed=3))
    assert 0 < float((codes != 0).float().sum(1).mean()) < N  # the probe is neither all on nor all off


@pytest.mark.parametrize("normalization,apply_b_dec", [("standardise", True), ("scalar", False)])
def test_sparsify_export_reads_back_equal(tmp_path, normalization, apply_b_dec):
    sae = make_sae("topk", normalization, apply_b_dec)
    exported = load_dictionary(export_dictionary(sae, tmp_path / "out", "sparsify"))
    check_equal(sae, exported.encode, exported.decode)


def test_saelens_folder_contents(tmp_path):
    sae = make_sae("topk")
    folder = export_dictionary(sae, tmp_path / "out", "saelens", metadata={"hook_name": "mid.0", "model_name": None})
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    config = json.loads((folder / "cfg.json").read_text())
    assert config == {
        "architecture": "topk", "d_in": D, "d_sae": N, "k": K, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False, "metadata": {"sae_lens_version": "6.0.0", "hook_name": "mid.0"},
    }
    tensors = load_file(folder / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"W_enc": (D, N), "b_enc": (N,), "W_dec": (N, D),
                                                              "b_dec": (D,)}
    assert all(v.dtype == torch.float32 for v in tensors.values())
    # the normalisation is folded in: b_dec' = b_dec · s + m, W_dec' = W_dec · s
    assert torch.allclose(tensors["b_dec"], sae.b_dec * sae.input_scale + sae.input_mean, atol=1e-6)
    assert torch.allclose(tensors["W_dec"], sae.W_dec * sae.input_scale, atol=1e-6)

    jumprelu = export_dictionary(make_sae("batchtopk"), tmp_path / "batchtopk", "saelens")
    assert json.loads((jumprelu / "cfg.json").read_text())["architecture"] == "jumprelu"
    assert torch.equal(load_file(jumprelu / "sae_weights.safetensors")["threshold"], torch.full((N,), 0.2))
    standard = export_dictionary(make_sae("soft-threshold"), tmp_path / "soft", "saelens")
    assert json.loads((standard / "cfg.json").read_text())["architecture"] == "standard"


def test_sparsify_folder_contents(tmp_path):
    folder = export_dictionary(make_sae("topk", "none"), tmp_path / "out", "sparsify")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae.safetensors"]
    config = json.loads((folder / "cfg.json").read_text())
    assert config == {"activation": "topk", "k": K, "num_latents": N, "d_in": D, "normalize_decoder": True,
                      "multi_topk": False, "skip_connection": False, "transcode": False}
    tensors = load_file(folder / "sae.safetensors")
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"encoder.weight": (N, D), "encoder.bias": (N,),
                                                              "W_dec": (N, D), "b_dec": (D,)}
    standardised = export_dictionary(make_sae("topk"), tmp_path / "std", "sparsify")
    # decoder rows scaled by the per-dimension scale are no longer unit: sparsify must not renormalise them
    assert json.loads((standardised / "cfg.json").read_text())["normalize_decoder"] is False


@pytest.mark.parametrize("mechanism", ["batchtopk", "jumprelu", "relu-l1"])
def test_sparsify_refuses_what_it_cannot_express(tmp_path, mechanism):
    with pytest.raises(DiffdictError, match=f"sparsify has TopK activations only; a {mechanism} SAE"):
        export_dictionary(make_sae(mechanism), tmp_path / "out", "sparsify")
    assert not (tmp_path / "out").exists()


def test_refusals_are_one_line_errors(tmp_path):
    sae = make_sae("jumprelu")
    with torch.no_grad():
        sae.mechanism.threshold[:3] = -0.1
    with pytest.raises(DiffdictError, match="3 JumpReLU thresholds are negative"):
        export_dictionary(sae, tmp_path / "a", "saelens")
    with pytest.raises(DiffdictError, match="only SAEs can be exported to SAE Lens or sparsify, not itda"):
        export_dictionary(ITDA(D), tmp_path / "b", "saelens")
    with pytest.raises(DiffdictError, match="unknown export format 'onnx'"):
        export_dictionary(make_sae("topk"), tmp_path / "c", "onnx")
    own = make_sae("topk").save(tmp_path / "own")
    with pytest.raises(DiffdictError, match="already holds config.json, model.safetensors"):
        export_dictionary(make_sae("topk"), own, "saelens")
    export_dictionary(make_sae("topk"), tmp_path / "both", "sparsify")
    with pytest.raises(DiffdictError, match="already holds sae.safetensors"):
        export_dictionary(make_sae("topk"), tmp_path / "both", "saelens")


def test_cli_export(tmp_path, capsys):
    folder = make_sae("batchtopk").save(tmp_path / "dict")
    out = tmp_path / "saelens"
    assert main(["export", "--run", str(folder), "--format", "saelens", "--out", str(out), "--seed", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"exported {folder} (batchtopk, {D} -> {N}) to {out} for sae_lens.SAE.load_from_disk")
    codes, recon = (float(part.split()[-1]) for part in line.split(": ")[-1].split(", "))
    assert codes <= TOLERANCE and recon <= TOLERANCE
    assert main(["export", "--run", str(folder), "--format", "sparsify", "--out", str(tmp_path / "sp")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "sparsify has TopK activations only; a batchtopk SAE" in error
    assert main(["export", "--run", str(folder), "--format", "saelens", "--out", str(tmp_path / "x"),
                 "--probe-tokens", "0"]) == 2
    assert "--probe-tokens must be at least 1, got 0" in capsys.readouterr().err


# -- the real libraries -------------------------------------------------------------------


@pytest.mark.parametrize("mechanism,normalization,apply_b_dec", CASES)
def test_real_sae_lens_loads_export(tmp_path, mechanism, normalization, apply_b_dec):
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install sae-lens)")
    sae = make_sae(mechanism, normalization, apply_b_dec)
    loaded = sae_lens.SAE.load_from_disk(str(export_dictionary(sae, tmp_path / "out", "saelens")))
    with torch.no_grad():
        check_equal(sae, loaded.encode, loaded.decode)


@pytest.mark.parametrize("normalization,apply_b_dec", [("standardise", True), ("scalar", False)])
def test_real_sparsify_loads_export(tmp_path, normalization, apply_b_dec):
    sparsify = pytest.importorskip("sparsify", reason="eai-sparsify is not installed (pip install eai-sparsify)")
    sae = make_sae("topk", normalization, apply_b_dec)
    loaded = sparsify.Sae.load_from_disk(export_dictionary(sae, tmp_path / "out", "sparsify"))

    def encode(x):
        out = loaded.encode(x)
        return torch.zeros(x.shape[0], N).scatter(1, out.top_indices, out.top_acts)

    def decode(codes):
        values, indices = codes.topk(K, dim=1)
        return loaded.decode(values, indices)

    with torch.no_grad():
        check_equal(sae, encode, decode)
