"""Tiny fixtures for the interpretation, report and app tests: a store of rendered
shapes-world images with synthetic activations whose features are planted concepts, and
an SAE that reads them off exactly."""

from __future__ import annotations

from pathlib import Path

import torch

SITE, OTHER_SITE = "mid.0", "up.1.0"
GRID = (8, 8)
D = 8
N_PROMPTS = 64
# feature -> what it is: 0 red coverage, 1 blue coverage, 2 background coverage, 3.. noise
PLANTED = {0: "color:red", 1: "color:blue", 2: "background"}


def scenes(n: int = N_PROMPTS, seed: int = 3):
    from diffdict.world import sample_scenes

    return sample_scenes(n, seed=seed, split="all")


def synthetic_acts(scene_list, grid=GRID, d=D, seed: int = 0):
    """Per prompt (tokens, d) activations in row-major order, and the token concepts."""
    from diffdict.world import concept_grid, render

    gen = torch.Generator().manual_seed(seed)
    out = []
    for scene in scene_list:
        masks = render(scene).masks
        cov = {name: torch.from_numpy(concept_grid(masks[name], grid[0])).reshape(-1) for name in PLANTED.values()}
        x = torch.randn(grid[0] * grid[1], d, generator=gen).abs() * 0.5
        x[:, 0] = 3.0 * cov["color:red"]
        x[:, 1] = 2.0 * cov["color:blue"]
        x[:, 2] = 1.5 * cov["background"]
        out.append(x)
    return out


def make_store(path: Path, prompts=None, images: bool = True, n: int = N_PROMPTS, chunk: int = 16,
               prompt_override: dict | None = None, settings: dict | None = None):
    from diffdict.store import StoreWriter, open_store
    from diffdict.world import caption, render_batch

    scene_list = scenes(n)
    prompts = prompts or [caption(s) for s in scene_list]
    if prompt_override:
        prompts = [prompt_override.get(i, p) for i, p in enumerate(prompts)]
    imgs = render_batch(scene_list)
    acts = synthetic_acts(scene_list)
    other = [torch.randn(64, 4, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    settings = settings or {"model": "toy", "host": {"host": "toy", "source": "in-memory"},
                            "capture": {"what": "update", "steps": [0], "half": "cond"},
                            "generation": {"num_steps": 2, "guidance": 3.0, "seed": 0}}
    writer = StoreWriter.open(path, settings=settings, sites={SITE: D, OTHER_SITE: 4},
                              grid={SITE: GRID, OTHER_SITE: (8, 8)}, prompts=prompts, chunk_size=chunk, dtype="float32")
    rows, cols = GRID
    for index in writer.pending_chunks():
        ids = list(writer.chunk_prompt_ids(index))
        x = torch.cat([acts[i] for i in ids])
        meta = {"prompt_id": torch.tensor([i for i in ids for _ in range(rows * cols)]),
                "step": torch.zeros(len(ids) * rows * cols, dtype=torch.long),
                "row": torch.arange(rows).repeat_interleave(cols).repeat(len(ids)),
                "col": torch.arange(cols).repeat(rows * len(ids))}
        o = torch.cat([other[i] for i in ids])
        ometa = {"prompt_id": torch.tensor([i for i in ids for _ in range(64)]),
                 "step": torch.zeros(len(ids) * 64, dtype=torch.long),
                 "row": torch.arange(8).repeat_interleave(8).repeat(len(ids)),
                 "col": torch.arange(8).repeat(8 * len(ids))}
        writer.write_chunk(index, {SITE: x, OTHER_SITE: o}, {SITE: meta, OTHER_SITE: ometa},
                           imgs[ids] if images else None)
    writer.finalize()
    return open_store(path)


def make_sae(folder: Path | None = None, d: int = D, site: str | None = SITE):
    """A ReLU SAE with identity encoder and decoder: feature i = relu(x_i)."""
    from diffdict.dictionaries import SparseAutoencoder

    sae = SparseAutoencoder(d, d, mechanism="relu", seed=0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    if folder is not None:
        sae.provenance = {"site": site} if site is not None else None
        sae.save(folder)
    return sae


# ------------------------------------------------------------------------------ a fake VLM endpoint


class FakeVlm:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 (a thread) that plays a script.

    ``script``: a list of actions used one per request, then ``default`` forever:
    ``"ok"`` (answer with ``answer(request)``), ``"429"``, ``"500"``, ``"401"``,
    ``"sleep"`` (answer after ``sleep`` seconds: a client timeout), ``"malformed"``
    (HTTP 200 with a body that is not a chat completion), ``"garbage"`` (a completion
    whose text is no number)."""

    def __init__(self, script=(), default="ok", sleep=1.0, answer=None):
        import http.server
        import json
        import threading
        import time

        self.script = list(script)
        self.default = default
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        owner = self
        answer = answer or (lambda body: "0.9")

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append(body)
                owner.auth.append(self.headers.get("Authorization"))
                action = owner.script.pop(0) if owner.script else owner.default
                if action == "sleep":
                    time.sleep(sleep)
                    action = "ok"
                if action in ("429", "500", "401"):
                    self._send(int(action), {"error": {"message": f"scripted {action}"}},
                               {"Retry-After": "0"} if action == "429" else {})
                elif action == "malformed":
                    self._send(200, {"unexpected": True})
                elif action == "garbage":
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": "I cannot say."}}]})
                else:
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer(body)}}]})

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fake_answer(body) -> str:
    """Explainer prompts get a phrase, judge prompts a score (1 for images whose prompt... unknown: 0.8)."""
    text = body["messages"][0]["content"][0]["text"]
    return "red objects" if "common" in text else "0.8"


# ------------------------------------------------------------------------------ headless Chromium

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"]


def chromium_path() -> str | None:
    import os
    import shutil

    for candidate in (os.environ.get("DIFFDICT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def browser_or_skip():
    """(playwright sync API module, chromium path), or skip the test saying what is missing."""
    import pytest

    path = chromium_path()
    if path is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; or set DIFFDICT_CHROMIUM)")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; it drives the system Chromium, no download)")
    return sync_api, path


class Browser:
    """A headless Chromium page that records console errors and page errors."""

    def __init__(self):
        sync_api, path = browser_or_skip()
        self._manager = sync_api.sync_playwright()
        self._pw = self._manager.__enter__()
        self.browser = self._pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS[1:])
        self.page = self.browser.new_page(viewport={"width": 1100, "height": 800})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def close(self):
        try:
            self.browser.close()
        finally:
            self._manager.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
