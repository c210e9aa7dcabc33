"""The static HTML feature browser: escaping of prompt and model text, the site's files, and
headless Chromium (pages load with no console errors, sorting and filtering work, a
screenshot is taken). Browser tests skip with a reason when Chromium or Playwright is absent."""

from __future__ import annotations

import json
import re

import pytest

from _interpret_fixtures import Browser, make_sae, make_store
from diffdict.cli import main as cli_main
from diffdict.errors import DiffdictError
from diffdict.interpret import Explanation, interpret, register_explainer
from diffdict.interpret.base import EXPLAINERS, Explainer

EVIL_PROMPT = "<script>alert(1)</script>"
EVIL_TEXT = "<img src=x onerror=alert(2)> & \"quotes\""
HOSTILE = '<script>alert(1)</script> "onload="alert(3)'


class EvilExplainer(Explainer):
    """An explainer whose text is hostile HTML (a model can say anything)."""

    name = "evil-test"

    def explain(self, view):
        return Explanation(EVIL_TEXT, self.name)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    # prompt 23 is a top image of feature 0 (red): make it hostile
    store = make_store(root / "store", prompt_override={23: EVIL_PROMPT, 2: EVIL_PROMPT})
    make_sae(root / "sae")
    register_explainer(EvilExplainer)
    try:
        interpret(root / "sae", store, root / "interp", explainer="evil-test", scorers=["concept-oracle"],
                  features="0-7", top_n=6)
    finally:
        EXPLAINERS.pop("evil-test", None)
    code = cli_main(["report", "--run", str(root / "sae"), "--out", str(root / "site"), "--interpret", str(root / "interp")])
    assert code == 0
    return root


def test_prompt_and_model_text_are_escaped(site):
    index = (site / "site" / "index.html").read_text()
    page = (site / "site" / "features" / "f000000.html").read_text()
    record = json.loads((site / "interp" / "features" / "f000000.json").read_text())
    assert EVIL_PROMPT in [e["prompt"] for e in record["examples"]]
    for html in (index, page):
        assert "<script>alert(1)" not in html and "<img src=x" not in html
        assert "&lt;img src=x onerror=alert(2)&gt; &amp; &#34;quotes&#34;" in html  # jinja2 autoescape
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the only scripts are the site's own
    assert re.findall(r"<script[^>]*>", index) == ['<script src="sort.js">']
    assert "<script" not in page


def test_hostile_text_is_escaped_in_text_and_attributes(tmp_path):
    """Prompts, explanations, scorer and row names come from files: the site and the study
    index escape them in text and in attributes (a quote cannot end an attribute)."""
    from diffdict.report import write_site
    from diffdict.studies.report import write_index

    (tmp_path / "interp" / "img").mkdir(parents=True)
    (tmp_path / "interp" / "img" / "top.png").write_bytes(b"\x89PNG")
    record = {"feature": 3, "stats": {"frequency": 0.5}, "explanation": {"text": HOSTILE, "source": HOSTILE},
              "scores": {HOSTILE: {"score": 0.5, "concept": HOSTILE}}, "files": {"top_0": "img/top.png"},
              "examples": [{"prompt_id": 1, "prompt": HOSTILE, "score": 1.0}]}
    index = write_site(tmp_path / "site", {"run": HOSTILE, "site": HOSTILE}, [record], tmp_path / "interp").read_text()
    page = (tmp_path / "site" / "features" / "f000003.html").read_text()
    result = {"title": HOSTILE, "question": HOSTILE, "metrics": [{"name": "l0", "label": HOSTILE, "help": HOSTILE}],
              "rows": [HOSTILE], "summary": {HOSTILE: {"l0": {"mean": 1.0, "std": 0.1, "n": 2}}},
              "notes": [HOSTILE], "plots": [HOSTILE], "seconds": 1.0, "trained": 0}
    (tmp_path / "study").mkdir()
    study = write_index(tmp_path / "study", {HOSTILE: result},
                        {"seconds": 1.0, "browsers": {f"{HOSTILE}/{HOSTILE}": "browsers/x/index.html"}}).read_text()
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; &#34;onload=&#34;alert(3)"
    for html in (index, page, study):
        assert "<script>alert(1)" not in html and '"onload="' not in html
        assert escaped in html
    assert f'data-sort="{escaped}"' in index and f'title="{escaped}"' in study and f'id="{escaped}"' in study
    assert page.count(escaped) == 6  # site, explanation and its source, scorer, concept, prompt


def test_site_files(site):
    out = site / "site"
    pages = sorted((out / "features").glob("f*.html"))
    assert len(pages) == 8
    page = pages[0].read_text()
    for src in re.findall(r'src="\.\./([^"]+)"', page):
        assert (out / src).read_bytes().startswith(b"\x89PNG"), src
    assert "http://" not in (out / "index.html").read_text() and "https://" not in page  # no CDN


def test_report_needs_something_to_show(tmp_path, capsys):
    make_sae(tmp_path / "sae")
    code = cli_main(["report", "--run", str(tmp_path / "sae"), "--out", str(tmp_path / "site")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "nothing to report" in err
    with pytest.raises(DiffdictError, match="not an interpret folder"):
        from diffdict.report import build_report

        build_report(tmp_path / "sae", tmp_path / "site", interpret_dir=tmp_path)


def test_report_from_a_store(tmp_path):
    from diffdict.report import build_report

    store = make_store(tmp_path / "store", n=16, chunk=8)
    make_sae(tmp_path / "sae")
    index = build_report(tmp_path / "sae", tmp_path / "site", store=store.path, top_n=3)
    text = index.read_text()
    assert text.count("<tr data-feature=") == 8 and (tmp_path / "site" / "features" / "f000001.html").exists()


def test_site_in_headless_chromium(site, tmp_path):
    out = site / "site"
    with Browser() as b:
        page = b.page
        page.goto((out / "index.html").as_uri())
        page.wait_for_selector("#features tbody tr")
        rows = lambda: page.eval_on_selector_all("#features tbody tr", "rs => rs.map(r => +r.dataset.feature)")
        freq = lambda: page.eval_on_selector_all(
            "#features tbody tr", "rs => rs.map(r => parseFloat(r.cells[1].getAttribute('data-sort')))")
        assert rows() == list(range(8))
        page.click("th:has-text('frequency')")
        assert freq() == sorted(freq())
        assert page.get_attribute("th:has-text('frequency')", "aria-sort") == "ascending"
        page.click("th:has-text('frequency')")
        assert freq() == sorted(freq(), reverse=True)
        page.click("th:has-text('feature')")
        assert rows() == list(range(8))
        page.click("th:has-text('feature')")
        assert rows() == list(range(7, -1, -1))
        page.fill("#filter", "alert(2)")
        assert page.inner_text("#shown") == "8"
        page.fill("#filter", "no such text")
        assert page.inner_text("#shown") == "0"
        page.fill("#filter", "")
        shot = tmp_path / "index.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000
        assert page.evaluate("window.__xss === undefined")
        page.click("a[href='features/f000000.html']")
        page.wait_for_selector("h1")
        assert "Feature 0" in page.inner_text("h1")
        broken = page.eval_on_selector_all("img", "is => is.filter(i => !(i.complete && i.naturalWidth > 0)).length")
        assert broken == 0
        assert page.locator("figcaption .prompt", has_text=EVIL_PROMPT).count() >= 1  # shown as text
        page.screenshot(path=str(tmp_path / "feature.png"), full_page=True)
        assert b.errors == []
