"""The sparse autoencoder: the fused TopK path against plain autograd, AuxK, the unit-norm
decoder, normalisation, save/load for every mechanism, and sparsify / SAE Lens folders."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from safetensors.torch import save_file

from diffdict.dictionaries import (
    MECHANISMS,
    SparseAutoencoder,
    SparseCodes,
    load_dictionary,
    sparse_decode,
    topk_encode,
)
from diffdict.dictionaries.fused import topk_rows
from diffdict.errors import DiffdictError

D, N, K, B = 8, 24, 3, 16


def make_sae(mechanism: str = "topk", seed: int = 0, **kwargs) -> SparseAutoencoder:
    takes_k = "k" in inspect.signature(MECHANISMS[mechanism].__init__).parameters
    options = {"k": K} if takes_k else {}
    sae = SparseAutoencoder(D, N, mechanism=mechanism, mechanism_options=options, seed=seed, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(N, generator=gen) * 0.1)
        sae.b_dec.copy_(torch.randn(D, generator=gen) * 0.1)
        sae.W_enc_t.add_(torch.randn(N, D, generator=gen) * 0.1)
    return sae


def batch(seed: int = 5, n: int = B, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def reference_topk_loss(W_enc, b_enc, W_dec, b_dec, x, k):
    """Plain autograd TopK SAE: dense pre-activations, dense codes, dense decode."""
    pre = (x - b_dec) @ W_enc + b_enc
    values, indices = pre.topk(k, dim=1)
    codes = torch.zeros_like(pre).scatter(1, indices, values.relu())
    recon = codes @ W_dec + b_dec
    return (recon - x).pow(2).sum(), codes


def test_fused_topk_equals_plain_autograd():
    sae = make_sae()
    x = batch().requires_grad_()
    params = [sae.W_enc_t, sae.b_enc, sae.W_dec, sae.b_dec]
    ref_loss, ref_codes = reference_topk_loss(sae.W_enc_t.t(), *params[1:], x, K)
    ref_grads = torch.autograd.grad(ref_loss, params + [x])

    values, indices = topk_encode(x, sae.b_dec, sae.W_enc_t, sae.b_enc, K, bf16=False)
    recon = sparse_decode(values, indices, sae.W_dec) + sae.b_dec
    loss = (recon - x).pow(2).sum()
    grads = torch.autograd.grad(loss, params + [x])

    assert torch.allclose(SparseCodes(values, indices).to_dense(N), ref_codes, atol=1e-6)
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    for name, got, want in zip(["W_enc_t", "b_enc", "W_dec", "b_dec", "x"], grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [640, 256, 100, 42])  # 8, 4, 2 groups, and whole rows
def test_grouped_topk_equals_torch_topk(dtype, width):
    pre = torch.randn(50, width, generator=torch.Generator().manual_seed(0)).to(dtype)
    pre[0, :20] = 7.0  # the k largest all in one row segment, with ties
    values, indices = topk_rows(pre, 10)
    assert torch.equal(values.sort(1, descending=True).values, pre.topk(10, dim=1).values)
    assert torch.equal(pre.gather(1, indices), values)
    assert (indices.sort(1).values.diff(dim=1) > 0).all()  # no column twice


def test_topk_rows_tied_at_the_kth_value_keep_the_first_tied_columns():
    """Ties at the k-th value (common in bf16) are resolved without a slower search: the
    entries above it, then the tied ones in column order."""
    pre = torch.tensor([[1.0, 5.0, 3.0, 3.0, 0.0, 3.0, 3.0],
                        [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
                        [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0]]).bfloat16()
    values, indices = topk_rows(pre, 3, groups=1)
    assert indices.tolist() == [[1, 2, 3], [0, 1, 2], [0, 1, 2]]
    assert torch.equal(values, pre.gather(1, indices))


def test_bf16_encoder_stays_close():
    sae = make_sae()
    x = batch(n=64)
    exact = sae.encode_sparse(x)
    sae.bf16 = True
    approx = sae.encode_sparse(x)
    same = (exact.indices.sort(1).values == approx.indices.sort(1).values).all(1)
    assert same.float().mean() > 0.9
    assert torch.allclose(sae.decode(approx)[same], sae.decode(exact)[same], atol=0.05)
    error = lambda codes: (sae.decode(codes) - x).pow(2).sum()  # noqa: E731
    assert error(approx) <= error(exact) * 1.05


def test_sparse_and_dense_codes_decode_alike():
    sae = make_sae()
    codes = sae.encode_sparse(batch())
    dense = codes.to_dense(N)
    assert torch.allclose(sae.decode(codes), sae.decode(dense), atol=1e-6)
    assert torch.allclose(SparseCodes.from_dense(dense).to_dense(N), dense)
    repeated = SparseCodes(torch.tensor([[1.0, 2.0]]), torch.tensor([[4, 4]]))
    assert repeated.to_dense(N)[0, 4] == 3.0
    assert torch.allclose(sae.decode(repeated), sae.decode(repeated.to_dense(N)), atol=1e-6)


def test_training_forward_fused_equals_dense_reference():
    sae = make_sae().train()
    x = batch()
    out = sae.training_forward(x, variance=2.0)
    out.loss.backward()
    params = [sae.W_enc_t, sae.b_enc, sae.W_dec, sae.b_dec]
    got = [p.grad.clone() for p in params]
    leaves = [p.detach().clone().requires_grad_() for p in params]
    ref_loss, ref_codes = reference_topk_loss(leaves[0].t(), *leaves[1:], x, K)
    (ref_loss / (B * 2.0)).backward()
    assert out.loss.item() == pytest.approx(ref_loss.item() / (B * 2.0), rel=1e-6)
    for g, leaf in zip(got, leaves):
        assert torch.allclose(g, leaf.grad, atol=1e-6)
    assert out.l0.item() == pytest.approx(float((ref_codes != 0).sum(1).float().mean()))


def test_auxk_matches_reference():
    sae = make_sae().train()
    x = batch()
    dead = torch.zeros(N, dtype=torch.bool)
    dead[[1, 5, 7, 11, 20]] = True
    k_aux = 3
    out = sae.training_forward(x, variance=1.0, dead_mask=dead, auxk_coef=0.5, k_aux=k_aux)
    with torch.no_grad():
        _, codes = reference_topk_loss(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, x, K)
        residual = x - (codes @ sae.W_dec + sae.b_dec)
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        masked = pre.masked_fill(~dead, float("-inf"))
        values, indices = masked.topk(k_aux, dim=1)
        aux_codes = torch.zeros_like(pre).scatter(1, indices, values.relu())
        # normalised by the residual's variance, not the input's (``variance`` plays no part)
        expected = (aux_codes @ sae.W_dec - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum()
    assert out.aux_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert sae.training_forward(x, variance=7.0, dead_mask=dead, k_aux=k_aux).aux_loss.item() == pytest.approx(
        expected.item(), rel=1e-5)
    # the gradient reaches the dead features only
    sae.zero_grad()
    only_aux = sae.training_forward(x, variance=1.0, dead_mask=dead, auxk_coef=1.0, k_aux=k_aux)
    (only_aux.loss - sae.training_forward(x, variance=1.0).loss).backward()
    assert sae.W_dec.grad[~dead].abs().max() < 1e-6 and sae.W_dec.grad[dead].abs().max() > 0


def test_unit_norm_decoder_and_parallel_gradient_removed():
    sae = make_sae().train()
    sae.training_forward(batch(), variance=1.0).loss.backward()
    sae.remove_parallel_decoder_grad()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(N), atol=1e-6)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_step()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(N), atol=1e-6)


def test_encoder_initialised_as_decoder_transpose():
    sae = SparseAutoencoder(D, expansion=3, mechanism="relu", seed=4)
    assert sae.n_features == 3 * D
    assert torch.allclose(sae.W_enc * 3**0.5, sae.W_dec.t())
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(3 * D))


@pytest.mark.parametrize("normalization", ["standardise", "scalar", "none"])
@pytest.mark.parametrize("b_dec_init", ["mean", "geometric-median"])
def test_normalisation_and_b_dec_initialisation(normalization, b_dec_init):
    sae = make_sae(normalization=normalization)
    sample = batch(n=200) * torch.linspace(0.5, 4, D) + 3.0
    variance = sae.initialize(sample, b_dec_init)
    x_n = sae.normalize(sample)
    if normalization == "standardise":
        assert torch.allclose(x_n.mean(0), torch.zeros(D), atol=1e-5)
        assert torch.allclose(x_n.std(0), torch.ones(D), atol=1e-5)
    if normalization == "scalar":
        assert x_n.pow(2).sum(1).mean().item() == pytest.approx(D, rel=1e-4)
    assert variance == pytest.approx(float((x_n - x_n.mean(0)).pow(2).sum(1).mean()), rel=1e-5)
    if b_dec_init == "mean":
        assert torch.allclose(sae.b_dec, x_n.mean(0), atol=1e-5)
    else:  # the geometric median minimises the summed distance
        cost = lambda m: (x_n - m).norm(dim=1).sum()  # noqa: E731
        assert cost(sae.b_dec) <= cost(x_n.mean(0)) + 1e-4
    # decoder directions live in the activations' space
    codes = SparseCodes(torch.tensor([[1.0]]), torch.tensor([[2]]))
    zero = SparseCodes(torch.tensor([[0.0]]), torch.tensor([[2]]))
    assert torch.allclose(sae.decode(codes) - sae.decode(zero), sae.decoder_directions[2:3], atol=1e-5)


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_save_load_round_trip(tmp_path, mechanism):
    sae = make_sae(mechanism, normalization="standardise")
    sae.initialize(batch(n=64) * 2 + 1, "mean")
    if mechanism == "batchtopk":
        sae.train()
        sae.mechanism(torch.randn(B, N))
        sae.eval()
    if mechanism == "jumprelu":
        with torch.no_grad():
            sae.mechanism.threshold.uniform_(0, 0.2)
    sae.save(tmp_path / "dict")
    assert sorted(p.name for p in (tmp_path / "dict").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_dictionary(tmp_path / "dict")
    assert isinstance(loaded, SparseAutoencoder) and loaded.config() == sae.config()
    x = batch(7) * 2 + 1
    assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-6)
    assert torch.allclose(loaded(x), sae(x), atol=1e-6)
    assert torch.equal(loaded.W_enc, sae.W_enc)
    assert SparseAutoencoder.load(tmp_path / "dict").n_features == N


def test_sparsify_folder_gives_its_reconstruction(tmp_path):
    gen = torch.Generator().manual_seed(2)
    enc_w, enc_b = torch.randn(N, D, generator=gen), torch.randn(N, generator=gen)
    W_dec, b_dec = torch.randn(N, D, generator=gen), torch.randn(D, generator=gen)
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
              str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "activation": "topk", "expansion_factor": 3, "normalize_decoder": True, "num_latents": 0, "k": K,
        "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D,
    }))
    sae = load_dictionary(tmp_path)
    x = batch()
    pre = torch.relu((x - b_dec) @ enc_w.t() + enc_b)
    values, indices = pre.topk(K, dim=1)
    expected = (values.unsqueeze(2) * W_dec[indices]).sum(1) + b_dec
    assert torch.allclose(sae(x), expected, atol=1e-4)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_sae_lens_folder_gives_its_reconstruction(tmp_path, architecture):
    gen = torch.Generator().manual_seed(3)
    W_enc, b_enc = torch.randn(D, N, generator=gen), torch.randn(N, generator=gen)
    W_dec, b_dec = torch.randn(N, D, generator=gen), torch.randn(D, generator=gen)
    threshold = torch.rand(N, generator=gen)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if architecture == "jumprelu":
        tensors["threshold"] = threshold
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"architecture": architecture, "d_in": D, "d_sae": N, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": architecture != "standard", "normalize_activations": "none", "k": K}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_dictionary(tmp_path)
    x = batch()
    hidden_pre = (x - b_dec * cfg["apply_b_dec_to_input"]) @ W_enc + b_enc
    if architecture == "standard":
        acts = hidden_pre.relu()
    elif architecture == "topk":
        values, indices = hidden_pre.topk(K, dim=1)
        acts = torch.zeros_like(hidden_pre).scatter(1, indices, values.relu())
    else:
        acts = hidden_pre.relu() * (hidden_pre > threshold)
    assert torch.allclose(sae(x), acts @ W_dec + b_dec, atol=1e-4)


def test_foreign_folders_with_unsupported_options_are_refused(tmp_path):
    save_file({"W_enc": torch.zeros(D, N), "b_enc": torch.zeros(N), "W_dec": torch.zeros(N, D),
               "b_dec": torch.zeros(D)}, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": D, "d_sae": N}))
    with pytest.raises(DiffdictError, match="SAE Lens architecture 'gated' is not supported"):
        load_dictionary(tmp_path)
    with pytest.raises(DiffdictError, match="is not a dictionary folder"):
        load_dictionary(tmp_path / "..")
    with pytest.raises(DiffdictError, match="dictionary folder not found"):
        load_dictionary(tmp_path / "missing")


def test_bad_input_is_one_line():
    sae = make_sae()
    with pytest.raises(DiffdictError, match=r"activations have shape \(4, 5\), but this sae dictionary expects \(tokens, 8\)"):
        sae.encode(torch.zeros(4, 5))
    with pytest.raises(DiffdictError, match="k = 30 is larger than the dictionary width 24"):
        SparseAutoencoder(D, N, mechanism="topk", mechanism_options={"k": 30})
    with pytest.raises(DiffdictError, match="codes have shape"):
        sae.decode(torch.zeros(2, N + 1))


def test_a_dictionary_defines_encode_or_encode_sparse_and_gets_the_other():
    from diffdict.dictionaries.base import Dictionary

    class Neither(Dictionary):
        n_features = 3

    class DenseOnly(Dictionary):
        n_features = 3

        def encode(self, x):
            return torch.relu(x)

    with pytest.raises(NotImplementedError, match="Neither defines neither encode nor encode_sparse"):
        Neither().encode(torch.ones(2, 3))
    x = torch.tensor([[1.0, -2.0, 3.0], [0.0, 5.0, -1.0]])
    sparse = DenseOnly().encode_sparse(x)
    assert torch.equal(sparse.to_dense(3), torch.relu(x))
