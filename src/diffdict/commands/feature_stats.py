"""``diffdict feature-stats``: per-feature frequency and typical activation over a store.

    diffdict feature-stats --run DICT --store STORE [--site mid.0]

One streaming pass over the store's site; writes ``feature_stats.safetensors`` into each
dictionary folder (every member of a run folder, all in the same pass).
"""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "feature-stats", help="per-feature firing frequency and typical activation over a store",
        description="Encode a store's site with a dictionary (or every dictionary of a run) in one streaming pass "
                    "and save per-feature frequency, mean non-zero activation and max activation in the "
                    "dictionary folder (feature_stats.safetensors).",
    )
    parser.add_argument("--run", required=True, help="dictionary folder, or a run folder (every member)")
    parser.add_argument("--store", required=True, help="activation store")
    parser.add_argument("--site", default=None, help="site of the store (default: the dictionary's, or the store's only site)")
    parser.add_argument("--batch-size", type=validate.positive_int, default=4096, help="tokens per batch (default: 4096)")
    parser.add_argument("--max-tokens", type=validate.positive_int, default=None, help="stop after this many tokens (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="unused: the pass reads the store in order (kept for uniformity)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    common.add_verify_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import (
        compute_feature_stats_many,
        dictionary_folders,
        dictionary_metadata,
        resolve_store_site,
        save_feature_stats,
    )
    from diffdict.store import open_store

    folders = dictionary_folders(args.run)
    store = open_store(args.store, verify=not args.no_verify)
    site = args.site
    if site is None:
        recorded = {dictionary_metadata(f).get("site") for f in folders} - {None}
        if len(recorded) == 1 and recorded <= set(store.sites):
            site = recorded.pop()
    site = resolve_store_site(store, site)
    dictionaries = [load_dictionary(folder) for folder in folders]
    all_stats = compute_feature_stats_many(dictionaries, store, site, args.batch_size, args.max_tokens, args.progress)
    for folder, stats in zip(folders, all_stats):
        path = save_feature_stats(folder, stats)
        print(f"{folder}: {stats.n_features} features over {stats.tokens:,} tokens of {site}; "
              f"dead {float(stats.dead.float().mean()):.1%}, mean frequency {float(stats.frequency.mean()):.4f} "
              f"-> {path.name}")
    return 0
