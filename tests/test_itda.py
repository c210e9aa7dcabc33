"""ITDA: pursuit against naive per-token loops, the build rule, labels, save/load; MLP
neurons as a dictionary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffdict.dictionaries import (
    ITDA,
    NeuronDictionary,
    SparseCodes,
    gradient_pursuit,
    load_dictionary,
    matching_pursuit,
)
from diffdict.errors import DiffdictError

D = 10


def unit_atoms(m: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    atoms = torch.randn(m, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return atoms / atoms.norm(dim=1, keepdim=True)


def naive_matching_pursuit(x, atoms, l0):
    values, indices = [], []
    for token in x:
        residual, vs, ix = token.clone(), [], []
        for _ in range(l0):
            corr = atoms @ residual
            j = int(corr.abs().argmax())
            vs.append(float(corr[j]))
            ix.append(j)
            residual = residual - corr[j] * atoms[j]
        values.append(vs)
        indices.append(ix)
    return torch.tensor(values, dtype=x.dtype), torch.tensor(indices)


@pytest.mark.parametrize("use_gram", [True, False])
def test_matching_pursuit_equals_naive_loop(use_gram):
    atoms = unit_atoms(30)
    x = torch.randn(12, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    codes = matching_pursuit(x, atoms, 6, atoms @ atoms.t() if use_gram else None)
    values, indices = naive_matching_pursuit(x, atoms, 6)
    assert torch.equal(codes.indices, indices)
    assert torch.allclose(codes.values, values, atol=1e-10)


def test_gradient_pursuit_is_nonnegative_and_matches_naive_step():
    atoms = unit_atoms(30)
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = [(x - SparseCodes(*gradient_pursuit(x, atoms, l0)).to_dense(30) @ atoms).pow(2).sum(1) for l0 in (1, 2, 4)]
    assert errors[1].le(errors[0] + 1e-9).all() and errors[2].le(errors[1] + 1e-9).all()
    codes = gradient_pursuit(x, atoms, 4)
    assert (codes.values >= 0).all()
    # One token by hand: two steps of pick-the-best, exact line search, clip at zero.
    token = x[0]
    support, coef = [], torch.zeros(0, dtype=torch.float64)
    residual = token.clone()
    for _ in range(2):
        support.append(int((atoms @ residual).argmax()))
        chosen = atoms[support]
        coef = torch.cat([coef, torch.zeros(1, dtype=torch.float64)])
        grad = chosen @ residual
        step = grad.dot(grad) / (grad @ chosen).pow(2).sum()
        coef = (coef + step * grad).clamp(min=0)
        residual = token - coef @ chosen
    two = gradient_pursuit(x[:1], atoms, 2)
    assert two.indices[0].tolist() == support
    assert torch.allclose(two.values[0], coef)


def test_build_adds_poorly_reconstructed_activations_with_labels():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, D, generator=gen)
    itda = ITDA(D, l0=3, tau=0.4, chunk_tokens=32)
    token_ids = torch.arange(1000, 1300)
    recon = itda.build_step(x, {"token": token_ids})
    error = (x - recon).pow(2).sum(1) / x.pow(2).sum(1)
    m = itda.n_features
    assert 0 < m < 300
    assert torch.allclose(itda.atoms.norm(dim=1), torch.ones(m), atol=1e-6)
    rows = itda.labels["token"] - 1000
    # every atom is a normalised training activation that was poorly reconstructed
    assert torch.allclose(itda.atoms, x[rows] / x[rows].norm(dim=1, keepdim=True), atol=1e-6)
    assert (error[rows] > 0.4).all()
    others = torch.ones(300, dtype=torch.bool)
    others[rows] = False
    assert (error[others] <= 0.4).all()


def test_itda_save_load_and_max_atoms(tmp_path):
    x = torch.randn(200, D, generator=torch.Generator().manual_seed(4))
    labels = {name: torch.arange(200) * i for i, name in enumerate(["prompt_id", "step", "row", "col"])}
    itda = ITDA(D, l0=4, tau=0.2, pursuit="gp", max_atoms=25)
    itda.build_step(x, labels)
    assert itda.n_features == 25
    itda.save(tmp_path / "itda")
    loaded = load_dictionary(tmp_path / "itda")
    assert isinstance(loaded, ITDA) and loaded.config() == itda.config()
    assert torch.equal(loaded.atoms, itda.atoms)
    assert all(torch.equal(loaded.labels[k], itda.labels[k]) for k in labels)
    assert torch.allclose(loaded(x), itda(x), atol=1e-6)
    assert loaded.encode(x).shape == (200, 25)


def test_itda_bad_input():
    with pytest.raises(DiffdictError, match="tau is a normalised error"):
        ITDA(D, tau=2.0)
    with pytest.raises(DiffdictError, match="unknown ITDA pursuit 'omp'"):
        ITDA(D, pursuit="omp")
    itda = ITDA(D, atoms=unit_atoms(5, dtype=torch.float32))
    with pytest.raises(DiffdictError, match=r"expects \(tokens, 10\)"):
        itda.encode(torch.zeros(3, D + 1))


def test_mlp_neurons_as_a_dictionary(tmp_path):
    torch.manual_seed(0)
    up, down = nn.Linear(D, 40), nn.Linear(40, D)
    h = torch.randn(7, D)
    activations = nn.functional.gelu(up(h), approximate="tanh")
    full = NeuronDictionary(down.weight, down.bias, W_in=up.weight, b_in=up.bias)
    assert torch.allclose(full(h), down(activations), atol=1e-5)
    assert torch.allclose(full.decoder_directions, down.weight.t())

    top = NeuronDictionary(down.weight, down.bias, k=5, W_in=up.weight, b_in=up.bias)
    values, indices = activations.topk(5, dim=1)
    expected = (values.unsqueeze(2) * down.weight.t()[indices]).sum(1) + down.bias
    assert torch.allclose(top(h), expected, atol=1e-5)
    assert torch.allclose(top.decode(top.encode_activations(activations)), expected, atol=1e-5)

    top.save(tmp_path / "neurons")
    loaded = load_dictionary(tmp_path / "neurons")
    assert isinstance(loaded, NeuronDictionary) and torch.allclose(loaded(h), expected, atol=1e-5)
    with pytest.raises(DiffdictError, match=r"bad k .*: expected an integer in 1\.\.40 \(the number of neurons\)"):
        NeuronDictionary(down.weight, k=41)
    captured_only = NeuronDictionary(down.weight, down.bias, k=5)
    with pytest.raises(DiffdictError, match="no input projection"):
        captured_only.encode(h)
