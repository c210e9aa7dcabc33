"""The report of ``study all``: ``DIR/index.html`` linking every study's table, plots and
the feature browsers of its dictionaries (built with :mod:`diffdict.report`)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Callable

from diffdict.io import atomic_write_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; } .muted { color: #777; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } nav a { margin-right: 1em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(entry: dict) -> str:
    from diffdict.studies.table import fmt

    mean, std, n = entry["mean"], entry["std"], entry["n"]
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if n == 1 or std is None or (isinstance(std, float) and math.isnan(std)):
        return fmt(mean)
    return f"{fmt(mean)} ± {fmt(std)}"


def _table(result: dict) -> str:
    metrics = [m for m in result["metrics"] if any(result["summary"][r][m["name"]]["n"] for r in result["rows"])]
    head = "".join(f"<th title=\"{esc(m.get('help', ''))}\">{esc(m['label'])}</th>" for m in metrics)
    rows = []
    for row in result["rows"]:
        cells = "".join(f"<td>{esc(_cell(result['summary'][row][m['name']]))}</td>" for m in metrics)
        rows.append(f"<tr><td>{esc(row)}</td>{cells}</tr>")
    return f"<table><thead><tr><th>variant</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_index(out: Path, results: dict[str, dict], summary: dict) -> Path:
    """``out/index.html``: per study its question, table (mean ± std), plots, notes, and
    links to its table files and feature browsers."""
    nav = " ".join(f"<a href=\"#{esc(name)}\">{esc(name)}</a>" for name in results)
    sections = []
    browsers = summary.get("browsers") or {}
    for name, result in results.items():
        links = [f"<a href=\"{esc(name)}/table.md\">table.md</a>", f"<a href=\"{esc(name)}/table.csv\">table.csv</a>",
                 f"<a href=\"{esc(name)}/results.json\">results.json</a>", f"<a href=\"{esc(name)}/config.json\">config.json</a>"]
        plots = "".join(f"<p><img src=\"{esc(name)}/{esc(p)}\" alt=\"{esc(p)}\"></p>" for p in result.get("plots", []))
        notes = "".join(f"<li>{esc(n)}</li>" for n in result.get("notes", []))
        study_browsers = [(row, path) for (study, row), path in
                          ((tuple(k.split("/", 1)), v) for k, v in browsers.items()) if study == name]
        browser_links = ", ".join(f"<a href=\"{esc(path)}\">{esc(row)}</a>" for row, path in study_browsers)
        cache = result.get("cache", {})
        sections.append(
            f"<h2 id=\"{esc(name)}\">{esc(result['title'])}</h2>"
            f"<p><em>{esc(result['question'])}</em></p>{_table(result)}"
            f"<p class=\"muted\">mean ± std over seeds (95% intervals in table.md / table.csv) · "
            f"{result['seconds']:.0f} s · trained {result['trained']} · cache hits "
            f"{sum(cache.get('hits', {}).values())} · {' · '.join(links)}</p>"
            + (f"<p>Feature browsers: {browser_links}</p>" if browser_links else "")
            + (f"<ul>{notes}</ul>" if notes else "") + plots
        )
    body = (f"<h1>diffdict ablation studies</h1><p class=\"muted\">{len(results)} studies in "
            f"{summary['seconds']:.0f} s{' (quick)' if summary.get('quick') else ''}</p><nav>{nav}</nav>"
            + "".join(sections))
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>diffdict studies</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>\n")
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

    from diffdict.interpret.pipeline import interpret, load_interpretation
    from diffdict.report import write_site
    from diffdict.store import open_store
    from diffdict.studies.pipeline import judge_fingerprint

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
