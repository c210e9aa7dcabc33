"""``diffdict store info|verify|import``: inspect, check and import activation stores."""

from __future__ import annotations

import argparse
import json

from diffdict.commands import validate
from diffdict.store import DTYPES, import_array, store_info, verify_store


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _info(args: argparse.Namespace) -> int:
    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"store   {info['path']}")
    if not info["finalized"]:
        print(f"status  not finished: {info['chunks_complete']} of {info['num_chunks']} chunks complete")
    model = info.get("model") or info["settings"].get("source") or "-"
    print(f"model   {model}")
    print(f"prompts {info['n_prompts']}    dtype {info['dtype']}")
    if info["finalized"]:
        images = info.get("images")
        print(f"chunks  {info['num_chunks']} x {info['chunk_size']} prompts    "
              f"images {'%dx%d' % (images['height'], images['width']) if images else 'none'}    "
              f"size {_size(info['bytes'])}")
    rows = [("site", "d", "grid", "tokens")]
    for site, entry in info["sites"].items():
        tokens = f"{entry['tokens']:,}" if "tokens" in entry else "-"
        rows.append((site, str(entry["d"]), f"{entry['grid'][0]}x{entry['grid'][1]}", tokens))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if info["digest"]:
        print(f"digest  {info['digest']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    verify_store(args.store)
    info = store_info(args.store)
    files = info["num_chunks"] * (len(info["sites"]) + (1 if info.get("images") else 0))
    print(f"ok: {args.store}: {files} files in {info['num_chunks']} chunks match their checksums")
    return 0


def _import(args: argparse.Namespace) -> int:
    store = import_array(args.array, args.out, site=args.site, dtype=args.dtype, chunk_tokens=args.chunk_tokens)
    print(f"imported {store.num_tokens(args.site):,} tokens (d={store.d(args.site)}, {store.dtype}) "
          f"into {store.path}; digest {store.digest}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("store", help="inspect, verify or import an activation store",
                                   description="Inspect, verify or import an activation store.")
    actions = parser.add_subparsers(dest="store_command", metavar="ACTION")
    actions.required = True

    info = actions.add_parser("info", help="tokens per site, d, dtype, grid and digest of a store")
    info.add_argument("store", metavar="STORE", help="store folder")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    verify = actions.add_parser("verify", help="check every file of a store against its checksum")
    verify.add_argument("store", metavar="STORE", help="store folder")
    verify.set_defaults(func=_verify)

    imp = actions.add_parser("import", help="import an (N, d) .npy or .safetensors array as a store")
    imp.add_argument("array", metavar="ARRAY", help=".npy or .safetensors file holding one (N, d) array")
    imp.add_argument("--out", required=True, metavar="STORE", type=validate.out_folder, help="store folder to create (or resume)")
    imp.add_argument("--site", default="acts", help="site name to give the array (default: acts)")
    imp.add_argument("--dtype", default="float16", choices=list(DTYPES), help="stored dtype (default: float16)")
    imp.add_argument("--chunk-tokens", type=validate.positive_int, default=65536, help="rows per shard (default: 65536)")
    imp.set_defaults(func=_import)
