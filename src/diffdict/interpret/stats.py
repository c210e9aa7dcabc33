"""Feature statistics in one streaming pass over an activation store.

:func:`compute_activation_stats` reads a site in blocks of whole prompts, encodes each
block, and keeps per feature: the :mod:`diffdict.feature_stats` statistics (``base``), a
histogram of its non-zero activations on fixed log10 bins, and the top-N images ranked by
the ``max`` or ``mean`` over the image's token grid, with the image's activation map (the
feature's code per cell, averaged over the captured steps). An image is a candidate only if
its score is positive and the feature fires on at least ``min_active`` of its cells.

Everything is done on the sparse codes, merged into a running top-N kept as tensors whose
slots stay in place (new examples take the slots of the ones they evict): no per-feature
Python loop, no copying of maps; slots are sorted once at the end. Memory for the result:
``n * (N * (8 + 2 * rows * cols) + 8 * bins)`` bytes (about 0.9 GB for 50k features, N=16,
a 16x16 grid: pass ``keep_maps=False`` or a smaller N for more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from diffdict.capture import capture_mode_of
from diffdict.errors import DiffdictError, require_int
from diffdict.feature_stats import FeatureStats as BaseStats
from diffdict.feature_stats import (FeatureStatsAccumulator, coalesced_entries, encode_codes, load_feature_stats,
                                    save_feature_stats, site_space)
from diffdict.io import load_tensors, read_json, save_tensors, weights_fingerprint, write_json

RANK_BY = ("max", "mean")
HIST_LO, HIST_HI, HIST_BINS = -4.0, 4.0, 64
HIST_EDGES = torch.linspace(HIST_LO, HIST_HI, HIST_BINS + 1, dtype=torch.float64)  # log10 |activation|
STATS_TENSORS = "stats.safetensors"
STATS_JSON = "stats.json"
_SETTINGS = ("site", "grid", "n_features", "num_tokens", "num_images", "rank_by", "top_n", "min_active")
_TENSORS = ("hist", "neg_count", "top_scores", "top_prompts", "top_maps", "prompt_offsets")  # the last two optional


@dataclass
class Example:
    """One top-activating image of a feature."""

    prompt_id: int
    score: float
    map: np.ndarray  # (rows, cols) float32 activation map
    prompt: str | None = None
    image: np.ndarray | None = None  # (H, W, 3) uint8

    def to_json(self) -> dict:
        return {"prompt_id": self.prompt_id, "score": self.score, "prompt": self.prompt}


@dataclass
class ActivationStats:
    """Result of :func:`compute_activation_stats` (see the module docstring)."""

    site: str
    grid: tuple[int, int]
    n_features: int
    num_tokens: int
    num_images: int
    rank_by: str
    top_n: int
    min_active: int
    base: "BaseStats"  # diffdict.feature_stats.FeatureStats: count, frequency, mean/max activation
    hist: Tensor  # (n, HIST_BINS) int64 counts of |non-zero activations| on log10 bins
    neg_count: Tensor  # (n,) int64 negative activations (signed dictionaries)
    top_scores: Tensor  # (n, N) float32, descending, -inf where empty
    top_prompts: Tensor  # (n, N) int64, -1 where empty
    top_maps: Tensor | None  # (n, N, rows, cols) float16
    prompt_offsets: Tensor | None = None  # (num_prompts + 1,) int64 first token of each prompt
    extra: dict = field(default_factory=dict)

    @property
    def fire_count(self) -> Tensor:
        return self.base.count

    @property
    def frequency(self) -> Tensor:
        return self.base.frequency

    @property
    def mean_activation(self) -> Tensor:
        return self.base.mean_activation

    @property
    def act_max(self) -> Tensor:
        return self.base.max_activation

    def num_examples(self, feature: int) -> int:
        return int((self.top_prompts[feature] >= 0).sum())

    def top_examples(self, feature: int, limit: int | None = None) -> list[Example]:
        require_int(feature, "feature", 0, self.n_features - 1, f" (the dictionary has {self.n_features} features)")
        out = []
        for j in range(self.top_n if limit is None else min(limit, self.top_n)):
            pid = int(self.top_prompts[feature, j])
            if pid < 0:
                break
            amap = self.top_maps[feature, j].float().numpy() if self.top_maps is not None else None
            out.append(Example(pid, float(self.top_scores[feature, j]), amap))
        return out

    def feature_summary(self, feature: int) -> dict:
        return {
            "feature": int(feature),
            "frequency": float(self.frequency[feature]),
            "fire_count": int(self.fire_count[feature]),
            "mean_activation": float(self.mean_activation[feature]),
            "max_activation": float(self.act_max[feature]),
            "num_examples": self.num_examples(feature),
        }

    def histogram(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts, activation bin edges) of the occupied part of the feature's histogram."""
        counts = self.hist[feature].numpy()
        edges = (10.0 ** HIST_EDGES).numpy()
        nz = np.nonzero(counts)[0]
        if not len(nz):
            return counts[:0], edges[:1]
        lo, hi = nz[0], nz[-1] + 1
        return counts[lo:hi], edges[lo:hi + 1]

    def settings(self) -> dict:
        return {**{k: getattr(self, k) for k in _SETTINGS}, "grid": list(self.grid),
                "hist_log10_range": [HIST_LO, HIST_HI, HIST_BINS], **self.extra}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        save_feature_stats(folder, self.base)
        save_tensors(folder / STATS_TENSORS, {k: getattr(self, k) for k in _TENSORS if getattr(self, k) is not None})
        write_json(folder / STATS_JSON, self.settings())

    @classmethod
    def load(cls, folder: str | Path) -> "ActivationStats":
        folder = Path(folder)
        base = load_feature_stats(folder)
        info = read_json(folder / STATS_JSON)
        t = load_tensors(folder / STATS_TENSORS)
        try:
            settings = {k: info[k] for k in _SETTINGS}
            tensors = {k: t[k] if k in _TENSORS[:4] else t.get(k) for k in _TENSORS}
        except KeyError as error:
            raise DiffdictError(f"{folder} holds incomplete feature statistics (missing {error})") from None
        extra = {k: v for k, v in info.items() if k not in (*_SETTINGS, "hist_log10_range")}
        return cls(**settings | {"grid": tuple(info["grid"])}, base=base, **tensors, extra=extra)


@torch.no_grad()
def sparse_entries(dictionary, x: Tensor, space: str = "dense", accumulator: FeatureStatsAccumulator | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The :func:`~diffdict.feature_stats.coalesced_entries` (token, feature, value) of a batch."""
    codes = encode_codes(dictionary, x.float(), space)
    token, feature, value = coalesced_entries(codes._replace(values=codes.values.float()), dictionary.n_features)
    if accumulator is not None:
        accumulator.add(x.shape[0], feature, value)
    return token, feature, value


def iter_prompt_blocks(store, site: str, block_tokens: int) -> Iterator[tuple[int, Tensor, dict]]:
    """(first token, acts, meta) blocks of ``site`` that hold whole prompts (a prompt's
    tokens are consecutive in a store: prompt, then step, then position)."""
    total = store.num_tokens(site)
    block_start = start = 0
    x = m = None  # read, not yet yielded
    while start < total:
        stop = min(start + block_tokens, total)
        chunk, meta = store.read(site, start, stop)
        chunk_m = torch.stack([meta[k].long() for k in ("prompt_id", "step", "row", "col")], 1)
        x, m = (chunk, chunk_m) if x is None else (torch.cat([x, chunk]), torch.cat([m, chunk_m]))
        start = stop
        cut = x.shape[0]
        if start < total:  # the last prompt may go on in the next read: keep it back
            earlier = (m[:, 0] != m[-1, 0]).nonzero()
            if not earlier.numel():  # one prompt larger than the block: keep reading
                continue
            cut = int(earlier.max()) + 1
        yield block_start, x[:cut], {"prompt_id": m[:cut, 0], "step": m[:cut, 1], "row": m[:cut, 2], "col": m[:cut, 3]}
        block_start += cut
        x, m = x[cut:], m[cut:]


class _TopN:
    """Running top-N per feature with slots kept in place (see the module docstring)."""

    def __init__(self, n: int, top_n: int, cells: int, keep_maps: bool):
        self.n, self.N, self.cells = n, top_n, cells
        self.scores = torch.full((n, top_n), -math.inf)
        self.prompts = torch.full((n, top_n), -1, dtype=torch.long)
        self.maps = torch.zeros(n, top_n, cells, dtype=torch.float16) if keep_maps else None

    def merge(self, f: Tensor, p: Tensor, s: Tensor, pid_of: Tensor, cell_entries) -> None:
        """Candidates: feature f, block-local image p, score s (one per (f, p)).
        ``cell_entries``: (p, cell, f, value) of the block, to fill the maps of new entries."""
        if f.numel() == 0:
            return
        N = self.N
        # sort by (feature, score desc); keep each feature's best N candidates
        order = torch.argsort(-s, stable=True)
        order = order[torch.argsort(f[order], stable=True)]
        f, p, s = f[order], p[order], s[order]
        feats, counts = torch.unique_consecutive(f, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(f.numel()) - torch.repeat_interleave(starts, counts)
        group = torch.repeat_interleave(torch.arange(feats.numel()), counts)
        keep = rank < N
        f, p, s, rank, group = f[keep], p[keep], s[keep], rank[keep], group[keep]
        A = feats.numel()
        cand_s = torch.full((A, N), -math.inf)
        cand_p = torch.full((A, N), -1, dtype=torch.long)
        cand_s[group, rank] = s
        cand_p[group, rank] = p
        cur_s = self.scores[feats]
        comb = torch.cat([cur_s, cand_s], 1)
        sel = comb.topk(N, dim=1).indices  # (A, N) positions in [0, 2N)
        # a chosen candidate is new and real (padding is -inf and never displaces anything)
        is_new = (sel >= N) & torch.isfinite(comb.gather(1, sel))
        count = is_new.sum(1)
        if not bool(count.any()):
            return
        kept = torch.zeros(A, 2 * N, dtype=torch.bool).scatter_(1, sel, True)[:, :N]
        evicted_slots = torch.argsort(kept.to(torch.int8), dim=1, stable=True)  # evicted (False) first
        new_first = torch.argsort((~is_new).to(torch.int8), dim=1, stable=True)
        new_pos = sel.gather(1, new_first) - N  # first `count` entries: chosen candidates
        r = torch.arange(N).unsqueeze(0).expand(A, N)
        valid = r < count.unsqueeze(1)
        rows = torch.arange(A).unsqueeze(1).expand(A, N)[valid]
        slots = evicted_slots[valid]
        cands = new_pos[valid]
        feat_idx = feats[rows]
        local_p = cand_p[rows, cands]
        self.scores[feat_idx, slots] = cand_s[rows, cands]
        self.prompts[feat_idx, slots] = pid_of[local_p]
        if self.maps is None:
            return
        self.maps[feat_idx, slots] = 0
        # fill the maps of the new (feature, image) pairs from the block's cell entries
        e_p, e_cell, e_f, e_v = cell_entries
        n_local = int(pid_of.numel())
        assign_key = feat_idx * n_local + local_p
        key_order = torch.argsort(assign_key)
        assign_key, slot_sorted, feat_sorted = assign_key[key_order], slots[key_order], feat_idx[key_order]
        entry_key = e_f * n_local + e_p
        pos = torch.searchsorted(assign_key, entry_key).clamp_max(assign_key.numel() - 1)
        match = assign_key[pos] == entry_key
        if bool(match.any()):
            pos = pos[match]
            self.maps[feat_sorted[pos], slot_sorted[pos], e_cell[match]] = e_v[match].to(torch.float16)

    def finish(self) -> None:
        order = torch.argsort(self.scores, dim=1, descending=True, stable=True)
        self.scores = self.scores.gather(1, order)
        self.prompts = self.prompts.gather(1, order)
        if self.maps is not None:
            step = 4096
            for a in range(0, self.n, step):
                b = min(a + step, self.n)
                self.maps[a:b] = self.maps[a:b].gather(1, order[a:b].unsqueeze(-1).expand(-1, -1, self.cells))


@torch.no_grad()
def compute_activation_stats(store, dictionary, site: str, top_n: int = 16, rank_by: str = "max", min_active: int = 1,
                             block_tokens: int = 16384, keep_maps: bool = True,
                             progress: Callable[[int, int], None] | None = None) -> ActivationStats:
    """One streaming pass over ``site`` of ``store``; see the module docstring."""
    if rank_by not in RANK_BY:
        raise DiffdictError(f"unknown ranking {rank_by!r}; expected one of {', '.join(RANK_BY)}")
    require_int(top_n, "top-N")
    require_int(min_active, "min_active")
    space = site_space(dictionary, store.d(site), f"site {site!r} of store {store.path}")
    n = dictionary.n_features
    rows, cols = store.grid(site)
    cells = rows * cols
    total = store.num_tokens(site)
    acc = FeatureStatsAccumulator(n)
    neg = torch.zeros(n, dtype=torch.long)
    hist = torch.zeros(n * HIST_BINS, dtype=torch.long)
    top = _TopN(n, top_n, cells, keep_maps)
    offsets = torch.full((store.num_prompts + 1,), -1, dtype=torch.long)
    images = 0
    was_training = dictionary.training
    dictionary.eval()
    try:
        for start, x, meta in iter_prompt_blocks(store, site, block_tokens):
            pid, cell = meta["prompt_id"], meta["row"] * cols + meta["col"]
            uniq, local, per_prompt = torch.unique_consecutive(pid, return_inverse=True, return_counts=True)
            firsts = torch.cumsum(per_prompt, 0) - per_prompt
            offsets[uniq] = start + firsts
            images += uniq.numel()
            steps_per_image = per_prompt.double() / cells  # tokens / cells: captured steps
            tok, f, v = sparse_entries(dictionary, x, space, acc)
            negative = v < 0
            neg.index_add_(0, f[negative], torch.ones_like(f[negative]))
            a = v.abs()
            ok = a > 0
            b = ((torch.log10(a[ok].double()) - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS).floor().long()
            hist.index_add_(0, f[ok] * HIST_BINS + b.clamp(0, HIST_BINS - 1), torch.ones_like(b))
            # coalesce per (image, cell, feature): the map averaged over steps
            p_e = local[tok]
            key = (p_e * cells + cell[tok]) * n + f
            ukey, inv = torch.unique(key, return_inverse=True)
            mv = torch.zeros(ukey.numel(), dtype=torch.float64).index_add_(0, inv, v.double() / steps_per_image[p_e])
            mv = mv.float()
            m_f = ukey % n
            m_pc = ukey // n
            m_p, m_cell = m_pc // cells, m_pc % cells
            # per (image, feature): score and active cells
            key2 = m_p * n + m_f
            ukey2, inv2 = torch.unique(key2, return_inverse=True)
            if rank_by == "max":
                score = torch.zeros(ukey2.numel()).scatter_reduce_(0, inv2, mv, "amax", include_self=False)
            else:
                score = torch.zeros(ukey2.numel(), dtype=torch.float64).index_add_(0, inv2, mv.double()).float() / cells
            active = torch.zeros(ukey2.numel(), dtype=torch.long).index_add_(0, inv2, (mv > 0).long())
            good = (score > 0) & (active >= min_active)
            c_f, c_p = (ukey2 % n)[good], (ukey2 // n)[good]
            top.merge(c_f, c_p, score[good], uniq, (m_p, m_cell, m_f, mv))
            if progress is not None:
                progress(start + x.shape[0], total)
    finally:
        dictionary.train(was_training)
    top.finish()
    offsets[-1] = total
    settings = store.settings or {}
    base = acc.result(dictionary_kind=dictionary.kind, dictionary=weights_fingerprint(dictionary.state_tensors()), site=site,
                      what=capture_mode_of(settings.get("capture")), model=settings.get("model"),
                      store=str(store.path), store_digest=store.digest, grid=[rows, cols], space=space)
    return ActivationStats(
        site=site, grid=(rows, cols), n_features=n, num_tokens=total, num_images=images, rank_by=rank_by,
        top_n=top_n, min_active=min_active, base=base,
        hist=hist.view(n, HIST_BINS), neg_count=neg, top_scores=top.scores, top_prompts=top.prompts,
        top_maps=top.maps.view(n, top_n, rows, cols) if top.maps is not None else None, prompt_offsets=offsets,
    )


@torch.no_grad()
def activation_maps(store, dictionary, site: str, prompt_ids: list[int], stats: ActivationStats | None = None) -> Tensor:
    """Dense activation maps (len(prompt_ids), n_features, rows, cols) of a few prompts,
    averaged over their captured steps (for browsing; reads only those prompts' tokens)."""
    rows, cols = store.grid(site)
    out = torch.zeros(len(prompt_ids), dictionary.n_features, rows * cols)
    for i, pid in enumerate(prompt_ids):
        offsets = stats.prompt_offsets if stats is not None else None
        if offsets is None:
            raise DiffdictError("activation maps need the prompt offsets recorded by compute_feature_stats")
        if not 0 <= pid < offsets.numel() - 1 or int(offsets[pid]) < 0:
            raise DiffdictError(f"no tokens recorded for prompt {pid}")
        later = offsets[pid + 1:]
        x, meta = store.read(site, int(offsets[pid]), int(later[later >= 0][0]))
        tok, f, v = sparse_entries(dictionary, x, site_space(dictionary, store.d(site)))
        cell = (meta["row"].long() * cols + meta["col"].long())[tok]
        steps = max(x.shape[0] / (rows * cols), 1.0)
        out[i].index_put_((f, cell), v / steps, accumulate=True)
    return out.view(len(prompt_ids), dictionary.n_features, rows, cols)

