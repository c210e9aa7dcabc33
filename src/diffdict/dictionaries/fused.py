"""The TopK encoder with a sparse backward, and the sparse decoder.

Shapes: B tokens, d input width, n features, k codes per token.

A plain-autograd TopK SAE spends most of its time on n-wide work: the dense
(B, n) gradient of the pre-activations and two more (B, n) × (n, d) matmuls in the
backward. Only B·k entries of that gradient are non-zero, so here the only n-wide work
left is the forward encoder matmul (in bf16 when asked) and the top-k over its output:

* encoder gradient: ∂W_encᵀ[i] = Σ_{(b, j): idx[b, j] = i} g[b, j] · x_c[b] — the (b, j)
  pairs are sorted by feature and summed with one ``embedding_bag`` (B·k·d work);
* ∂b_enc is a scatter-add of g; ∂b_dec through the encoder is −∂b_encᵀ W_encᵀ (one
  (n,) × (n, d) product) because every token subtracts the same b_dec;
* decode is ``embedding_bag`` over the k selected decoder rows, with the same kind of
  sparse backward (``SparseDecode``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (CUDA with bf16, or a
    CPU with AVX512-BF16 or AMX). Elsewhere bf16 is emulated: on an AVX2 CPU the toy
    scale's encoder matmul takes 25 ms in bf16 against 1.8 in float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _stable_argsort(keys: Tensor, n: int) -> Tensor:
    """Stable argsort of feature indices in [0, n)."""
    # torch's parallel CPU sort is slow for small inputs when the cores are busy. numpy
    # sorts 16-bit integers stably with a radix sort: 0.05 ms for B·k = 10k keys against
    # 0.4 ms for the same keys as int64.
    if keys.device.type == "cpu":
        keys = keys.numpy()
        if n <= np.iinfo(np.uint16).max + 1:
            keys = keys.astype(np.uint16)
        return torch.from_numpy(np.argsort(keys, kind="stable"))
    return torch.argsort(keys, stable=True)


def _row_topk_indices(rows: Tensor, k: int) -> Tensor:
    """Indices of the k largest entries of each row, unsorted (on CPU, in column order)."""
    if rows.device.type != "cpu":
        return rows.topk(k, dim=1, sorted=False).indices
    array = rows.float().numpy() if rows.dtype != torch.float32 else rows.numpy()
    m = array.shape[1]
    # The k-th largest value of each row by numpy's value-only introselect, then the
    # entries above it and, of those equal to it, the first ones in column order: 3 to 5x
    # faster than argpartition or torch's CPU top-k for rows of 64 to 640. Ties at the k-th
    # value are common in bf16 (8 bits of mantissa); only a NaN sends the rows to argpartition.
    kth = np.partition(array, m - k, axis=1)[:, m - k: m - k + 1]
    chosen = array >= kth
    tied = np.flatnonzero(np.count_nonzero(chosen, axis=1) != k)
    if tied.size:
        rows_tied, kth_tied = array[tied], kth[tied]
        above, equal = rows_tied > kth_tied, rows_tied == kth_tied
        wanted = k - np.count_nonzero(above, axis=1, keepdims=True)
        chosen[tied] = above | (equal & (np.cumsum(equal, axis=1) <= wanted))
    if (np.count_nonzero(chosen, axis=1) == k).all():
        return torch.from_numpy(np.flatnonzero(chosen).reshape(-1, k) % m)
    return torch.from_numpy(np.argpartition(array, m - k, axis=1)[:, -k:])


def scatter_rows_sum(indices: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """out[i] = Σ_{(b, j): indices[b, j] = i} weights[b, j] · rows[b]: (B, m), (B, m), (B, d) -> (n, d)."""
    B, m = indices.shape
    flat = indices.reshape(-1)
    order = _stable_argsort(flat, n)
    counts = torch.bincount(flat, minlength=n)
    offsets = torch.zeros(n, dtype=torch.long, device=flat.device)
    torch.cumsum(counts[:-1], 0, out=offsets[1:])
    token_of_pair = torch.div(order, m, rounding_mode="floor")
    return F.embedding_bag(
        token_of_pair, rows, offsets, mode="sum", per_sample_weights=weights.reshape(-1)[order].to(rows.dtype)
    )


def topk_rows(pre: Tensor, k: int, groups: int | None = None) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row of pre (B, n), unsorted: (values, indices).

    Faster than ``pre.topk`` for wide rows: column j belongs to group j mod (n / groups);
    a row's k largest entries lie in the k groups with the largest maxima (each group
    ranked above one holding a top-k entry holds a larger entry), so only those
    k · groups candidates are searched. ``groups`` (default: the most of 8, 4 or 2 that
    leaves groups of at least 4k columns) 1: whole rows. Equal values may come back
    under other indices.
    """
    B, n = pre.shape
    if groups is None:
        groups = next((g for g in (8, 4, 2) if n % g == 0 and n // g >= 4 * k), 1)
    width = n // groups
    if groups == 1 or n % groups or width < k:
        where = _row_topk_indices(pre, k)
        return pre.gather(1, where), where
    maxima = pre.view(B, groups, width).amax(1)  # (B, width)
    best = _row_topk_indices(maxima, k)  # (B, k)
    columns = (best.unsqueeze(2) + width * torch.arange(groups, device=pre.device)).view(B, k * groups)
    candidates = pre.gather(1, columns)
    where = _row_topk_indices(candidates, k)
    return candidates.gather(1, where), columns.gather(1, where)


class TopKEncoder(torch.autograd.Function):
    """values, indices = top-k over features of ReLU((x − b_dec) W_enc + b_enc).

    Inputs: x (B, d); b_dec (d,) or None (SAE Lens ``apply_b_dec_to_input=False``);
    W_enc_t (n, d), the encoder with one contiguous row per feature; b_enc (n,);
    k; bf16: run the encoder matmul in bfloat16 (fp32 accumulation).
    Outputs: values (B, k) float32 ≥ 0, indices (B, k) int64 (not differentiable).
    """

    @staticmethod
    def forward(ctx, x: Tensor, b_dec: Tensor | None, W_enc_t: Tensor, b_enc: Tensor, k: int, bf16: bool):
        x_c = x - b_dec if b_dec is not None else x
        if bf16:
            pre = torch.addmm(b_enc.bfloat16(), x_c.bfloat16(), W_enc_t.bfloat16().t())  # (B, n)
        else:
            pre = torch.addmm(b_enc, x_c, W_enc_t.t())  # (B, n)
        values, indices = topk_rows(pre, k)  # (B, k)
        values = values.float().relu_()
        ctx.save_for_backward(x_c, W_enc_t, indices, values)
        ctx.has_b_dec = b_dec is not None
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices):
        x_c, W_enc_t, indices, values = ctx.saved_tensors
        n = W_enc_t.shape[0]
        g = grad_values * (values > 0)  # (B, k): ReLU'd codes pass no gradient
        grad_x = grad_b_dec = grad_W = grad_b_enc = None
        needs_x, needs_b_dec, needs_W, needs_b_enc = ctx.needs_input_grad[:4]
        if needs_b_enc or needs_b_dec:
            grad_b_enc = torch.zeros(n, dtype=g.dtype, device=g.device).index_add_(0, indices.reshape(-1), g.reshape(-1))
        if needs_W:
            grad_W = scatter_rows_sum(indices, g, x_c, n)  # (n, d)
        if needs_x:
            grad_x = F.embedding_bag(indices, W_enc_t, mode="sum", per_sample_weights=g)  # (B, d)
        if needs_b_dec and ctx.has_b_dec:
            grad_b_dec = -(grad_b_enc @ W_enc_t)  # (d,)
        return grad_x, grad_b_dec, grad_W, (grad_b_enc if needs_b_enc else None), None, None


def topk_encode(x: Tensor, b_dec: Tensor | None, W_enc_t: Tensor, b_enc: Tensor, k: int, bf16: bool = False):
    """(values (B, k), indices (B, k)) with the sparse backward of :class:`TopKEncoder`."""
    return TopKEncoder.apply(x, b_dec, W_enc_t, b_enc, k, bf16)


def gathered_dot(rows: Tensor, table: Tensor, indices: Tensor) -> Tensor:
    """out[b, j] = ⟨rows[b], table[indices[b, j]]⟩: (B, d), (n, d), (B, m) -> (B, m)."""
    B, m = indices.shape
    flat = indices.reshape(-1)
    offsets = torch.arange(0, B * m, m, device=flat.device)
    bag_of_pair = torch.arange(B, device=flat.device).repeat_interleave(m)
    # The kernel behind embedding_bag's per-sample-weight gradient is exactly this
    # gathered dot product, without materialising the (B, m, d) rows.
    out = torch.ops.aten._embedding_bag_per_sample_weights_backward(rows, table, flat, offsets, bag_of_pair, 0, -1)
    return out.view(B, m)


class SparseDecode(torch.autograd.Function):
    """Σ_j values[b, j] · W_dec[indices[b, j]]: (B, m), (B, m), (n, d) -> (B, d).

    Backward: ∂values[b, j] = ⟨g[b], W_dec[indices[b, j]]⟩ (gathered dot products) and
    ∂W_dec[i] = Σ_{(b, j): indices[b, j] = i} values[b, j] · g[b] (sorted segment sums);
    torch's own embedding_bag backward sorts with a parallel sort that stalls on busy cores.
    """

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = gathered_dot(grad, W_dec, indices) if ctx.needs_input_grad[0] else None
        grad_W = scatter_rows_sum(indices, values, grad, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_W


def sparse_decode(values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Σ_j values[b, j] · W_dec[indices[b, j]] (repeated indices in a row add up)."""
    return SparseDecode.apply(values.to(W_dec.dtype), indices, W_dec)
