"""Evidence on the shipped model: do colour / shape features steer what shapes-clip reads?

For each target concept (default: color:red, color:blue, shape:circle, shape:square):

1. pick the dictionary feature that best matches it: the prompt-level AUROC of the
   feature's maximum activation (over a prompt's tokens and steps in the store) against
   "the prompt names the concept";
2. take one-object test prompts whose object has *another* value of that family, with
   the mask the object's possible extent (its region's centre range ± its half-size);
3. turn the feature on inside the mask with ``add`` and with ``latent`` (set, error kept;
   and set, error dropped), side by side, and record: the share of prompts where
   shapes-clip's most likely value of the family is the target, before and after, the
   target's probability before / after, causal strength against a random direction of
   equal norm (95% t interval, share of prompts where the edit beats the control), and
   locality (in-mask share of the change, change-weighted Manhattan distance).

Uses the toy model and shapes-clip, a trained dictionary and the store it was trained on
(for the feature statistics and the feature choice). Without ``--run``/``--store`` it makes
them first: ``diffdict collect`` of ``--collect-prompts`` train-split prompts at ``--site``
and a TopK SAE (k = 10, 4x, standardised inputs, 300k tokens) trained on them. Writes
``OUT/evidence.md`` (the table for the README), ``OUT/evidence.json`` and per concept and
mode the grids and metrics of ``diffdict intervene``.

    python benchmarks/intervention_evidence.py --site up.1.1 --out out/evidence
    python benchmarks/intervention_evidence.py --run RUN/topk-k10 --store STORE --out out/evidence
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def concept_present(prompt: str, concept: str) -> bool:
    from diffdict.world.captions import parse_caption

    family, _, value = concept.partition(":")
    value = value.replace("_", " ")
    spec = parse_caption(prompt)
    if family == "bg_color":
        return spec.background == value
    if family == "texture":
        return spec.texture == value
    return any(getattr(o, family) == value for o in spec.objects)


@torch.no_grad()
def prompt_max_activations(dictionary, store, site: str, batch_size: int = 1024, max_prompts: int | None = None):
    """(n_prompts, n_features) maximum code of each feature over each prompt's tokens."""
    from diffdict.feature_stats import encode_dense, site_space

    space = site_space(dictionary, store.d(site), f"site {site}")
    n_prompts = store.num_prompts if max_prompts is None else min(max_prompts, store.num_prompts)
    out = torch.zeros(n_prompts, dictionary.n_features)
    for x, meta in store.iter_batches(site, batch_size, shuffle=False, with_meta=True):
        pid = meta["prompt_id"].long()
        keep = pid < n_prompts
        if not bool(keep.any()):
            break
        codes = encode_dense(dictionary, x[keep].float(), space)
        index = pid[keep].unsqueeze(1).expand_as(codes)
        out.scatter_reduce_(0, index, codes, reduce="amax")
    return out


def auroc_columns(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUROC of every column of ``scores`` (N, n) against bool ``labels`` (N,) (ties averaged)."""
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.full((scores.shape[1],), float("nan"))
    order = scores.argsort(0)
    ranks = torch.empty_like(scores)
    ranks.scatter_(0, order, torch.arange(1, scores.shape[0] + 1, dtype=scores.dtype).unsqueeze(1).expand_as(scores))
    # average the ranks of ties (codes are often exactly zero)
    for j in range(scores.shape[1]):
        column = scores[:, j]
        values, inverse = torch.unique(column, return_inverse=True)
        if values.numel() < column.numel():
            sums = torch.zeros(values.numel()).index_add_(0, inverse, ranks[:, j])
            counts = torch.zeros(values.numel()).index_add_(0, inverse, torch.ones(column.numel()))
            ranks[:, j] = (sums / counts)[inverse]
    return (ranks[labels].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text).split())


def object_box(scene) -> str:
    from diffdict.world import REGIONS, SIZES
    from diffdict.world.scene import DEFAULT_SIZE, center_range

    obj = scene.objects[0]
    size = DEFAULT_SIZE
    (cx0, cx1), (cy0, cy1) = center_range(REGIONS.index(obj.region()), obj.size, size)
    half = SIZES[obj.size] * size / DEFAULT_SIZE
    x0, x1 = max(0, int(np.floor(cx0 * size - half))), min(size, int(np.ceil(cx1 * size + half)))
    y0, y1 = max(0, int(np.floor(cy0 * size - half))), min(size, int(np.ceil(cy1 * size + half)))
    return f"{x0},{y0},{x1},{y1}"


def test_prompts(concept: str, count: int, seed: int) -> list[tuple[str, str]]:
    """One-object test prompts whose object has another value of the concept's family, with masks."""
    from diffdict.world import caption, single_object_scene

    family, _, value = concept.partition(":")
    out, index = [], 0
    while len(out) < count and index < 100 * count:
        scene = single_object_scene(seed, index, "test")
        index += 1
        if getattr(scene.objects[0], family) != value.replace("_", " "):
            out.append((caption(scene), object_box(scene)))
    return out


def make_dictionary(args, folder: Path) -> Path:
    """Collect a store at ``args.site`` and train the default TopK SAE on it (both resumable)."""
    from diffdict.cli import main as cli

    if args.site is None:
        raise SystemExit("--site is needed to collect a store (or give --run and --store)")
    model = ["--model-path", args.model_path] if args.model_path else []
    common = ["--seed", str(args.seed), "--no-progress"]
    if cli(["collect", "--sites", args.site, "--prompts", str(args.collect_prompts), "--no-images", *model, *common,
            "--out", str(folder / "store")]):
        raise SystemExit("collect failed")
    run = folder / "run"
    if not (run / "topk-k10-x4" / "config.json").exists():
        if cli(["train", "--acts", str(folder / "store"), "--site", args.site, "--arch", "topk", "--k", "10",
                "--expansion", "4", "--lr", "1e-3", "--normalization", "standardise", "--dead-window", "50000",
                "--batch-size", "1024", "--tokens", "300000", *common, "--out", str(run)]):
            raise SystemExit("train failed")
    return run / "topk-k10-x4"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="dictionary folder (default: train one, see above)")
    parser.add_argument("--store", default=None, help="the store the dictionary was trained on")
    parser.add_argument("--site", default=None)
    parser.add_argument("--collect-prompts", type=int, default=384, help="prompts collected when there is no --store")
    parser.add_argument("--concepts", default="color:red,color:green,shape:circle,shape:square")
    parser.add_argument("--prompts", type=int, default=24, help="test prompts per concept")
    parser.add_argument("--select-prompts", type=int, default=2000, help="store prompts used to pick the features")
    parser.add_argument("--strength", type=float, default=5.0)
    parser.add_argument("--steps", default="all")
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared CPU)")
    parser.add_argument("--model-path", default=None, help="toy model folder (default: shipped weights)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import (compute_feature_stats, dictionary_metadata, load_feature_stats,
                                        resolve_store_site, save_feature_stats)
    from diffdict.hosts import load_host
    from diffdict.interventions import Add, LatentEdit
    from diffdict.metrics import load_backbone
    from diffdict.interventions.experiments import run_intervention, save_intervention_report
    from diffdict.store import open_store
    from diffdict.world import FAMILIES

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (args.run is None) != (args.store is None):
        parser.error("give both --run and --store, or neither")
    if args.run is None:
        args.run, args.store = str(make_dictionary(args, out / "data")), str(out / "data" / "store")
    folder = Path(args.run)
    dictionary = load_dictionary(folder)
    store = open_store(args.store)
    site = resolve_store_site(store, args.site or dictionary_metadata(folder).get("site"))
    stats = load_feature_stats(folder, dictionary, required=False)
    if stats is None or stats.site != site:
        stats = compute_feature_stats(dictionary, store, site)
        save_feature_stats(folder, stats)
    host = load_host("toy", path=args.model_path)
    backbone = load_backbone("shapes-clip")
    capture = stats.capture

    started = time.time()
    maxima = prompt_max_activations(dictionary, store, site, max_prompts=args.select_prompts)
    prompts = store.prompts[: maxima.shape[0]]
    rows, records = [], []
    for concept in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        labels = torch.tensor([concept_present(p, concept) for p in prompts])
        auc = auroc_columns(maxima, labels)
        auc[stats.dead] = float("nan")
        feature = int(torch.nan_to_num(auc, nan=-1.0).argmax())
        family, _, value = concept.partition(":")
        target_index = FAMILIES[family].index(value.replace("_", " "))
        cases = test_prompts(concept, args.prompts, args.seed)
        modes = {
            "add": lambda p, m: Add(site, dictionary, feature, args.strength, mask=m, steps=args.steps, capture=capture,
                                    stats=stats),
            "latent (error kept)": lambda p, m: LatentEdit(site, dictionary, feature, args.strength, "set", mask=m,
                                                           steps=args.steps, capture=capture, stats=stats),
            "latent (error dropped)": lambda p, m: LatentEdit(site, dictionary, feature, args.strength, "set", mask=m,
                                                              steps=args.steps, capture=capture, stats=stats,
                                                              keep_error=False),
        }
        for mode, make in modes.items():
            per = []
            for i, (prompt, box) in enumerate(cases):  # one mask per prompt: one call each
                report = run_intervention(host, make(prompt, box), [prompt], seed=args.seed + i,
                                          num_steps=args.num_steps, target=concept, backbone=backbone,
                                          control_seed=args.seed + 1000 + i)
                before = int(backbone.read_concepts(report.original)[family].argmax(1)[0])
                after = int(backbone.read_concepts(report.edited)[family].argmax(1)[0])
                per.append({"prompt": prompt, "mask": box, "reads_target_before": before == target_index,
                            "reads_target_after": after == target_index,
                            **{k: float(v[0]) for k, v in report.per_image.items()}})
                if i < 4:
                    save_intervention_report(report, out / concept.replace(":", "-") / slug(mode) / f"{i:02d}")
            from diffdict.metrics.causal import summarize

            causal = summarize([r["p_target_original"] for r in per], [r["p_target_edited"] for r in per],
                               [r["p_target_control"] for r in per])
            row = {
                "concept": concept, "feature": feature, "auroc": float(auc[feature]), "mode": mode,
                "read_before": float(np.mean([r["reads_target_before"] for r in per])),
                "read_after": float(np.mean([r["reads_target_after"] for r in per])),
                "p_before": causal["p_original"], "p_after": causal["p_edited"], "p_control": causal["p_control"],
                "strength": causal["strength"], "win_rate": causal["win_rate"],
                "inside_share": float(np.nanmean([r["inside_share"] for r in per])),
                "distance": float(np.mean([r["locality_distance"] for r in per])),
            }
            rows.append(row)
            records.append({**row, "per_prompt": per})
            print(f"{concept:14s} f{feature:<5d} {mode:24s} reads target {row['read_before']:.0%}->{row['read_after']:.0%}  p {row['p_before']:.2f}->"
                  f"{row['p_after']:.2f} (random {row['p_control']:.2f})  in-mask {row['inside_share']:.0%}",
                  file=sys.stderr)
    lines = [
        f"Dictionary `{folder}` at site `{site}`, strength {args.strength}, {args.prompts} one-object test prompts per "
        f"concept whose object has another value; mask = the object's extent. ({time.time() - started:.0f} s)",
        "",
        "| concept | feature (AUROC) | mode | read as target before → after | p(target) before → after | random dir. | "
        "causal strength [95% CI] | edit beats random | change in mask | distance (tokens) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["strength"]
        lines.append(
            f"| {r['concept']} | {r['feature']} ({r['auroc']:.2f}) | {r['mode']} | {r['read_before']:.0%} → {r['read_after']:.0%} | "
            f"{r['p_before']:.2f} → {r['p_after']:.2f} | {r['p_control']:.2f} | {s['mean']:+.2f} "
            f"[{s['low']:+.2f}, {s['high']:+.2f}] | {r['win_rate']:.0%} | {r['inside_share']:.0%} | {r['distance']:.2f} |"
        )
    command = "python benchmarks/intervention_evidence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines += ["", f"Command: `{command}`", ""]
    (out / "evidence.md").write_text("\n".join(lines))
    (out / "evidence.json").write_text(json.dumps(records, indent=2, default=float))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
