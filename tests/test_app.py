"""The app: its backend (generate -> most active features as heatmaps, paint/box edit, browse)
on a random-init toy model, the missing-Gradio error, and a generation + edit round trip in
headless Chromium (skipped with a reason when Gradio, Playwright or Chromium is absent)."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch

from _interpret_fixtures import Browser
from diffdict.errors import DiffdictError

SITE = "mid.0"
PROMPT = "a red circle at the center on a gray plain background"


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from diffdict.dictionaries import SparseAutoencoder
    from diffdict.hosts.toy import ToyHost
    from diffdict.models.toy import ToyDiffusion
    from diffdict.report.app import make_backend

    torch.manual_seed(0)
    host = ToyHost(model=ToyDiffusion())
    folder = tmp_path_factory.mktemp("app") / "sae"
    sae = SparseAutoencoder(128, 64, mechanism="topk", mechanism_options={"k": 8}, seed=1)
    sae.provenance = {"site": SITE}
    sae.save(folder)
    app_backend = make_backend(folder, host=host)
    app_backend.num_steps = 2
    return app_backend


def test_generate_shows_most_active_features(backend):
    image, tiles, order = backend.generate(PROMPT, seed=3)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert 1 <= len(order) <= backend.top_k and len(tiles) == len(order)
    assert tiles[0][0].shape[2] == 3 and tiles[0][0].shape[0] >= 128 and tiles[0][1].startswith(f"feature {order[0]}")
    maps = backend.last_maps["maps"]
    peaks = maps.flatten(1).amax(1)
    assert float(peaks[order[0]]) == pytest.approx(float(peaks.max()))


def test_edit_round_trip(backend):
    image, _, _ = backend.generate(PROMPT, seed=3)
    painted = np.zeros((32, 32), np.float32)
    painted[:16, :16] = 1
    original, edited = backend.edit(PROMPT, 0, 40.0, painted, seed=3)
    assert np.array_equal(original, image)  # the original is the generated image
    assert original.shape == edited.shape and not np.array_equal(original, edited)
    again, boxed = backend.edit(PROMPT, 0, 40.0, "0,0,16,16", seed=3)  # a pixel box: the same region
    assert np.array_equal(again, original) and np.abs(boxed.astype(int) - edited.astype(int)).max() <= 1
    with pytest.raises(DiffdictError, match="out of range"):
        backend.edit(PROMPT, 64, 1.0)
    tiles, text = backend.browse(0)
    assert tiles == [] and "--interpret" in text


def test_missing_gradio_names_the_extra(monkeypatch):
    from diffdict.report.app import require_gradio

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(DiffdictError, match=r"install the 'app' extra"):
        require_gradio()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_in_headless_chromium(backend, tmp_path, monkeypatch):
    pytest.importorskip("gradio", reason="Gradio is not installed (the 'app' extra)")
    browser = Browser()  # skips when Chromium / Playwright are absent
    from diffdict.report.app import build_app, launch_app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(backend=backend)
    port = free_port()
    launch_app(app, "127.0.0.1", port, prevent_thread_lock=True)
    try:
        page = browser.page
        page.set_default_timeout(60_000)
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#prompt textarea", PROMPT)
        page.click("#generate")
        page.wait_for_selector("#image img")
        page.wait_for_function("document.querySelector('#active textarea') && "
                               "document.querySelector('#active textarea').value.length > 0")
        active = page.input_value("#active textarea")
        assert active and active[0].isdigit()
        page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
        page.get_by_role("tab", name="Edit").click()
        page.fill("#box textarea", "0,0,16,16")
        page.fill("#strength input[type=number]", "20")
        page.click("#edit")
        page.wait_for_selector("#edited img")
        page.wait_for_selector("#original img")
        page.screenshot(path=str(tmp_path / "edit.png"), full_page=True)
        assert (tmp_path / "edit.png").stat().st_size > 1000
        real_errors = [e for e in browser.errors if "favicon" not in e]
        assert real_errors == []
    finally:
        browser.close()
        app.close()
