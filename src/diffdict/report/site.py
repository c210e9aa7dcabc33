"""``diffdict report``: a static HTML feature browser that opens from disk (no server, no CDN).

    OUT/index.html              a sortable, filterable table of features
    OUT/features/f000012.html   one page per feature: stats, explanation, scores, top images
                                with heatmaps, icon, interventions, histogram
    OUT/img/...                 the PNGs, copied from the interpret folder

The pages come from the jinja2 templates in ``templates/`` (autoescaped: every text that came
from a prompt, a model or a file is HTML-escaped, quotes included); the only script is the
site's sorter/filter (``templates/sort.js``), which reads the table's ``data-sort``
attributes and never injects text as HTML.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from diffdict.errors import DiffdictError
from diffdict.io import atomic_write_text
from diffdict.report.templating import asset, render

INDEX_STATS = ("frequency", "mean_activation", "max_activation")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _sort_value(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value)):
        return repr(float(value))
    return "" if value is None else str(value)


def _page_name(feature: int) -> str:
    return f"f{feature:06d}.html"


def _copy(src_root: Path | None, rel: str | None, out: Path) -> str | None:
    """Copy an image of the interpret folder into OUT/img; returns its path relative to OUT."""
    if not rel or src_root is None:
        return None
    src = (src_root / rel).resolve()
    if not src.is_file() or src_root.resolve() not in src.parents:
        return None
    dest = out / "img" / Path(rel).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return f"img/{dest.name}"


def _feature_page(record: dict, index: dict, images: dict[str, str], neighbours: tuple[int | None, int | None]) -> str:
    f = int(record["feature"])
    scores = []
    for name, values in (record.get("scores") or {}).items():
        values = values or {}
        details = {k: v for k, v in values.items() if k != "score" and not isinstance(v, (list, dict))}
        scores.append({"name": name, "score": values.get("score"), "details": details})
    top = [(j, images[f"top_{j}"], example) for j, example in enumerate(record.get("examples") or [])
           if images.get(f"top_{j}")]
    gallery = record.get("gallery")
    if gallery:
        gallery = {"prompts": gallery.get("prompts", []), "strengths": [_fmt(s) for s in gallery.get("strengths", [])]}
    prev, nxt = ({"feature": n, "page": _page_name(n)} if n is not None else None for n in neighbours)
    return render("feature.html", title=f"feature {f}", root="../", fmt=_fmt, feature=f, index=index, prev=prev,
                  next=nxt, explanation=record.get("explanation") or {}, stats=record.get("stats") or {},
                  scores=scores, top=top, images=images, gallery=gallery)


def write_site(out: str | Path, index: dict, records: list[dict], source: str | Path | None = None,
               title: str | None = None) -> Path:
    """Write the site for ``records`` (interpret records) into ``out``; returns index.html."""
    out = Path(out)
    src_root = Path(source) if source is not None else None
    (out / "features").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "style.css", asset("style.css"))
    atomic_write_text(out / "sort.js", asset("sort.js"))
    score_names = list(dict.fromkeys(name for r in records for name in (r.get("scores") or {})))
    ids = [int(r["feature"]) for r in records]
    rows = []
    for i, record in enumerate(records):
        f = int(record["feature"])
        images = {key: _copy(src_root, rel, out) for key, rel in (record.get("files") or {}).items()}
        images = {k: v for k, v in images.items() if v}
        has_page = bool(record.get("examples") or images or record.get("explanation"))
        if has_page:
            neighbours = (ids[i - 1] if i > 0 else None, ids[i + 1] if i + 1 < len(ids) else None)
            atomic_write_text(out / "features" / _page_name(f), _feature_page(record, index, images, neighbours))
        stats = record.get("stats") or {}
        scores = record.get("scores") or {}
        rows.append({"feature": f, "page": _page_name(f) if has_page else None,
                     "stats": [stats.get(key) for key in INDEX_STATS],
                     "explanation": (record.get("explanation") or {}).get("text") or "",
                     "scores": [(scores.get(name) or {}).get("score") for name in score_names],
                     "thumb": images.get("top_0")})
    title = title or f"diffdict features · {index.get('run', '')}"
    page = render("site_index.html", title=title, root="", fmt=_fmt, sort_value=_sort_value, index=index,
                  score_names=score_names, rows=rows)
    atomic_write_text(out / "index.html", page)
    return out / "index.html"


def build_report(run: str | Path, out: str | Path, interpret_dir: str | Path | None = None,
                 store: str | Path | None = None, site: str | None = None, member: str | None = None,
                 seed: int = 0, top_n: int = 16, progress=None) -> Path:
    """The site for a dictionary: from an interpret folder; else from a store (statistics and
    top images, no explanations; written to OUT/interpret), by default the store the
    dictionary was trained on; a store without images gives a table of the feature
    statistics (computed from it when missing and cached with the dictionary)."""
    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import ensure_feature_stats, load_feature_stats, recorded_store, require_recorded_store
    from diffdict.interpret.run import interpret, load_interpretation, resolve_run
    from diffdict.store import open_store

    out = Path(out)
    if interpret_dir is not None:
        index, records = load_interpretation(interpret_dir)
        return write_site(out, index, records, interpret_dir)
    folder = resolve_run(run, member)
    if store is None and recorded_store(folder) is None:
        saved = load_feature_stats(folder, required=False)
        if saved is None:
            raise DiffdictError(f"nothing to report for {folder}: it records no activation store; give --store STORE "
                                "or --interpret DIR (from 'diffdict interpret')")
        return _stats_table(out, folder, saved)
    store_obj = open_store(store if store is not None else require_recorded_store(folder))
    if store_obj.has_images:
        folder_out = out / "interpret"
        interpret(folder, store_obj, folder_out, explainer=None, scorers=(), site=site, seed=seed, top_n=top_n,
                  progress=progress)
        index, records = load_interpretation(folder_out)
        return write_site(out, index, records, folder_out)
    return _stats_table(out, folder, ensure_feature_stats(folder, load_dictionary(folder), store=store_obj, site=site))


def _stats_table(out: Path, folder: Path, stats) -> Path:
    """A site listing the feature statistics only (no images)."""
    records = [{"feature": f, "stats": {"frequency": float(stats.frequency[f]),
                                        "mean_activation": float(stats.mean_activation[f]),
                                        "max_activation": float(stats.max_activation[f])}}
               for f in range(stats.n_features)]
    index = {"run": str(folder), "site": stats.site, "store": stats.meta.get("store"), "num_tokens": stats.tokens}
    return write_site(out, index, records, None)
