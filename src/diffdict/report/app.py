"""``diffdict app``: an interactive feature app, like the SDXL Turbo paper's demo.

**Generate** shows a prompt's image and its most active features as heatmaps; **Edit** adds
``strength * a_i * d_i`` to a feature in a painted region or pixel box; **Browse** shows a
feature's top images and explanation. The logic is :class:`AppBackend` (testable without
Gradio); :func:`build_app` wraps it in Gradio ``Blocks``. Gradio is optional; the server
binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from diffdict.capture import CAPTURE_MODES, ReadHook, capture_mode_of
from diffdict.dictionaries import load_dictionary
from diffdict.errors import DiffdictError
from diffdict.feature_stats import (encode_dense, ensure_feature_stats, recorded_store, require_recorded_store,
                                    saved_feature_stats, site_space)
from diffdict.hosts import DEFAULT_HOST, host_for_store, load_host
from diffdict.imaging import load_png
from diffdict.interpret.run import dictionary_site, load_for_store, load_interpretation, resolve_run
from diffdict.interpret.stats import ActivationStats, compute_activation_stats
from diffdict.interpret.visualize import overlay_heatmap

DISPLAY = 256  # pixels: images are shown upscaled to about this size


def require_gradio():
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise DiffdictError("the app needs Gradio, which is not installed: install the 'app' extra "
                            "(pip install 'diffdict[app]', or pip install gradio)") from None
    return gradio


def _scale_for(image: np.ndarray) -> int:
    return max(1, DISPLAY // max(image.shape[:2]))


def _upscale(image: np.ndarray) -> np.ndarray:
    s = _scale_for(image)
    return np.asarray(image, dtype=np.uint8).repeat(s, 0).repeat(s, 1)


class AppBackend:
    """What the app does, without the user interface."""

    def __init__(self, host, dictionary, site: str, store=None, typical: torch.Tensor | None = None,
                 records: dict[int, dict] | None = None, interpret_dir: str | Path | None = None,
                 stats=None, seed: int = 0, top_k: int = 6, num_steps: int | None = None,
                 guidance: float | None = None):
        self.host, self.dictionary, self.site, self.store = host, dictionary, site, store
        info = host.site(site)
        self.grid = info.grid
        self.space = site_space(dictionary, info.d, f"site {site!r} of model {host.name}")
        settings = (store.settings if store is not None else None) or {}
        capture_settings = settings.get("capture") or {}
        generation = settings.get("generation") or {}
        mode = capture_mode_of(capture_settings)
        self.capture = mode if mode in CAPTURE_MODES else None  # as hooks and edits take it
        self.read_steps = capture_settings.get("steps")
        self.num_steps = num_steps if num_steps is not None else generation.get("num_steps")
        self.guidance = guidance if guidance is not None else generation.get("guidance")
        self.typical, self.records, self.stats, self.seed, self.top_k = typical, records or {}, stats, seed, top_k
        self.interpret_dir = Path(interpret_dir) if interpret_dir else None
        self.last_maps: dict[str, torch.Tensor] = {}
        self._originals: dict[tuple, np.ndarray] = {}

    @torch.no_grad()
    def generate(self, prompt: str, seed: int | None = None) -> tuple[np.ndarray, list[tuple[np.ndarray, str]], list[int]]:
        """(image, [(heatmap overlay, caption)] of the most active features, their ids)."""
        seed = self.seed if seed is None else int(seed)
        seen: list[torch.Tensor] = []

        def read(x, step):
            seen.append(x[0].detach().float().cpu().clone())

        hook = ReadHook(self.site, read, capture=self.capture, steps=self.read_steps)
        with self.host.hooks([hook]):
            image = self.host.generate([prompt], seed=seed, steps=self.num_steps, guidance=self.guidance)[0]
        if not seen:
            raise DiffdictError(f"site {self.site} was not read while generating (steps {self.read_steps})")
        codes = torch.stack([encode_dense(self.dictionary, x, self.space) for x in seen]).mean(0)  # (T, n)
        maps = codes.T.reshape(-1, *self.grid)  # (n, rows, cols)
        strength = maps.flatten(1).amax(1)
        order = [int(f) for f in torch.argsort(strength, descending=True)[: self.top_k] if strength[f] > 0]
        tiles = []
        for f in order:
            label = f"feature {f} · max {float(strength[f]):.3g}"
            explanation = ((self.records.get(f) or {}).get("explanation") or {}).get("text")
            if explanation:
                label += f" · {explanation}"
            tiles.append((overlay_heatmap(image, maps[f].numpy(), scale=_scale_for(image)), label))
        self.last_maps = {"prompt": prompt, "maps": maps}
        return image, tiles, order

    def typical_activation(self, feature: int) -> float:
        if self.typical is not None and float(self.typical[feature]) > 0:
            return float(self.typical[feature])
        maps = self.last_maps.get("maps")
        if maps is not None and float(maps[feature].max()) > 0:
            return float(maps[feature].max())
        return 1.0

    def edit(self, prompt: str, feature: int, strength: float, mask: Any = None, seed: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """(original, edited): ``strength * a_i * d_i`` added inside ``mask`` (a pixel box
        "x0,y0,x1,y1", a painted (H, W) array, or None for everywhere)."""
        from diffdict.interventions import Add, generate

        n = self.dictionary.n_features
        try:
            feature = int(feature)
        except (TypeError, ValueError):
            raise DiffdictError(f"feature {feature!r} is not a number") from None
        if not 0 <= feature < n:
            raise DiffdictError(f"feature {feature} out of range: the dictionary has features 0..{n - 1}")
        if isinstance(mask, str):
            mask = mask.strip() or None
        if isinstance(mask, np.ndarray) and not mask.any():
            mask = None
        seed = self.seed if seed is None else int(seed)
        kwargs = {"seed": seed, "num_steps": self.num_steps, "guidance": self.guidance}
        key = (prompt, seed, self.num_steps, self.guidance)
        if key not in self._originals:
            self._originals = {key: generate(self.host, [prompt], [], **kwargs)[0]}  # keep the last one
        original = self._originals[key]
        add = Add(self.site, self.dictionary, feature, float(strength), activation=self.typical_activation(feature),
                  mask=mask, capture=self.capture)
        edited = generate(self.host, [prompt], [add], **kwargs)[0]
        return original, edited

    def browse(self, feature: int) -> tuple[list[tuple[np.ndarray, str]], str]:
        """Top images with heatmaps and a description of a feature."""
        feature = int(feature)
        record = self.records.get(feature)
        if record is not None and self.interpret_dir is not None:
            tiles = []
            for j, example in enumerate(record.get("examples") or []):
                rel = (record.get("files") or {}).get(f"top_{j}")
                if rel and (self.interpret_dir / rel).is_file():
                    tiles.append((load_png(self.interpret_dir / rel), f"#{example['prompt_id']}: {example.get('prompt') or ''}"))
            explanation = (record.get("explanation") or {}).get("text") or "(no explanation)"
            scores = ", ".join(f"{k} {v.get('score'):.3f}" for k, v in (record.get("scores") or {}).items()
                               if isinstance(v, dict) and isinstance(v.get("score"), (int, float)))
            return tiles, f"Feature {feature}: {explanation}" + (f" ({scores})" if scores else "")
        if self.stats is not None and self.store is not None:
            examples = self.stats.top_examples(feature)
            if not examples:
                return [], f"Feature {feature} never fired on the store"
            images = self.store.images([e.prompt_id for e in examples])
            vmax = max(float(np.max(e.map)) for e in examples)
            prompts = self.store.prompts
            tiles = [(overlay_heatmap(im, e.map, vmax, scale=_scale_for(im)), f"#{e.prompt_id}: {prompts[e.prompt_id] if prompts else ''}")
                     for im, e in zip(images, examples)]
            return tiles, f"Feature {feature}: top {len(tiles)} images of the store"
        return [], "No top images: start the app with --interpret DIR or --store STORE"


def painted_mask(editor_value: Any) -> np.ndarray | None:
    """The painted region of a Gradio ImageEditor value, as an (H, W) float mask."""
    if not isinstance(editor_value, dict):
        return None
    mask = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        arr = np.asarray(layer)
        if arr.ndim == 3 and arr.shape[-1] == 4:
            m = arr[..., 3] > 0
        elif arr.ndim == 3:
            m = arr.max(-1) > 0
        else:
            m = arr > 0
        mask = m if mask is None else (mask | m)
    return None if mask is None or not mask.any() else mask.astype(np.float32)


def make_backend(run, store=None, interpret_dir=None, site=None, member=None, model=None, model_path=None, seed=0,
                 host=None) -> AppBackend:
    from diffdict.store import open_store

    store_obj, folder = None, resolve_run(run, member)
    if store is None and recorded_store(folder) is not None:
        store = require_recorded_store(folder)  # the store it was trained on
    if store is not None:
        store_obj = open_store(store)
        dictionary, folder, site = load_for_store(run, store_obj, site, member)
    else:
        dictionary = load_dictionary(folder)
        site = site or dictionary_site(folder)
        if site is None:
            raise DiffdictError(f"dictionary {folder} does not record its site: give --site (or --store)")
    if host is None:
        if store_obj is not None and model is None:
            host = host_for_store(store_obj, model_path)
        else:
            host = load_host(model or DEFAULT_HOST, model=model_path)
    saved = (ensure_feature_stats(folder, dictionary, store=store_obj, site=site) if store_obj is not None
             else saved_feature_stats(folder, dictionary))
    records: dict[int, dict] = {}
    stats = None
    if interpret_dir is not None:
        records = {int(r["feature"]): r for r in load_interpretation(interpret_dir)[1]}
        stats_dir = Path(interpret_dir) / "stats"
        if (stats_dir / "stats.json").exists():
            stats = ActivationStats.load(stats_dir)
    if stats is None and store_obj is not None and store_obj.has_images:
        with tqdm(total=store_obj.num_tokens(site), unit="tok", unit_scale=True, desc="top images") as bar:
            stats = compute_activation_stats(store_obj, dictionary, site, top_n=8,
                                             progress=lambda done, total: bar.update(done - bar.n))
    typical = (saved or stats).mean_activation if (saved or stats) is not None else None
    return AppBackend(host, dictionary, site, store=store_obj, typical=typical, records=records,
                      interpret_dir=interpret_dir, stats=stats, seed=seed)


def build_app(run=None, store=None, interpret_dir=None, site=None, member=None, model=None, model_path=None, seed=0,
              host=None, backend: AppBackend | None = None):
    """The Gradio Blocks app (call ``.launch(server_name='127.0.0.1')``)."""
    gr = require_gradio()
    backend = backend or make_backend(run, store, interpret_dir, site, member, model, model_path, seed, host)
    n = backend.dictionary.n_features

    def on_generate(prompt, seed_value):
        try:
            image, tiles, order = backend.generate(prompt or "", int(seed_value or 0))
        except DiffdictError as error:
            raise gr.Error(str(error))
        return (_upscale(image), tiles, ", ".join(str(f) for f in order) or "(no feature fires)",
                order[0] if order else 0, _upscale(image))

    def on_edit(prompt, feature, strength, box, editor, seed_value):
        mask = box if (box or "").strip() else painted_mask(editor)
        if isinstance(mask, np.ndarray):
            size = backend.host.image_size
            if mask.shape != tuple(size):  # painted on the upscaled image: pool back to pixels
                t = torch.from_numpy(mask)[None, None]
                mask = torch.nn.functional.adaptive_avg_pool2d(t, size)[0, 0].numpy()
        try:
            original, edited = backend.edit(prompt or "", feature, float(strength), mask, int(seed_value or 0))
        except DiffdictError as error:
            raise gr.Error(str(error))
        return _upscale(original), _upscale(edited)

    def on_browse(feature):
        try:
            return backend.browse(int(feature))
        except (DiffdictError, ValueError) as error:
            raise gr.Error(str(error))

    with gr.Blocks(title="diffdict features", analytics_enabled=False) as app:
        gr.Markdown(f"## diffdict · {backend.dictionary.kind} dictionary with {n} features at site `{backend.site}`")
        with gr.Tab("Generate"):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value="a red circle at the center on a gray plain background",
                                    elem_id="prompt")
                seed_box = gr.Number(label="Seed", value=seed, precision=0, elem_id="seed")
            go = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Row():
                image = gr.Image(label="Image", elem_id="image", type="numpy", interactive=False)
                tiles = gr.Gallery(label="Most active features (heatmaps)", elem_id="features", columns=3)
            active = gr.Textbox(label="Active features", elem_id="active", interactive=False)
        with gr.Tab("Edit"):
            with gr.Row():
                feature = gr.Number(label="Feature", value=0, precision=0, minimum=0, maximum=n - 1, elem_id="feature")
                strength = gr.Slider(-20, 20, value=5, step=0.5, label="Strength", elem_id="strength")
                box = gr.Textbox(label="Box x0,y0,x1,y1 in image pixels (empty: the painted region, or everywhere)",
                                 elem_id="box")
            editor = gr.ImageEditor(label="Paint the region to edit", type="numpy", elem_id="editor",
                                    brush=gr.Brush(colors=["#ff0000"], default_size=12))
            edit_btn = gr.Button("Edit", variant="primary", elem_id="edit")
            with gr.Row():
                original = gr.Image(label="Original", elem_id="original", type="numpy", interactive=False)
                edited = gr.Image(label="Edited", elem_id="edited", type="numpy", interactive=False)
        with gr.Tab("Browse"):
            browse_feature = gr.Number(label="Feature", value=0, precision=0, minimum=0, maximum=n - 1,
                                       elem_id="browse-feature")
            browse_btn = gr.Button("Show top images", elem_id="browse")
            browse_text = gr.Markdown(elem_id="browse-text")
            browse_tiles = gr.Gallery(label="Top images", elem_id="browse-images", columns=4)
        go.click(on_generate, [prompt, seed_box], [image, tiles, active, feature, editor])
        edit_btn.click(on_edit, [prompt, feature, strength, box, editor, seed_box], [original, edited])
        browse_btn.click(on_browse, [browse_feature], [browse_tiles, browse_text])
    return app


def launch_app(app, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
               prevent_thread_lock: bool = False):
    """Serve the app (127.0.0.1 unless ``host`` says otherwise; no share link unless asked)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Gradio's default theme with system fonts: the page asks no font CDN for anything
    theme = require_gradio().themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                            font_mono=["ui-monospace", "Consolas", "monospace"])
    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                      theme=theme, ssr_mode=False, quiet=True)
