"""Running studies: one study into its folder, or every study plus an HTML report.

    DIR/config.json    the exact resolved config (with the sites, host and generation
                       settings it resolved to)
    DIR/table.md       mean ± std [95% t-interval] over seeds, one row per variant
    DIR/table.csv      the same numbers, one column per statistic
    DIR/results.json   per-seed values, the summary, curves, notes, and what the cache
                       served: ``cache`` (hits / computed per step) and ``trained`` (0 on a
                       rerun: nothing was retrained)
    DIR/*.png          plots

``study all`` writes each study to ``DIR/<study>/``, shares one cache (``DIR/cache``), so
a dictionary or a store used by several studies is made once, and writes
``DIR/index.html`` linking every table, plot and feature browser.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from diffdict.errors import DiffdictError
from diffdict.io import write_json
from diffdict.options import canonical_options, resolve
from diffdict.studies.base import Study, StudyConfig, StudyContext
from diffdict.studies.cache import Cache
from diffdict.studies.parallel import Helpers, job_count, threads_per_job
from diffdict.studies.table import Table

#: name -> "module:Class"; adding a study is one module and one line here
STUDIES: dict[str, str] = {
    "intervention-method": "diffdict.studies.intervention_method:InterventionMethod",
    "sparsity-mechanism": "diffdict.studies.sparsity_mechanism:SparsityMechanism",
    "sparsity-level": "diffdict.studies.sparsity_level:SparsityLevel",
    "auxk": "diffdict.studies.auxk:AuxK",
    "dictionaries": "diffdict.studies.dictionaries:Dictionaries",
    "blocks": "diffdict.studies.blocks:Blocks",
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise DiffdictError(f"unknown study {name!r}; available: {', '.join(STUDIES)} (or all)")
    module, _, attr = STUDIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)()


def _metric_json(metric) -> dict:
    return {k: (v if not isinstance(v, float) or abs(v) != float("inf") else None)
            for k, v in dataclasses.asdict(metric).items()}


def execute(study: Study, config: StudyConfig, out: str | Path, cache: Cache, host=None, judge=None,
            log: Callable[[str], None] | None = None, helper: bool = False) -> dict[str, Any]:
    """Run ``study`` with a resolved ``config`` into ``out``; return what results.json holds.
    ``helper``: work through the study backwards (see ``studies.parallel``)."""
    from diffdict.studies.stages import generation_settings, judge_name

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiffdictError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    ctx = StudyContext(study, config, out, cache, host=host, judge=judge, log=log)
    ctx.helper = helper
    if judge is None:
        judge_name(config)  # a judge that cannot read this host's images is refused before any work
    rows = study.rows(ctx)  # checks the sites against the host before any work
    resolved = {"study": study.name, **config.to_dict(),
                "resolved": {"sites": study.sites(ctx), "rows": rows, "host": ctx.host.describe(),
                             "generation": generation_settings(ctx), "judge": ctx.judge.name}}
    write_json(out / "config.json", resolved)
    before = {name: Counter(getattr(cache, name)) for name in ("hits", "computed", "seconds")}
    began = time.monotonic()
    ctx.log(f"start: {study.title}")
    with _torch_threads(config.threads):
        study.run(ctx)
    table = Table.from_records(ctx.records, rows, study.metrics, lambda row: study.reference_row(ctx, row))
    table.write(out, study.title, ctx.notes)
    plots = [p.name for p in study.plot(ctx, table, out)]
    spent = {name: Counter(getattr(cache, name)) - counts for name, counts in before.items()}
    results = {
        "study": study.name, "title": study.title, "question": study.question,
        "rows": table.rows, "metrics": [_metric_json(m) for m in study.metrics],
        "summary": table.summary(), "differences": table.differences_summary(), "per_seed": table.per_seed,
        "curves": ctx.curves, "notes": ctx.notes, "extras": ctx.extras, "plots": plots,
        "seconds": time.monotonic() - began, "ground_truth": ctx.host.shapes_world, "trained": ctx.trained,
        "cache": {"hits": dict(spent["hits"]), "computed": dict(spent["computed"]),
                  "seconds": {kind: round(t, 1) for kind, t in spent["seconds"].items()}},
    }
    write_json(out / "results.json", results)
    ctx.log(f"done in {results['seconds']:.1f}s: {out / 'table.md'} (trained {ctx.trained}, "
            f"cache hits {sum(results['cache']['hits'].values())})")
    return results


def run_study(name: str, out: str | Path, options: dict[str, Any] | None = None, quick: bool = False,
              cache_dir: str | Path | None = None, host=None, judge=None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Resolve the config of study ``name`` (``options``: CLI strings or Python values) and run
    it into ``out``; the cache defaults to ``out/cache``; ``jobs`` > 1: see ``studies.parallel``."""
    study = get_study(name)
    config = resolve(study.Config, options, quick)
    cache_root = Path(cache_dir if cache_dir is not None else Path(out) / "cache")
    with _helpers(config, [name], options, quick, cache_root, False, None, host, judge) as helpers:
        with _torch_threads(threads_per_job(config, helpers.jobs)):
            results = execute(study, config, out, Cache(cache_root), host=host, judge=judge, log=log)
    if helpers.processes:
        _add_helper_seconds(results["cache"]["seconds"], helpers)
        write_json(Path(out) / "results.json", results)
    return results


def _fields(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def _resolve_all(options: dict[str, Any] | None, quick: bool, studies: list[str] | None):
    """Each study's resolved config (so every one is checked before anything runs)."""
    every = [get_study(n).Config for n in STUDIES]
    options = {k: v for k, v in canonical_options(every, options or {}).items() if v is not None}
    chosen = {name: get_study(name).Config for name in (studies or STUDIES)}
    unknown = sorted(set(options) - set().union(*map(_fields, every)))  # study all passes each study its own
    if unknown:
        raise DiffdictError(f"no study takes the option --{unknown[0].replace('_', '-')}")
    return options, {name: resolve(config_class, {k: v for k, v in options.items() if k in _fields(config_class)},
                                   quick) for name, config_class in chosen.items()}


def run_all(out: str | Path, options: dict[str, Any] | None = None, quick: bool = False,
            studies: list[str] | None = None, cache_dir: str | Path | None = None, host=None, judge=None,
            log: Callable[[str], None] | None = None, browsers: bool = True,
            browser_features: int | None = None) -> dict[str, Any]:
    """Every study (or ``studies``) into ``out/<study>/``, one shared cache, and the report
    ``out/index.html`` with a feature browser of ``browser_features`` features (default 32, 8
    with ``quick``) per dictionary; ``jobs`` > 1 (the default on a CPU with two cores or more):
    see ``studies.parallel``."""
    out = Path(out)
    options, configs = _resolve_all(options, quick, studies)
    cache_root = Path(cache_dir if cache_dir is not None else out / "cache")
    with _helpers(next(iter(configs.values())), list(configs), options, quick, cache_root, browsers,
                  browser_features, host, judge) as helpers:
        summary = run_studies(out, options, quick, list(configs), cache_root, host, judge, log, browsers,
                              browser_features, configs=configs, jobs=helpers.jobs)
    _add_helper_seconds(summary["seconds_by_step"], helpers)
    summary["seconds_by_step"] = dict(sorted(summary["seconds_by_step"].items(), key=lambda item: -item[1]))
    summary["jobs"] = helpers.jobs
    write_json(out / "summary.json", summary)
    return summary


def run_studies(out: Path, options: dict[str, Any], quick: bool, names: list[str], cache_root: Path, host=None,
                judge=None, log: Callable[[str], None] | None = None, browsers: bool = True,
                browser_features: int | None = None, configs: dict | None = None, stats_file: Path | None = None,
                helper: bool = False, jobs: int = 1) -> dict[str, Any]:
    """The studies ``names`` one after the other (a helper: in reverse), then the feature
    browsers and the report ``out/index.html``; returns the summary (``run_all`` writes it).
    ``jobs``: the processes of the run (each takes its share of the cores unless the config
    says ``threads``)."""
    from diffdict.studies.report import feature_browsers, write_index
    from diffdict.studies.stages import load_judge, load_study_host

    if configs is None:
        options, configs = _resolve_all(options, quick, names)
    order = list(configs)[::-1] if helper else list(configs)
    cache = Cache(cache_root, stats_file=stats_file)
    began = time.monotonic()
    first = configs[order[0]]
    with _torch_threads(threads_per_job(first, jobs)):
        # one host and one judge for every study (their model and judge options are shared)
        host = host if host is not None else load_study_host(first)
        judge = judge if judge is not None else load_judge(first)
        results = {name: execute(get_study(name), configs[name], out / name, cache, host=host, judge=judge, log=log,
                                 helper=helper)
                   for name in order}
        if browsers:
            count = browser_features if browser_features is not None else (8 if quick else 32)
            links = feature_browsers(out, results, cache, judge=judge, max_features=count, log=log)
    results = {name: results[name] for name in configs}
    summary = {"studies": {name: {"seconds": r["seconds"], "trained": r["trained"], "cache": r["cache"]}
                           for name, r in results.items()},
               "seconds": time.monotonic() - began, "quick": quick}
    if browsers:
        summary["browsers"] = links
    summary["seconds_by_step"] = cache.stats()["seconds"]
    write_index(out, results, summary)
    return summary


@contextmanager
def _torch_threads(count: int | None):
    """torch's CPU threads set to ``count`` (None: left as they are) within the block."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _helpers(config: StudyConfig, names: list[str], options, quick: bool, cache_root: Path, browsers: bool,
             browser_features: int | None, host, judge) -> Helpers:
    """The helper processes of a run: ``config.jobs`` - 1, or none when a host or judge is
    given as an object (it cannot be rebuilt in a helper)."""
    from diffdict.store import reads_verified

    jobs = job_count(config)
    count = 0 if host is not None or judge is not None else jobs - 1
    return Helpers(count, threads_per_job(config, jobs), options=options, quick=quick, names=names,
                   cache_root=cache_root, browsers=browsers, browser_features=browser_features,
                   verify=reads_verified())


def _add_helper_seconds(seconds: dict[str, float], helpers: Helpers) -> None:
    for kind, spent in helpers.seconds.items():
        seconds[kind] = round(seconds.get(kind, 0.0) + spent, 1)


__all__ = ["STUDIES", "execute", "get_study", "run_all", "run_study", "run_studies"]
