"""Ground-truth concepts per token for the images of a store (the shapes world oracle).

A store keeps each prompt and its generated image, not the renderer's masks (and a fresh
scene for the prompt would put objects elsewhere), so the oracle labels the pixels of the
*generated image* with the prompt's words:

1. Segment: a pixel is *object* if saturated (chroma = max - min channel >= 60; object
   colours have chroma >= 140, backgrounds and textures 0), else *background*.
2. Assign each object pixel to one of the prompt's objects whose prompted colour it shows
   (or that names none): the nearest, starting from the prompted 3x3 regions' centres and
   moving each centre to its pixels' mean (a few k-means steps).
3. Label: ``object``; ``color:`` the palette colour the pixel shows (even when the model
   drew another than asked; anti-aliased edges read as blends, see ``palette_colours``);
   ``shape:`` and ``size:`` of the assigned object as the prompt names them; ``region:``
   the prompted region, else that of the object's pixels' centroid. Background pixels:
   ``background``, ``bg_color:`` as prompted (else the nearest background colour),
   ``texture:`` as prompted.
4. A token *has* a concept when its mask covers >= 0.5 of the token's grid cell.

Shape and size come from the prompt, not the pixels: a feature that tracks a shape the
model failed to draw scores lower, the honest direction for an interpretability score.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffdict.errors import DiffdictError
from diffdict.feature_stats import site_space
from diffdict.interpret.stats import iter_prompt_blocks, sparse_entries
from diffdict.world import BACKGROUNDS, COLORS, REGIONS, concept_names, parse_caption
from diffdict.world.phrases import concept_text as concept_phrase  # a concept in the world's words
from diffdict.world.render import TEXTURE_CONTRAST, cell_overlap

CHROMA_THRESHOLD = 60
CONCEPTS: list[str] = concept_names()
CONCEPT_INDEX = {name: i for i, name in enumerate(CONCEPTS)}
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_COLOR_NAMES = list(COLORS)
_REGION_CENTERS = np.array([((i % 3) + 0.5, (i // 3) + 0.5) for i in range(9)], dtype=np.float32) / 3.0


def _bg_palette() -> tuple[np.ndarray, list[str]]:
    colours, names = [], []
    for name, rgb in BACKGROUNDS.items():
        base = np.array(rgb, dtype=np.float32)
        shade = TEXTURE_CONTRAST if base.mean() < 160 else -TEXTURE_CONTRAST
        colours += [base, base + shade]
        names += [name, name]
    return np.stack(colours), names


_BG_PALETTE, _BG_NAMES = _bg_palette()


def palette_colours(px: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """(H, W) index into the palette of the colour each pixel shows, modelling the pixel as
    a blend a*C + (1 - a)*B (0 <= a <= 1) of a palette colour C with B, the colour of the
    nearest background pixel. An anti-aliased edge is such a blend: read as the nearest
    palette colour, the dark edge of a yellow or cyan object on black is green and the
    light edge of a blue object on white is purple."""
    if obj.all():
        return ((px[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
    from scipy.ndimage import distance_transform_edt

    iy, ix = distance_transform_edt(obj, return_distances=False, return_indices=True)
    background = px[iy, ix][..., None, :]  # (H, W, 1, 3): the nearest background pixel's colour
    offset = px[..., None, :] - background  # (H, W, 1, 3)
    span = _PALETTE - background  # (H, W, colours, 3)
    share = ((offset * span).sum(-1) / np.maximum((span * span).sum(-1), 1e-6)).clip(0.0, 1.0)
    return ((offset - share[..., None] * span) ** 2).sum(-1).argmin(-1)


def pixel_concepts(image: np.ndarray, prompt: str) -> np.ndarray:
    """(len(CONCEPTS), H, W) float32 0/1 masks of one generated image (see the module docstring)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DiffdictError(f"expected an (H, W, 3) image, got shape {image.shape}")
    try:
        spec = parse_caption(prompt) if prompt.strip() else None
    except DiffdictError:
        spec = None  # not a shapes-world caption: label from the pixels only
    h, w, _ = image.shape
    px = image.astype(np.float32)
    masks = np.zeros((len(CONCEPTS), h, w), np.float32)
    chroma = px.max(-1) - px.min(-1)
    obj = chroma >= CHROMA_THRESHOLD
    bg = ~obj
    masks[CONCEPT_INDEX["object"]] = obj
    masks[CONCEPT_INDEX["background"]] = bg
    # colours of object pixels, anti-aliased edges included
    colour = palette_colours(px, obj)
    for ci, name in enumerate(_COLOR_NAMES):
        masks[CONCEPT_INDEX[f"color:{name}"]] = obj & (colour == ci)
    # background colour and texture
    if spec is not None and spec.background:
        masks[CONCEPT_INDEX[f"bg_color:{spec.background}"]] = bg
    elif bg.any():
        nearest = ((px[bg][:, None, :] - _BG_PALETTE) ** 2).sum(-1).argmin(-1)
        votes = np.bincount(nearest, minlength=len(_BG_NAMES))
        name = _BG_NAMES[int(votes.argmax())]
        masks[CONCEPT_INDEX[f"bg_color:{name}"]] = bg
    if spec is not None and spec.texture:
        masks[CONCEPT_INDEX[f"texture:{spec.texture}"]] = bg
    # object attributes: assign object pixels to the prompt's objects
    objects = list(spec.objects) if spec is not None else []
    if obj.any():
        ys, xs = np.nonzero(obj)
        pos = np.stack([(xs + 0.5) / w, (ys + 0.5) / h], 1).astype(np.float32)
        pixel_colour = colour[ys, xs]
        if objects:
            colour_cost = np.zeros((len(ys), len(objects)), np.float32)
            centres = np.full((len(objects), 2), np.nan, np.float32)
            for k, o in enumerate(objects):
                if o.color is not None:
                    colour_cost[:, k] = np.where(pixel_colour == _COLOR_NAMES.index(o.color), 0.0, 10.0)
                if o.region is not None:
                    centres[k] = _REGION_CENTERS[REGIONS.index(o.region)]
            # start from the prompted regions' centres, then move each centre to its pixels'
            # mean (a few k-means steps): objects rarely sit at their region's centre
            for _ in range(4):
                dist = np.sqrt(((pos[:, None, :] - centres[None]) ** 2).sum(-1))
                owner = (colour_cost + np.nan_to_num(dist, nan=0.0)).argmin(1)
                for k in range(len(objects)):
                    if (owner == k).any():
                        centres[k] = pos[owner == k].mean(0)
        else:
            owner = np.zeros(len(ys), int)
        for k in range(max(len(objects), 1)):
            sel = owner == k
            if not sel.any():
                continue
            o = objects[k] if objects else None
            yy, xx = ys[sel], xs[sel]
            if o is not None:
                masks[CONCEPT_INDEX[f"shape:{o.shape}"], yy, xx] = 1
                if o.size is not None:
                    masks[CONCEPT_INDEX[f"size:{o.size}"], yy, xx] = 1
            if o is not None and o.region is not None:
                region = o.region
            else:
                cx, cy = pos[sel].mean(0)
                region = REGIONS[3 * min(int(3 * cy), 2) + min(int(3 * cx), 2)]
            masks[CONCEPT_INDEX[f"region:{region.replace(' ', '_')}"], yy, xx] = 1
    return masks


def grid_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pixel masks (..., H, W) read at a (rows, cols) token grid: covered fraction per cell."""
    rows, cols = grid
    h, w = masks.shape[-2:]
    if rows > h or cols > w:
        raise DiffdictError(f"token grid {rows}x{cols} is finer than the {h}x{w} image")
    return np.einsum("gh,...hw,kw->...gk", cell_overlap(h, rows), masks.astype(np.float64),
                     cell_overlap(w, cols)).astype(np.float32)


def token_concepts(images: np.ndarray, prompts: list[str], grid: tuple[int, int]) -> np.ndarray:
    """(N, len(CONCEPTS), rows, cols) bool: which concepts each token of each image has."""
    out = np.zeros((len(prompts), len(CONCEPTS), *grid), dtype=bool)
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        out[i] = grid_coverage(pixel_concepts(image, prompt), grid) >= 0.5
    return out


ORACLE_BINS = 16  # linear bins on (0, max activation] per feature, plus a zero bin
MIN_CONCEPT_TOKENS = 20  # a concept needs this many tokens with and without it, per half ...
MIN_CONCEPT_SHARE = 0.01  # ... and this share of the half's tokens


class OracleTables:
    """Per feature and concept, histograms of the feature's activation on tokens with and
    without the concept, for two halves of the images: the *explain* half (even prompt
    ids) picks the concept and threshold, the *score* half (odd ids) measures them, so a
    random feature scores near 0.5 and not at the best of 29 noisy AUROCs."""

    def __init__(self, features: list[int], act_max: torch.Tensor, bins: int = ORACLE_BINS):
        self.features = torch.as_tensor(features, dtype=torch.long)
        self.bins = bins
        n_sel, C = len(features), len(CONCEPTS)
        self.scale = act_max[self.features].float().clamp_min(1e-12)
        # [split, feature, concept, bin]; bin 0 = zero or negative activation
        self.pos = torch.zeros(2, n_sel, C, bins + 1, dtype=torch.long)
        self.all = torch.zeros(2, n_sel, bins + 1, dtype=torch.long)
        self.concept_tokens = torch.zeros(2, C, dtype=torch.long)
        self.tokens = torch.zeros(2, dtype=torch.long)

    def add(self, split: torch.Tensor, labels: torch.Tensor, tok: torch.Tensor, f_sel: torch.Tensor, v: torch.Tensor) -> None:
        """``split`` (T,) 0/1 per token, ``labels`` (T, C) bool; entries (tok, selected
        feature position, value) with value != 0."""
        T, C = labels.shape
        B = self.bins
        for s in (0, 1):
            self.tokens[s] += int((split == s).sum())
            self.concept_tokens[s] += labels[split == s].sum(0)
        keep = v > 0
        tok, f_sel, v = tok[keep], f_sel[keep], v[keep]
        b = (v / self.scale[f_sel] * B).ceil().long().clamp(1, B)
        sp = split[tok]
        flat_all = (sp * f_sel.new_tensor(len(self.features)) + f_sel) * (B + 1) + b
        self.all.view(-1).index_add_(0, flat_all, torch.ones_like(flat_all))
        # concept-positive tokens: expand entries by the concepts their token has
        e_idx, c_idx = labels[tok].nonzero(as_tuple=True)
        flat = ((sp[e_idx] * len(self.features) + f_sel[e_idx]) * C + c_idx) * (B + 1) + b[e_idx]
        self.pos.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Complete the zero bins: (pos, neg) histograms [split, feature, concept, bin]."""
        pos, allh = self.pos.clone(), self.all.clone()
        pos[..., 0] = self.concept_tokens[:, None, :] - pos[..., 1:].sum(-1)
        allh[..., 0] = self.tokens[:, None] - allh[..., 1:].sum(-1)
        neg = allh[:, :, None, :] - pos
        return pos, neg


def auroc_from_hist(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC from histograms (..., bins) over increasing activation bins (ties count half)."""
    pos, neg = pos.double(), neg.double()
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    below = torch.cumsum(neg, -1) - neg
    auc = (pos * (below + 0.5 * neg)).sum(-1) / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, math.nan))


def f1_by_threshold(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """F1 of "activation in bin >= t" for every threshold bin t = 1..bins: (..., bins)."""
    pos, neg = pos.double(), neg.double()
    tp = torch.flip(torch.cumsum(torch.flip(pos, [-1]), -1), [-1])[..., 1:]
    fp = torch.flip(torch.cumsum(torch.flip(neg, [-1]), -1), [-1])[..., 1:]
    n_pos = pos.sum(-1, keepdim=True)
    denom = 2 * tp + fp + (n_pos - tp)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))


def oracle_results(context, features: list[int], block_tokens: int = 16384,
                   max_table_bytes: int = 256 << 20) -> dict[int, dict]:
    """The concept oracle for ``features`` (cached on the context): per feature the best
    concept on the explain half, and its AUROC and F1 on the score half."""
    cache = context.cache.setdefault("oracle", {})
    todo = sorted({int(f) for f in features} - set(cache))
    if not todo:
        return {f: cache[f] for f in features}
    store, dictionary, site, stats = context.store, context.dictionary, context.site, context.stats
    prompts = require_prompts_and_images(store, "the concept oracle")
    rows, cols = store.grid(site)
    space = site_space(dictionary, store.d(site), f"site {site!r}")
    C = len(CONCEPTS)
    per_feature = C * (ORACLE_BINS + 1) * 2 * 8
    group = max(1, max_table_bytes // per_feature)
    labels_cache: dict[int, torch.Tensor] = {}
    for g in range(0, len(todo), group):
        chosen = todo[g:g + group]
        lut = torch.full((dictionary.n_features,), -1, dtype=torch.long)
        lut[torch.tensor(chosen)] = torch.arange(len(chosen))
        tables = OracleTables(chosen, stats.act_max)
        with torch.no_grad():
            for _, x, meta in iter_prompt_blocks(store, site, block_tokens):
                pid = meta["prompt_id"]
                uniq, local = torch.unique_consecutive(pid, return_inverse=True)
                need = [int(p) for p in uniq if int(p) not in labels_cache]
                if need:
                    concepts = token_concepts(store.images(need), [prompts[p] for p in need], (rows, cols))
                    for p, c in zip(need, concepts):
                        labels_cache[p] = torch.from_numpy(c)
                    if len(labels_cache) > 200_000 and g + group >= len(todo):
                        labels_cache.clear()
                per_image = torch.stack([labels_cache[int(p)] for p in uniq])  # (P, C, rows, cols)
                labels = per_image[local, :, meta["row"], meta["col"]]  # (T, C)
                split = (pid % 2).long()
                tok, f, v = sparse_entries(dictionary, x, space)
                sel = lut[f]
                keep = sel >= 0
                tables.add(split, labels, tok[keep], sel[keep], v[keep].float())
        pos, neg = tables.finish()
        auc = auroc_from_hist(pos, neg)  # (2, n_sel, C)
        f1 = f1_by_threshold(pos, neg)  # (2, n_sel, C, B)
        held_out = bool(tables.tokens[1] > 0 and tables.tokens[0] > 0)
        ex, sc = (0, 1) if held_out else (0, 0) if tables.tokens[0] > 0 else (1, 1)
        # a concept is eligible when it has enough tokens on both sides in both halves: a
        # rare concept's AUROC is too noisy to pick (it would flatter random features)
        support = torch.ones(C, dtype=torch.bool)
        for s in {ex, sc}:
            n_tok = int(tables.tokens[s])
            floor = max(MIN_CONCEPT_TOKENS, int(MIN_CONCEPT_SHARE * n_tok))
            support &= (tables.concept_tokens[s] >= floor) & (n_tok - tables.concept_tokens[s] >= floor)
        for i, feature in enumerate(chosen):
            a = torch.nan_to_num(auc[ex, i], nan=-1.0)
            if bool(support.any()):
                a = torch.where(support, a, torch.full_like(a, -2.0))
            c = int(a.argmax())
            t = int(f1[ex, i, c].argmax())
            threshold = float(tables.scale[i]) * t / ORACLE_BINS
            ranked = [j for j in torch.argsort(a, descending=True)[:3].tolist() if a[j] > -2]
            cache[feature] = {
                "concept": CONCEPTS[c],
                "phrase": concept_phrase(CONCEPTS[c]),
                "auroc": float_or_none(auc[sc, i, c]),
                "f1": float_or_none(f1[sc, i, c, t]),
                "threshold": threshold,
                "auroc_explain_half": float_or_none(auc[ex, i, c]),
                "held_out": held_out,
                "runners_up": [{"concept": CONCEPTS[j], "auroc": float_or_none(auc[ex, i, j])} for j in ranked[1:]],
                "concept_tokens": int(tables.concept_tokens[sc, c]),
                "tokens": int(tables.tokens[sc]),
            }
    return {f: cache[f] for f in features}


def require_prompts_and_images(store, who: str) -> list[str]:
    """The store's prompts; one clear error when it has no images or no prompts (the
    ground truth is read from the generated images with the prompts' words)."""
    if not store.has_images:
        raise DiffdictError(f"store {store.path} has no images: {who} reads the generated images")
    if not store.prompts:
        raise DiffdictError(f"store {store.path} has no prompts (an imported array): {who} needs prompts and images")
    return store.prompts


def float_or_none(value) -> float | None:
    """``value`` as a float, None where it is NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value
