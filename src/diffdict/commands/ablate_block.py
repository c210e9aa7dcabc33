"""``diffdict ablate-block``: which concepts change when a block's update is removed.

    diffdict ablate-block --model toy --sites down.2.0,mid.0,up.0.0,up.0.1 --prompts 32 --out DIR

writes ``DIR/table.md``, ``DIR/metrics.json`` and per site a grid (original | ablated |
difference). Concepts are read by shapes-clip.
"""

from __future__ import annotations

import argparse

from diffdict.commands import common, validate
from diffdict.errors import DiffdictError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ablate-block", help="remove each site's update and report which concepts change",
        description="For each site, generate with the block's update removed (or scaled) and report per concept "
                    "family how much shapes-clip's reading changes.",
    )
    parser.add_argument("--sites", default=None, help="comma-separated sites (default: every block site of the model)")
    parser.add_argument("--ablate-scale", type=validate.finite_float(), default=0.0, help="scale of the update (0 removes it; default 0)")
    parser.add_argument("--steps", default="all", help="denoising steps to ablate at: all, 0-3, or 0,2 (default: all)")
    parser.add_argument("--backbone", default="shapes-clip", help="concept reader (default: shapes-clip)")
    parser.add_argument("--top", type=validate.positive_int, default=5, help="concepts listed as rising / falling most per site")
    common.add_generation_arguments(parser)
    common.add_host_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffdict.io import claim_output_folder
    from diffdict.interventions.experiments import ablation_table, block_ablation, save_block_ablation

    claim_output_folder(args.out, "ablate-block", own_files=("metrics.json",))
    prompts = common.prompts_from_args(args)
    host = common.host_from_args(args)
    if args.sites is None:
        sites = [name for name, info in host.sites().items() if info.kind != "mlp"]
    else:
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        if not sites:
            raise DiffdictError(f"no sites given in --sites {args.sites!r}")
    result = block_ablation(host, sites, prompts, seed=args.seed, scale=args.ablate_scale, steps=args.steps,
                            num_steps=args.denoise_steps, guidance=args.guidance, backbone=args.backbone,
                            batch_size=args.batch_size, top=args.top)
    path = save_block_ablation(result, Path(args.out), scale=args.scale)
    print(ablation_table(result), end="")
    print(f"wrote {path.parent}")
    return 0
