"""``diffdict export``: write an SAE as an SAE Lens or EleutherAI sparsify folder.

    diffdict export --run DICT --format saelens|sparsify --out DIR [--seed 0]

The folder loads with ``sae_lens.SAE.load_from_disk(DIR)`` or
``sparsify.Sae.load_from_disk(DIR)``; input normalisation and b_dec are folded into the
weights. The export is then read back with diffdict's own reader of that format and
compared with the original on probe tokens drawn with --seed.
"""

from __future__ import annotations

import argparse

from diffdict.errors import DiffdictError

LOADERS = {"saelens": "sae_lens.SAE.load_from_disk", "sparsify": "sparsify.Sae.load_from_disk"}


def register(subparsers) -> None:
    from diffdict.dictionaries.export import EXPORT_FORMATS

    parser = subparsers.add_parser(
        "export", help="write an SAE as an SAE Lens or sparsify folder",
        description="Write a diffdict SAE as a folder that SAE Lens (SAE.load_from_disk) or EleutherAI sparsify "
                    "(Sae.load_from_disk) loads, with the input normalisation and b_dec folded into the weights. "
                    "TopK exports to both; BatchTopK, Matryoshka BatchTopK and JumpReLU to SAE Lens as jumprelu; "
                    "ReLU, ReLU + L1 and soft-threshold to SAE Lens as standard.",
    )
    parser.add_argument("--run", required=True, help="dictionary folder, or a run folder with one member")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="saelens or sparsify")
    parser.add_argument("--out", required=True, help="folder to write (created; must not hold another dictionary)")
    parser.add_argument("--probe-tokens", type=int, default=1024,
                        help="random tokens the export is checked on (default: 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe tokens (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffdict.dictionaries import load_dictionary
    from diffdict.dictionaries.export import export_dictionary, max_differences, probe_inputs
    from diffdict.feature_stats import dictionary_metadata, single_dictionary_folder

    if args.probe_tokens < 1:
        raise DiffdictError(f"--probe-tokens must be at least 1, got {args.probe_tokens}")
    folder = single_dictionary_folder(args.run)
    dictionary = load_dictionary(folder)
    known = dictionary_metadata(folder)
    out = export_dictionary(dictionary, args.out, args.format,
                            metadata={"hook_name": known.get("site"), "model_name": known.get("model")})
    exported = load_dictionary(out)
    differences = max_differences(dictionary, probe_inputs(dictionary, args.probe_tokens, args.seed),
                                  exported.encode, exported.decode)
    print(f"exported {folder} ({dictionary.mechanism.name}, {dictionary.d_in} -> {dictionary.n_features}) to {out} "
          f"for {LOADERS[args.format]}; max |difference| on {args.probe_tokens} probe tokens: "
          f"codes {differences['codes']:.1e}, reconstruction {differences['reconstruction']:.1e}")
    return 0
