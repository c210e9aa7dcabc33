"""``diffdict interpret``: statistics, visualisations, explanations and scores per feature.

Output folder::

    OUT/
      interpret.json             run, store, site, settings, and a summary row per feature
      stats/stats.safetensors    the streaming pass (ActivationStats), stats/stats.json
      features/f000012.json      one record per feature: stats, top examples, explanation, scores, files
      images/f000012_top.png     top images with heatmaps (grid), f000012_top_0.png ... one per example,
      images/f000012_hist.png    the activation histogram, and with --icons f000012_icon.png and
                                 f000012_add.png (prompts x strengths of the ``add`` intervention)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from diffdict.dictionaries import load_dictionary, read_provenance
from diffdict.errors import DiffdictError, require_int
from diffdict.feature_stats import found_dictionaries, saved_feature_stats
from diffdict.hosts import host_for_store, is_real_host
from diffdict.imaging import display_scale, image_grid, save_png
from diffdict.interpret.base import FeatureView, InterpretContext, feature_file, make_explainer, make_scorer
from diffdict.interpret.stats import ActivationStats, compute_activation_stats
from diffdict.interpret.visualize import gallery, histogram_image, icon_image, overlay_heatmap, top_images_grid
from diffdict.interpret.vlm import vlm_client
from diffdict.io import read_json, write_json

INDEX_FILE = "interpret.json"


def resolve_run(run: str | Path, member: str | None = None) -> Path:
    """The dictionary folder of ``run``: the folder itself, or its member ``member``
    (or its only member) when ``run`` is a training run with several dictionaries."""
    run = Path(run)
    if not run.is_dir():
        raise DiffdictError(f"dictionary folder not found: {run}")
    if member is not None:
        folder = run / member
        if not folder.is_dir():
            raise DiffdictError(f"run {run} has no member {member!r}")
        return folder
    members = found_dictionaries(run)
    if not members:
        raise DiffdictError(f"{run} is not a dictionary folder (no config.json + model.safetensors) nor a run of them")
    if len(members) > 1:
        names = ", ".join(p.name for p in members[:6]) + (", ..." if len(members) > 6 else "")
        raise DiffdictError(f"run {run} holds {len(members)} dictionaries ({names}); choose one with --member")
    return members[0]


def dictionary_site(folder: Path) -> str | None:
    """The site a dictionary was trained on, when its provenance records it
    (:func:`diffdict.dictionaries.read_provenance`)."""
    try:
        site = read_provenance(folder).get("site")
    except DiffdictError:
        return None
    return site if isinstance(site, str) and site else None


def load_for_store(run: str | Path, store, site: str | None = None, member: str | None = None):
    """(dictionary, folder, site): the dictionary of ``run`` checked against ``store``.

    A dictionary that records its site must be used on that site; its width must equal
    the site's d. Without a record, ``site`` or the one store site of matching d is used.
    """
    folder = resolve_run(run, member)
    dictionary = load_dictionary(folder)
    trained_on = dictionary_site(folder)
    if trained_on is not None and trained_on not in store.sites:
        raise DiffdictError(f"dictionary {folder} was trained on site {trained_on!r}, but store {store.path} has "
                            f"site(s) {', '.join(store.sites)}")
    if trained_on is not None and site is not None and site != trained_on:
        raise DiffdictError(f"dictionary {folder} was trained on site {trained_on!r}, not on --site {site!r}")
    site = site or trained_on
    if site is None:
        matching = [s for s in store.sites if store.d(s) == dictionary.d_in]
        if len(matching) == 1:
            site = matching[0]
        elif not matching:
            widths = ", ".join(f"{s} (d={store.d(s)})" for s in store.sites)
            raise DiffdictError(f"dictionary {folder} reads d={dictionary.d_in} activations, but no site of store "
                                f"{store.path} has that width: {widths}")
        else:
            raise DiffdictError(f"dictionary {folder} does not record its site and store {store.path} has several of "
                                f"width {dictionary.d_in} ({', '.join(matching)}); choose one with --site")
    if site not in store.sites:
        raise DiffdictError(f"unknown site {site!r}; store {store.path} has {', '.join(store.sites)}")
    if store.d(site) != dictionary.d_in:
        raise DiffdictError(f"dictionary {folder} reads d={dictionary.d_in} activations, but site {site!r} of store "
                            f"{store.path} has d={store.d(site)}")
    return dictionary, folder, site


def parse_features(spec: str | Sequence[int] | None, n_features: int) -> list[int] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            first, dash, last = part.partition("-")
            try:
                out += range(int(first), int(last if dash else first) + 1)
            except ValueError:
                raise DiffdictError(f"bad feature list {spec!r}: expected numbers and ranges like 0,5,10-20") from None
    else:
        out = [int(f) for f in spec]
    for f in out:
        require_int(f, "feature", 0, n_features - 1, f" (the dictionary has {n_features} features)")
    return sorted(set(out))


def write_feature_images(view: FeatureView, out: Path, stats: ActivationStats, n_show: int,
                         scale: int | None = None) -> None:
    """The feature's PNGs; ``scale`` None: small images upscaled to about 128 px, large ones as they are."""
    f = view.feature

    def save(name: str, image: np.ndarray) -> None:
        view.files[name] = feature_file("images", f, f"_{name}.png").as_posix()
        save_png(out / view.files[name], image)

    shown = [e for e in view.examples if e.image is not None and e.map is not None][:n_show]
    if scale is None:
        sizes = [max(np.asarray(e.image).shape[:2]) for e in shown]
        if view.icon is not None:
            sizes.append(max(np.asarray(view.icon).shape[:2]))
        scale = display_scale(max(sizes)) if sizes else 1
    if shown:
        vmax = view.vmax
        save("top", top_images_grid([e.image for e in shown], [e.map for e in shown], vmax=vmax, scale=scale))
        for j, e in enumerate(shown):
            save(f"top_{j}", overlay_heatmap(e.image, e.map, vmax, scale=scale))
    counts, edges = stats.histogram(f)
    save("hist", histogram_image(counts, edges, title=f"feature {f}"))
    if view.icon is not None:
        save("icon", np.asarray(view.icon).repeat(scale, 0).repeat(scale, 1))
    if view.gallery is not None:
        save("add", image_grid(view.gallery, columns=view.gallery_columns, scale=scale, gap=2))


#: explainers and scorers that know only the shapes world (ground truth, shapes-clip)
SHAPES_WORLD_ONLY = ("concept-oracle", "clip")


def shapes_world_judges(model: str | None, explainer: str | None, scorers: Sequence[str]
                        ) -> tuple[str | None, list[str]]:
    """Resolve ``auto`` (the concept oracle on shapes-world stores, nothing on real models)
    and refuse a shapes-world-only explainer or scorer on a real model's store."""
    real = model is not None and is_real_host(model)
    if explainer == "auto":
        explainer = None if real else "concept-oracle"
    scorers = [name for s in scorers for name in ((() if real else ("concept-oracle",)) if s == "auto" else (s,))]
    if real:
        for name in [explainer, *scorers]:
            if name in SHAPES_WORLD_ONLY:
                raise DiffdictError(f"the {name} judge knows only the shapes world, not {model}'s images; use the VLM "
                                    "explainer and judge (--explainer vlm --scorer vlm --vlm-url URL --vlm-model NAME) "
                                    "or --explainer none")
    return explainer, scorers


def interpret(run: str | Path, store: str | Path | Any, out: str | Path, explainer: str | None = "auto",
              scorers: Sequence[str] = ("auto",), site: str | None = None, member: str | None = None,
              features: str | Sequence[int] | None = None, max_features: int | None = None, top_n: int = 16,
              rank_by: str = "max", min_active: int = 1, n_show: int = 8, icons: bool = False,
              gallery_strengths: Sequence[float] = (0.0, 2.0, 5.0), model_path: str | Path | None = None,
              seed: int = 0, options: dict | None = None, host: Any = None, clip: Any = None,
              block_tokens: int = 16384, progress: Callable[[str], None] | None = None) -> dict:
    """Run the whole interpretation of a dictionary on a store; returns the index written
    to ``OUT/interpret.json``. ``options`` go to the explainer and scorers (VLM URL, model,
    key variable, cache folder...). ``auto``: the concept oracle on shapes-world stores,
    nothing on real models (see :func:`shapes_world_judges`)."""
    from diffdict.store import Store, open_store

    store = store if isinstance(store, Store) else open_store(store)
    out = Path(out)
    dictionary, folder, site = load_for_store(run, store, site, member)
    if not store.has_images:
        raise DiffdictError(f"store {store.path} has no images: interpretation shows the images that activate each "
                            "feature; collect the store with images")
    explainer, scorers = shapes_world_judges(store.settings.get("model"), explainer, scorers)
    options = dict(options or {})
    options.setdefault("cache_dir", str(out / "vlm-cache"))
    if "vlm" in (explainer, *scorers):
        options["client"] = vlm_client(options)  # one client: one rate limit
    explainer_obj = make_explainer(explainer, **options) if explainer else None
    scorer_objs = [make_scorer(name, **options) for name in scorers]
    chosen = parse_features(features, dictionary.n_features)
    if icons and host is None:
        host = host_for_store(store, model_path)

    if progress is not None:
        progress(f"statistics of {dictionary.n_features} features over {store.num_tokens(site):,} tokens of {site}")
    with tqdm(total=store.num_tokens(site), unit="tok", unit_scale=True, desc="top images",
              disable=progress is None) as bar:
        stats = compute_activation_stats(store, dictionary, site, top_n=top_n, rank_by=rank_by,
                                         min_active=min_active, block_tokens=block_tokens,
                                         progress=lambda done, total: bar.update(done - bar.n))
    stats.save(out / "stats")
    if chosen is None:
        chosen = [int(f) for f in torch.nonzero(stats.fire_count > 0).flatten()]
        if max_features is not None and len(chosen) > max_features:
            rng = np.random.default_rng(seed)
            chosen = sorted(int(f) for f in rng.choice(chosen, size=max_features, replace=False))
    context = InterpretContext(store, dictionary, site, stats, seed=seed, host=host, clip=clip)
    for judge in [explainer_obj, *scorer_objs]:
        if judge is not None:
            judge.prepare(context, chosen)
    # a_i per feature: those saved with the dictionary for these weights, else this pass's (the same definition)
    typical = (saved_feature_stats(folder, dictionary) or stats.base).mean_activation.float() if icons else None
    gallery_prompts = store.prompts[:2] if icons else []

    rows = []
    for f in tqdm(chosen, unit="feature", desc="feature images" + (" and icons" if icons else ""),
                  disable=progress is None):
        examples = context.examples(f)
        view = FeatureView(f, context, examples, stats.feature_summary(f))
        if icons and float(typical[f]) > 0:
            view.icon = icon_image(host, dictionary, site, f, float(typical[f]), seed=seed, store_settings=store.settings)
            if gallery_prompts:
                view.gallery = gallery(host, dictionary, site, f, float(typical[f]), gallery_prompts,
                                       gallery_strengths, seed=seed, store_settings=store.settings)
                view.gallery_columns = len(gallery_strengths)
        write_feature_images(view, out, stats, n_show)
        explanation = explainer_obj.explain(view) if explainer_obj is not None and examples else None
        scores = {s.name: s.score(explanation, view) for s in scorer_objs} if explanation is not None else {}
        record = {
            "feature": f,
            "site": site,
            "stats": view.summary,
            "examples": [{**e.to_json(), "file": view.files.get(f"top_{j}")} for j, e in enumerate(examples)],
            "explanation": explanation.to_json() if explanation is not None else None,
            "scores": scores,
            "files": view.files,
        }
        if icons:
            record["stats"]["typical_activation"] = float(typical[f])
            record["gallery"] = {"prompts": gallery_prompts, "strengths": list(gallery_strengths)}
        write_json(feature_file(out / "features", f, ".json"), record)
        rows.append({"feature": f, **{k: view.summary[k] for k in ("frequency", "mean_activation", "max_activation")},
                     "explanation": explanation.text if explanation else None,
                     "scores": {name: s.get("score") for name, s in scores.items()}})
    index = {
        "run": str(folder),
        "store": str(store.path),
        "site": site,
        "grid": list(stats.grid),
        "n_features": dictionary.n_features,
        "num_tokens": stats.num_tokens,
        "num_images": stats.num_images,
        "settings": {"explainer": explainer, "scorers": list(scorers), "top_n": top_n, "rank_by": rank_by,
                     "min_active": min_active, "seed": seed, "icons": icons},
        "features": rows,
    }
    write_json(out / INDEX_FILE, index)
    return index


def load_interpretation(folder: str | Path) -> tuple[dict, list[dict]]:
    """(index, records) of an interpret folder."""
    folder = Path(folder)
    if not (folder / INDEX_FILE).exists():
        raise DiffdictError(f"{folder} is not an interpret folder (no {INDEX_FILE}); run 'diffdict interpret' first")
    index = read_json(folder / INDEX_FILE)
    records = []
    for row in index.get("features", []):
        path = feature_file(folder / "features", int(row["feature"]), ".json")
        records.append(read_json(path) if path.exists() else {"feature": row["feature"], "stats": row})
    return index, records
