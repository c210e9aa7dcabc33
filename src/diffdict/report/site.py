"""``diffdict report``: a static HTML feature browser that opens from disk (no server, no CDN).

    OUT/index.html              a sortable, filterable table of features
    OUT/features/f000012.html   one page per feature: stats, explanation, scores, top images
                                with heatmaps, icon, interventions, histogram
    OUT/img/...                 the PNGs, copied from the interpret folder

Every text that came from a prompt, a model or a file is HTML-escaped (``html.escape``,
quotes included); the only script is the inline sorter/filter below, which reads the
table's ``data-sort`` attributes and never injects text as HTML.
"""

from __future__ import annotations

import html
import math
import shutil
from pathlib import Path
from typing import Any

from diffdict.errors import DiffdictError
from diffdict.io import atomic_write_text

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#filter { width: 24em; padding: 4px 6px; margin: 0.6em 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 136px; } figure img { width: 128px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 11px; color: #555; word-wrap: break-word; }
img.wide { image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }
.muted { color: #777; } nav a { margin-right: 1em; }
table.stats, table.scores { width: auto; min-width: 30em; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById('features');
  if (!table) return;
  var body = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  function value(row, i, numeric) {
    var raw = row.cells[i].getAttribute('data-sort');
    if (numeric) { var v = parseFloat(raw); return isNaN(v) ? -Infinity : v; }
    return (raw || '').toLowerCase();
  }
  Array.prototype.forEach.call(headers, function (th, i) {
    th.addEventListener('click', function () {
      var numeric = th.getAttribute('data-type') === 'num';
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = value(a, i, numeric), y = value(b, i, numeric);
        if (x < y) return asc ? -1 : 1;
        if (x > y) return asc ? 1 : -1;
        return 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var filter = document.getElementById('filter');
  var count = document.getElementById('shown');
  function apply() {
    var q = filter.value.trim().toLowerCase(), shown = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var ok = !q || r.textContent.toLowerCase().indexOf(q) !== -1;
      r.style.display = ok ? '' : 'none';
      if (ok) shown++;
    });
    count.textContent = String(shown);
  }
  filter.addEventListener('input', apply);
  apply();
})();
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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


def _page(title: str, body: str, root: str = "") -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><link rel=\"stylesheet\" href=\"{root}style.css\"></head>\n"
            f"<body>\n{body}\n</body></html>\n")


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


def _score_names(records: list[dict]) -> list[str]:
    names: list[str] = []
    for r in records:
        for name in (r.get("scores") or {}):
            if name not in names:
                names.append(name)
    return names


def _feature_page(record: dict, index: dict, images: dict[str, str], neighbours: tuple[int | None, int | None]) -> str:
    f = int(record["feature"])
    stats = record.get("stats") or {}
    explanation = record.get("explanation") or {}
    parts = ["<nav><a href=\"../index.html\">&larr; all features</a>"]
    prev, nxt = neighbours
    if prev is not None:
        parts.append(f"<a href=\"f{prev:06d}.html\">&lsaquo; feature {prev}</a>")
    if nxt is not None:
        parts.append(f"<a href=\"f{nxt:06d}.html\">feature {nxt} &rsaquo;</a>")
    parts.append("</nav>")
    parts.append(f"<h1>Feature {f} <span class=\"muted\">· {esc(index.get('site', ''))}</span></h1>")
    if explanation:
        parts.append(f"<p><b>Explanation</b> ({esc(explanation.get('source'))}): "
                     f"<span class=\"explanation\">{esc(explanation.get('text'))}</span></p>")
    rows = "".join(f"<tr><th>{esc(k)}</th><td class=\"num\">{esc(_fmt(v))}</td></tr>" for k, v in stats.items())
    parts.append(f"<h2>Statistics</h2><table class=\"stats\">{rows}</table>")
    scores = record.get("scores") or {}
    if scores:
        srows = []
        for name, values in scores.items():
            flat = {k: v for k, v in (values or {}).items() if not isinstance(v, (list, dict))}
            detail = "; ".join(f"{esc(k)} = {esc(_fmt(v))}" for k, v in flat.items() if k != "score")
            srows.append(f"<tr><th>{esc(name)}</th><td class=\"num\">{esc(_fmt((values or {}).get('score')))}</td>"
                         f"<td>{detail}</td></tr>")
        parts.append(f"<h2>Scores</h2><table class=\"scores\"><tr><th>scorer</th><th>score</th><th>details</th></tr>"
                     f"{''.join(srows)}</table>")
    figures = []
    for j, example in enumerate(record.get("examples") or []):
        src = images.get(f"top_{j}")
        if not src:
            continue
        figures.append(f"<figure><img src=\"../{esc(src)}\" alt=\"top image {j}\" loading=\"lazy\">"
                       f"<figcaption>#{esc(example.get('prompt_id'))} · {esc(_fmt(example.get('score')))}<br>"
                       f"<span class=\"prompt\">{esc(example.get('prompt'))}</span></figcaption></figure>")
    if figures:
        parts.append(f"<h2>Top images (heatmap: where the feature fires)</h2><div class=\"gallery\">{''.join(figures)}</div>")
    if images.get("icon"):
        parts.append(f"<h2>Icon (empty prompt, feature direction in place of the block's update)</h2>"
                     f"<img class=\"wide\" src=\"../{esc(images['icon'])}\" alt=\"icon\">")
    if images.get("add"):
        gallery = record.get("gallery") or {}
        note = (f"<p class=\"muted\">rows: {esc(' | '.join(gallery.get('prompts', [])))}; columns: strength "
                f"{esc(', '.join(_fmt(s) for s in gallery.get('strengths', [])))}</p>") if gallery else ""
        parts.append(f"<h2>Interventions (add)</h2>{note}<img class=\"wide\" src=\"../{esc(images['add'])}\" alt=\"add gallery\">")
    if images.get("hist"):
        parts.append(f"<h2>Activation histogram</h2><img class=\"wide\" src=\"../{esc(images['hist'])}\" alt=\"histogram\">")
    return _page(f"feature {f}", "\n".join(parts), root="../")


def write_site(out: str | Path, index: dict, records: list[dict], source: str | Path | None = None,
               title: str | None = None) -> Path:
    """Write the site for ``records`` (interpret records) into ``out``; returns index.html."""
    out = Path(out)
    src_root = Path(source) if source is not None else None
    (out / "features").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "style.css", CSS)
    atomic_write_text(out / "sort.js", SCRIPT)
    score_names = _score_names(records)
    ids = [int(r["feature"]) for r in records]
    rows = []
    for i, record in enumerate(records):
        f = int(record["feature"])
        images = {key: _copy(src_root, rel, out) for key, rel in (record.get("files") or {}).items()}
        images = {k: v for k, v in images.items() if v}
        has_page = bool(record.get("examples") or images or record.get("explanation"))
        if has_page:
            neighbours = (ids[i - 1] if i > 0 else None, ids[i + 1] if i + 1 < len(ids) else None)
            atomic_write_text(out / "features" / f"f{f:06d}.html", _feature_page(record, index, images, neighbours))
        stats = record.get("stats") or {}
        explanation = (record.get("explanation") or {}).get("text")
        link = f"<a href=\"features/f{f:06d}.html\">{f}</a>" if has_page else str(f)
        cells = [f"<td class=\"num\" data-sort=\"{f}\">{link}</td>"]
        for key in ("frequency", "mean_activation", "max_activation"):
            v = stats.get(key)
            cells.append(f"<td class=\"num\" data-sort=\"{esc(_sort_value(v))}\">{esc(_fmt(v))}</td>")
        cells.append(f"<td data-sort=\"{esc(explanation or '')}\" class=\"explanation\">{esc(explanation or '')}</td>")
        for name in score_names:
            v = ((record.get("scores") or {}).get(name) or {}).get("score")
            cells.append(f"<td class=\"num\" data-sort=\"{esc(_sort_value(v))}\">{esc(_fmt(v))}</td>")
        thumb = images.get("top_0")
        thumb_html = f'<img src="{esc(thumb)}" width="48" alt="">' if thumb else ""
        cells.append(f"<td data-sort=\"\">{thumb_html}</td>")
        rows.append(f"<tr data-feature=\"{f}\">{''.join(cells)}</tr>")
    head = ["<th data-type=\"num\">feature</th>", "<th data-type=\"num\">frequency</th>",
            "<th data-type=\"num\">mean act.</th>", "<th data-type=\"num\">max act.</th>",
            "<th data-type=\"text\">explanation</th>"]
    head += [f"<th data-type=\"num\">{esc(name)} score</th>" for name in score_names]
    head.append("<th data-type=\"text\">top image</th>")
    title = title or f"diffdict features · {index.get('run', '')}"
    summary = (f"<p class=\"muted\">dictionary {esc(index.get('run'))} · site {esc(index.get('site'))} · "
               f"store {esc(index.get('store'))} · {esc(index.get('num_tokens', '–'))} tokens, "
               f"{esc(index.get('num_images', '–'))} images · {len(records)} features listed</p>")
    body = (f"<h1>{esc(title)}</h1>\n{summary}\n"
            f"<input id=\"filter\" type=\"search\" placeholder=\"filter (feature, explanation...)\" aria-label=\"filter\"> "
            f"<span class=\"muted\"><span id=\"shown\">{len(rows)}</span> shown</span>\n"
            f"<table id=\"features\"><thead><tr>{''.join(head)}</tr></thead>\n<tbody>\n" + "\n".join(rows)
            + "\n</tbody></table>\n<script src=\"sort.js\"></script>")
    atomic_write_text(out / "index.html", _page(title, body))
    return out / "index.html"


def build_report(run: str | Path, out: str | Path, interpret_dir: str | Path | None = None,
                 store: str | Path | None = None, site: str | None = None, member: str | None = None,
                 seed: int = 0, top_n: int = 16, progress=None) -> Path:
    """The site for a dictionary: from an interpret folder; else from a store (statistics and
    top images, no explanations; written to OUT/interpret), by default the store the
    dictionary was trained on; a store without images gives a table of the feature
    statistics (computed from it when missing and cached with the dictionary)."""
    from diffdict.dictionaries import load_dictionary
    from diffdict.feature_stats import (
        ensure_feature_stats,
        load_feature_stats,
        recorded_store,
        require_recorded_store,
    )
    from diffdict.interpret.pipeline import interpret, load_interpretation, resolve_run
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
