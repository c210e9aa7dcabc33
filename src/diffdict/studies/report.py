"""The report of ``study all``: ``DIR/index.html`` linking every study's table, plots and
the feature browsers of its dictionaries (built with :mod:`diffdict.report`); the page is the
template ``diffdict/report/templates/study_index.html``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from diffdict.io import atomic_write_text
from diffdict.report.templating import render


def _cell(entry: dict) -> str:
    from diffdict.studies.table import fmt

    mean, std, n = entry["mean"], entry["std"], entry["n"]
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if n == 1 or std is None or (isinstance(std, float) and math.isnan(std)):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def _study(name: str, result: dict, browsers: dict[str, str]) -> dict:
    """What the index shows of one study: its table (metrics with a value only) and links."""
    summary = result["summary"]
    metrics = [m for m in result["metrics"] if any(summary[r][m["name"]]["n"] for r in result["rows"])]
    return {"name": name, "result": result, "metrics": metrics,
            "rows": [(row, [_cell(summary[row][m["name"]]) for m in metrics]) for row in result["rows"]],
            "cache_hits": sum(result.get("cache", {}).get("hits", {}).values()),
            "browsers": [(key.partition("/")[2], path) for key, path in browsers.items()
                         if key.partition("/")[0] == name],
            "notes": result.get("notes", []), "plots": result.get("plots", [])}


def write_index(out: Path, results: dict[str, dict], summary: dict) -> Path:
    """``out/index.html``: per study its question, table (mean ± std), plots, notes, and
    links to its table files and feature browsers."""
    browsers = summary.get("browsers") or {}
    page = render("study_index.html", studies=[_study(name, result, browsers) for name, result in results.items()],
                  seconds=summary["seconds"], quick=summary.get("quick"))
    atomic_write_text(out / "index.html", page)
    return out / "index.html"


def feature_browsers(out: Path, results: dict[str, dict], cache, judge=None, max_features: int = 32,
                     log: Callable[[str], None] | None = None) -> dict[str, str]:
    """A feature browser (:mod:`diffdict.report`) for the first seed's dictionary of every
    row, each dictionary once: ``max_features`` of its live features (a seeded sample) with
    their top images from the evaluation store, and on the shapes world the concept
    oracle's explanation and scores. Built once per dictionary and settings (cached), copied
    to ``out/browsers/``. Returns ``{"study/row": index.html relative to out}``."""
    import shutil

    from diffdict.interpret.run import interpret, load_interpretation
    from diffdict.report import write_site
    from diffdict.store import open_store
    from diffdict.studies.stages import judge_fingerprint

    clip = getattr(judge, "model", None) if getattr(judge, "name", None) == "shapes-clip" else None
    made: dict[str, str] = {}
    links: dict[str, str] = {}
    for name, result in results.items():
        oracle = result.get("ground_truth", False)
        for row, entries in result.get("extras", {}).get("dictionaries", {}).items():
            entry = entries[0]
            folder = Path(entry["folder"])
            if entry["folder"] not in made:
                scorers = ("concept-oracle", "clip") if oracle and clip is not None else ("concept-oracle",) if oracle else ()
                settings = {"dictionary": folder.name, "store": open_store(entry["store"]).digest, "site": entry["site"],
                            "max_features": max_features, "oracle": oracle, "scorers": list(scorers),
                            "judge": judge_fingerprint(judge) if clip is not None else None}

                def build(target: Path, folder=folder, entry=entry, scorers=scorers, oracle=oracle) -> None:
                    if log is not None:
                        log(f"[report] feature browser for {name}: {row}")
                    interpret(folder, entry["store"], target / "interpret", site=entry["site"],
                              explainer="concept-oracle" if oracle else None, scorers=scorers,
                              max_features=max_features, top_n=8, n_show=4, clip=clip)
                    index, records = load_interpretation(target / "interpret")
                    write_site(target / "site", index, records, target / "interpret", title=f"{name}: {row}")

                built = cache.folder("browser", settings, build)
                target = out / "browsers" / folder.name
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(built / "site", target)
                made[entry["folder"]] = str((target / "index.html").relative_to(out))
            links[f"{name}/{row}"] = made[entry["folder"]]
    return links


__all__ = ["feature_browsers", "write_index"]
