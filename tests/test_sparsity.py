"""Each sparsity mechanism against a plain reference of its formula: forward, penalty and
gradients."""

from __future__ import annotations

import pytest
import torch

from diffdict.dictionaries import MECHANISMS, make_mechanism
from diffdict.errors import DiffdictError

B, N = 6, 12


def pre_activations(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, N, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(mechanism, pre: torch.Tensor, norms: torch.Tensor | None = None):
    """Codes, penalty and the gradients of (codes · w).sum() + penalty."""
    pre = pre.clone().requires_grad_()
    norms = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) + 0.5 if norms is None else norms
    weights = torch.randn(B, N, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    codes = mechanism(pre)
    penalty = mechanism.penalty(pre, codes, norms)
    ((codes * weights).sum() + penalty).backward()
    return codes.detach(), penalty.detach(), pre.grad, weights, norms


def test_registry_lists_every_mechanism():
    assert set(MECHANISMS) == {"topk", "batchtopk", "relu-l1", "relu", "soft-threshold", "jumprelu",
                               "matryoshka-batchtopk"}
    with pytest.raises(DiffdictError, match="unknown sparsity mechanism 'gated'"):
        make_mechanism("gated", N)


def test_topk_matches_reference():
    pre = pre_activations()
    codes, penalty, grad, weights, _ = run(make_mechanism("topk", N, k=3).double(), pre)
    kth = pre.topk(3, dim=1).values[:, -1:]
    keep = (pre >= kth) & (pre > 0)
    assert torch.equal(codes, torch.where(keep, pre, 0))
    assert penalty == 0
    assert torch.equal(grad, torch.where(keep, weights, 0))


def test_batchtopk_training_and_inference_match_reference():
    mechanism = make_mechanism("batchtopk", N, k=2, threshold_decay=0.9).double().train()
    pre = pre_activations()
    codes, _, grad, weights, _ = run(mechanism, pre)
    acts = pre.relu()
    cutoff = acts.flatten().topk(2 * B).values[-1]
    keep = (acts >= cutoff) & (acts > 0)
    assert torch.equal(codes, torch.where(keep, pre, 0))
    assert torch.equal(grad, torch.where(keep, weights, 0))
    assert mechanism.threshold.item() == pytest.approx(float(acts[keep].min()))
    second = pre_activations(1)
    mechanism(second)
    kept = second.relu().flatten().topk(2 * B).values
    expected = 0.9 * float(acts[keep].min()) + 0.1 * float(kept[kept > 0].min())
    assert mechanism.threshold.item() == pytest.approx(expected)

    mechanism.eval()
    inference = mechanism(pre)
    assert torch.equal(inference, torch.where(pre > mechanism.threshold, pre, 0))


def test_relu_l1_penalty_weighted_by_decoder_norm():
    pre = pre_activations()
    codes, penalty, grad, weights, norms = run(make_mechanism("relu-l1", N, l1=0.05), pre)
    assert torch.equal(codes, pre.relu())
    assert penalty.item() == pytest.approx(0.05 * float((pre.relu() * norms).sum(1).mean()))
    assert torch.allclose(grad, (weights + 0.05 * norms / B) * (pre > 0))


def test_relu_has_no_penalty():
    pre = pre_activations()
    codes, penalty, grad, weights, _ = run(make_mechanism("relu", N), pre)
    assert torch.equal(codes, pre.relu()) and penalty == 0
    assert torch.equal(grad, weights * (pre > 0))


@pytest.mark.parametrize("learn", [False, True])
def test_soft_threshold_shrinks(learn):
    mechanism = make_mechanism("soft-threshold", N, theta=0.3, learn_theta=learn).double()
    pre = pre_activations()
    codes, _, grad, weights, _ = run(mechanism, pre)
    assert torch.allclose(codes, (pre - 0.3).relu())
    assert torch.equal(grad, weights * (pre > 0.3))
    if learn:
        assert torch.allclose(mechanism.threshold.grad, -(weights * (pre > 0.3)).sum(0))
        mechanism.threshold.data.fill_(-1.0)
        mechanism.after_step()
        assert (mechanism.threshold == 0).all()  # θ stays a shrinkage
    else:
        assert not any(p.requires_grad for p in mechanism.parameters())


def test_jumprelu_straight_through_gradients():
    theta, eps, coef = 0.4, 0.5, 0.01
    mechanism = make_mechanism("jumprelu", N, l0_coef=coef, theta=theta, bandwidth=eps).double()
    pre = pre_activations()
    codes, penalty, grad, weights, _ = run(mechanism, pre)
    above = pre > theta
    window = ((pre - theta).abs() < eps / 2).double()
    assert torch.equal(codes, torch.where(above, pre, 0))
    assert penalty.item() == pytest.approx(coef * float(above.sum(1).double().mean()))
    assert torch.equal(grad, weights * above)
    expected_theta_grad = (-(theta / eps) * window * weights).sum(0) + (-(coef / eps) * window / B).sum(0)
    assert torch.allclose(mechanism.threshold.grad, expected_theta_grad)


def test_matryoshka_codes_are_batchtopk_codes():
    matryoshka = make_mechanism("matryoshka-batchtopk", N, k=2, threshold_decay=0.9).double().train()
    batchtopk = make_mechanism("batchtopk", N, k=2, threshold_decay=0.9).double().train()
    for seed in (0, 1):
        assert torch.equal(matryoshka(pre_activations(seed)), batchtopk(pre_activations(seed)))
    assert torch.equal(matryoshka.threshold, batchtopk.threshold)
    matryoshka.eval(), batchtopk.eval()
    assert torch.equal(matryoshka(pre_activations(2)), batchtopk(pre_activations(2)))
    assert matryoshka.widths == (round(0.0625 * N), round(0.25 * N))


def test_matryoshka_loss_and_gradients_match_reference():
    """Every nested prefix of the dictionary reconstructs the input alone, each with its
    own squared error over the batch variance (Bussmann et al. 2025), on BatchTopK codes."""
    from diffdict.dictionaries import SparseAutoencoder

    d, k, variance, widths = 5, 2, 1.7, (3, 6, N)
    sae = SparseAutoencoder(d, N, mechanism="matryoshka-batchtopk",
                            mechanism_options={"k": k, "prefix_fractions": [0.25, 0.5]}, seed=4).double().train()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(N, generator=generator, dtype=torch.float64) * 0.1)
        sae.b_dec.copy_(torch.randn(d, generator=generator, dtype=torch.float64) * 0.1)
    x = torch.randn(B, d, generator=generator, dtype=torch.float64)
    loss = sae.training_forward(x, variance).loss
    loss.backward()

    params = {name: p.detach().clone().requires_grad_() for name, p in
              [("W_enc_t", sae.W_enc_t), ("b_enc", sae.b_enc), ("W_dec", sae.W_dec), ("b_dec", sae.b_dec)]}
    acts = ((x - params["b_dec"]) @ params["W_enc_t"].t() + params["b_enc"]).relu()
    codes = acts * (acts >= acts.flatten().topk(k * B).values[-1])
    reference = sum(((codes[:, :w] @ params["W_dec"][:w] + params["b_dec"]) - x).pow(2).sum() for w in widths)
    reference = reference / (B * variance)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for name, param in params.items():
        assert torch.allclose(getattr(sae, name).grad, param.grad, atol=1e-12), name


def test_bad_options_are_one_line_errors():
    with pytest.raises(DiffdictError, match="k = 20 is larger than the dictionary width 12"):
        make_mechanism("topk", N, k=20)
    with pytest.raises(DiffdictError, match="bad k .*: expected an integer >= 1"):
        make_mechanism("batchtopk", N, k=0)
    with pytest.raises(DiffdictError, match="l1 must be >= 0"):
        make_mechanism("relu-l1", N, l1=-1)
    with pytest.raises(DiffdictError, match=r"prefix_fractions \[0.5, 0.25\] give the prefix widths \[6, 3\]"):
        make_mechanism("matryoshka-batchtopk", N, k=2, prefix_fractions=[0.5, 0.25])
    with pytest.raises(DiffdictError, match="prefix_fractions must be one or more numbers in \\(0, 1\\)"):
        make_mechanism("matryoshka-batchtopk", N, k=2, prefix_fractions=[1.5])
