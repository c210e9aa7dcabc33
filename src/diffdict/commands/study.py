"""``diffdict study``: the ablation studies, one command each, and all of them at once.

    diffdict study sparsity-level --model toy --seeds 3 --ks 5,10,20 --out DIR
    diffdict study sparsity-mechanism --model sdxl-turbo --sites down.2.1,up.0.1 --out DIR
    diffdict study all --out DIR [--quick]
    diffdict study NAME --help          # the study's own options

Every option of a study's config is a flag (list-valued ones comma-separated) and a key
of the TOML file ``--config FILE`` reads (flags override it); ``--quick`` is a much
smaller smoke version. Results: DIR/table.md, table.csv, results.json, config.json and
plots; ``all`` writes DIR/<study>/ for each and DIR/index.html.
"""

from __future__ import annotations

import argparse
import sys

from diffdict.commands import common, validate
from diffdict.errors import DiffdictError
from diffdict.options import add_arguments, load_config_file


#: files a study run writes into DIR: a folder holding one is an earlier run's, reused
STUDY_OUTPUTS = ("config.json", "results.json", "summary.json", "index.html", "cache")


class _OneLineParser(argparse.ArgumentParser):
    """Errors become one DiffdictError line (the CLI prints it and exits 2)."""

    def error(self, message):  # noqa: D401 - argparse's interface
        raise DiffdictError(f"{self.prog}: {message}")


def register(subparsers) -> None:
    from diffdict.studies import STUDIES

    parser = subparsers.add_parser(
        "study", help="run an ablation study (or all of them): tables with error bars, plots, a report",
        description=f"Studies: {', '.join(STUDIES)}, or all. 'diffdict study NAME --help' lists a study's options.",
    )
    parser.add_argument("name", metavar="NAME", nargs="?", help=f"{', '.join(STUDIES)}, or all")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the study's options (see NAME --help)")
    parser.set_defaults(func=run)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", type=validate.out_folder, help="output folder")
    parser.add_argument("--quick", action="store_true", help="a much smaller smoke version")
    parser.add_argument("--cache", metavar="DIR", type=validate.out_folder,
                        help="cache folder (default: DIR/cache); share it between runs")
    parser.add_argument("--config", metavar="FILE",
                        help='a TOML file of the options below (seeds = 2, sites = ["up.1.1"]); flags override it')
    common.add_verify_option(parser)


def _configs(name: str) -> list[type]:
    """The config classes of study ``name`` (every study's for ``all``)."""
    from diffdict.studies import STUDIES, get_study

    return [get_study(n).Config for n in (STUDIES if name == "all" else [name])]


def study_parser(name: str) -> _OneLineParser:
    from diffdict.studies import STUDIES, get_study

    if name == "all":
        parser = _OneLineParser(prog="diffdict study all",
                                description="Every study (or --only some) into DIR/<study>/, one cache, DIR/index.html.")
        parser.add_argument("--only", metavar="A,B,...", help=f"run only these studies ({', '.join(STUDIES)})")
        parser.add_argument("--no-browsers", action="store_true", help="skip the feature browsers")
        parser.add_argument("--browser-features", metavar="N", type=int,
                            help="features per feature browser (default: 32, 8 with --quick)")
    else:
        study = get_study(name)
        parser = _OneLineParser(prog=f"diffdict study {name}", description=f"{study.title}: {study.question}")
    _add_common(parser)
    add_arguments(parser, *_configs(name))
    return parser


def run(args: argparse.Namespace) -> int:
    from diffdict.io import claim_output_folder
    from diffdict.studies import STUDIES, run_all, run_study

    if args.name is None:
        raise DiffdictError(f"give a study: {', '.join(STUDIES)}, or all (diffdict study NAME --help for its options)")
    if args.name != "all" and args.name not in STUDIES:
        raise DiffdictError(f"unknown study {args.name!r}; available: {', '.join(STUDIES)}, all")
    parser = study_parser(args.name)
    if any(o in ("-h", "--help") for o in args.options):
        parser.print_help()
        return 0
    ns = vars(parser.parse_args(args.options))
    out, quick, cache, no_verify = ns.pop("out"), ns.pop("quick"), ns.pop("cache"), ns.pop("no_verify")
    config = ns.pop("config")
    options = load_config_file(config, *_configs(args.name)) if config else {}
    options.update({k: v for k, v in ns.items() if v is not None})
    if args.name == "all":
        only, browsers = options.pop("only", None), not options.pop("no_browsers", False)
        browser_features = options.pop("browser_features", None)
        if browser_features is not None and browser_features < 1:
            raise DiffdictError(f"--browser-features: {browser_features} must be at least 1")
        names = None
        if only:
            names = [n.strip() for n in only.split(",") if n.strip()]
            for n in names:
                if n not in STUDIES:
                    raise DiffdictError(f"--only: unknown study {n!r}; available: {', '.join(STUDIES)}")
        claim_output_folder(out, "study", own_files=STUDY_OUTPUTS)
        with common.verifying(no_verify):
            summary = run_all(out, options, quick=quick, studies=names, cache_dir=cache, browsers=browsers,
                              browser_features=browser_features)
        print(f"wrote {out}/index.html: {len(summary['studies'])} studies in {summary['seconds']:.0f} s")
        steps = [f"{kind} {seconds:.0f} s" for kind, seconds in summary["seconds_by_step"].items() if seconds >= 1]
        if steps:
            print("time by step: " + ", ".join(steps))
        return 0
    claim_output_folder(out, "study", own_files=STUDY_OUTPUTS)
    with common.verifying(no_verify):
        results = run_study(args.name, out, options, quick=quick, cache_dir=cache)
    print(f"wrote {out}/table.md ({len(results['rows'])} rows, {results['seconds']:.0f} s, "
          f"trained {results['trained']})", file=sys.stdout)
    return 0
