"""What every benchmark metric reads: each token's and image's ground-truth concepts (from
the prompt's generated image: a token has a concept covering at least ``TOKEN_SHARE`` of its
cell, an image one covering at least ``MIN_IMAGE_PIXELS`` pixels) and a dictionary's non-zero
codes on the same tokens. Prompts are split by a seeded permutation: choices are made on the
*selection* half and scored on the *test* half, so a random feature scores at chance and not
at the best of many noisy tries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffdict.interpret.groundtruth import CONCEPTS, grid_coverage, pixel_concepts, require_prompts_and_images

#: the concepts the benchmark scores: every value of every family (not object / background)
BENCH_CONCEPTS: list[str] = [c for c in CONCEPTS if ":" in c]
OBJECT_INDEX, BACKGROUND_INDEX = CONCEPTS.index("object"), CONCEPTS.index("background")
MIN_IMAGE_PIXELS = 4
TOKEN_SHARE = 0.5


@dataclass
class GroundTruth:
    """Concepts of a store's site: ``grid`` (P, len(CONCEPTS), rows*cols) bool per prompt
    and token position, ``image`` (P, len(CONCEPTS)) bool, and the prompt split."""

    grid: Tensor
    image: Tensor
    selection: Tensor  # (P,) bool: the prompt is in the selection half
    rows: int
    cols: int


def ground_truth(store, site: str, seed: int = 0, batch: int = 128) -> GroundTruth:
    """The ground truth of every prompt of ``store`` at ``site``'s token grid."""
    prompts = require_prompts_and_images(store, "the benchmark")
    rows, cols = store.grid(site)
    n = len(prompts)
    grid = torch.zeros(n, len(CONCEPTS), rows * cols, dtype=torch.bool)
    image = torch.zeros(n, len(CONCEPTS), dtype=torch.bool)
    for start in range(0, n, batch):
        ids = list(range(start, min(start + batch, n)))
        for p, picture in zip(ids, store.images(ids)):
            masks = pixel_concepts(picture, prompts[p])
            image[p] = torch.from_numpy(masks.reshape(len(CONCEPTS), -1).sum(1) >= MIN_IMAGE_PIXELS)
            grid[p] = torch.from_numpy(grid_coverage(masks, (rows, cols)).reshape(len(CONCEPTS), -1) >= TOKEN_SHARE)
    order = np.random.default_rng([seed, 11]).permutation(n)
    selection = torch.zeros(n, dtype=torch.bool)
    selection[torch.from_numpy(order[: n // 2])] = True
    return GroundTruth(grid, image, selection, rows, cols)


@dataclass
class Codes:
    """A dictionary's non-zero codes on the site's tokens as flat entries (token, feature,
    value > 0), and each token's prompt and grid position. ``image_max`` (P, n) is each
    feature's largest code over a prompt's tokens and steps."""

    token: Tensor
    feature: Tensor
    value: Tensor
    prompt: Tensor
    position: Tensor
    image_max: Tensor
    n_features: int

    @property
    def num_tokens(self) -> int:
        return self.prompt.shape[0]


@torch.no_grad()
def dictionary_codes(dictionary, store, site: str, block_tokens: int = 16384, max_entries: int = 20_000_000,
                     seed: int = 0) -> Codes:
    """Encode every token of ``site``; tokens are thinned at random (seeded) when the codes
    would hold more than ``max_entries`` non-zeros (dense codes), never the per-image maxima."""
    from diffdict.feature_stats import site_space
    from diffdict.interpret.stats import sparse_entries

    space = site_space(dictionary, store.d(site), f"site {site!r}")
    rows, cols = store.grid(site)
    total = store.num_tokens(site)
    n = dictionary.n_features
    image_max = torch.zeros(store.num_prompts, n)
    tokens, features, values, prompts, positions = [], [], [], [], []
    generator = torch.Generator().manual_seed(seed)
    kept_entries, kept_tokens, seen = 0, 0, 0
    for start in range(0, total, block_tokens):
        x, meta = store.read(site, start, min(start + block_tokens, total))
        tok, f, v = sparse_entries(dictionary, x, space)
        keep = v > 0
        tok, f, v = tok[keep], f[keep], v[keep]
        pid = meta["prompt_id"].long()
        image_max.view(-1).scatter_reduce_(0, pid[tok] * n + f, v, reduce="amax")
        seen += x.shape[0]
        # thin tokens when the running density would overflow the entry budget
        density = (kept_entries + tok.numel()) / max(seen, 1)
        share = min(1.0, max_entries / max(density * total, 1.0))
        chosen = torch.rand(x.shape[0], generator=generator) < share if share < 1.0 else torch.ones(x.shape[0], dtype=torch.bool)
        new_index = torch.full((x.shape[0],), -1, dtype=torch.long)
        new_index[chosen] = torch.arange(int(chosen.sum())) + kept_tokens
        sel = chosen[tok]
        tokens.append(new_index[tok[sel]])
        features.append(f[sel])
        values.append(v[sel].float())
        prompts.append(pid[chosen])
        positions.append((meta["row"].long() * cols + meta["col"].long())[chosen])
        kept_tokens += int(chosen.sum())
        kept_entries += int(sel.sum())
    return Codes(torch.cat(tokens), torch.cat(features), torch.cat(values), torch.cat(prompts), torch.cat(positions),
                 image_max, n)


__all__ = ["BENCH_CONCEPTS", "Codes", "GroundTruth", "dictionary_codes", "ground_truth"]
