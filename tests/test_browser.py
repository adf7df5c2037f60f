"""End to end in a real browser: `aiayn serve` with the shipped model, driven by Playwright + Chromium.

Needs Debian's chromium and Playwright's Python package (`.ci/run` installs both); elsewhere it is
skipped unless CI is set. `AIAYN_UPDATE_DOCS=1` also writes the screenshot to docs/img/serve.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aiayn.serve.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None

if not os.environ.get("CI") and (sync_playwright is None or not Path(CHROMIUM).exists()):
    pytest.skip("needs playwright and Debian's chromium (installed by .ci/run)", allow_module_level=True)


@pytest.fixture(scope="module")
def server():
    with ServerProcess(ROOT / "models" / "bible-es-en") as s:
        yield s.url


def test_page_translates_and_shows_attention(server, tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(server)
        page.fill("#src", "Y dijo Dios: Sea la luz: y fué la luz.")
        page.click("#go")
        page.wait_for_function("document.querySelector('#output').textContent.includes('light')", timeout=60_000)
        assert "God" in page.inner_text("#output")
        assert page.is_visible("#attention")
        assert page.locator("#matrix td").count() > 20
        page.select_option("#kind", "encoder")
        page.locator("#queries .tok").nth(2).hover()
        assert page.locator("#queries .tok.active").count() == 1
        page.select_option("#kind", "cross")
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("AIAYN_UPDATE_DOCS"):
        shutil.copy(shot, ROOT / "docs" / "img" / "serve.png")


def _page_for(p, url: str, kind: str):
    """Chromium on the server's page, once the page has read /info and says the model is a ``kind``."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function(f"document.querySelector('#info').textContent.includes('{kind}')", timeout=30_000)
    return browser, page


def test_page_generates_with_a_language_model():
    """With a language model the page offers a prompt and sampling controls, not translation."""
    with ServerProcess(ROOT / "models" / "shakespeare-char") as s, sync_playwright() as p:
        browser, page = _page_for(p, s.url, "language model")
        assert page.is_hidden("#translate-controls") and page.is_visible("#generate-controls")
        page.fill("#src", "JULIET:")
        page.fill("#max-new", "40")
        page.fill("#seed", "3")
        page.click("#gen")
        page.wait_for_function("document.querySelector('#output').textContent.length > 20", timeout=60_000)
        assert page.inner_text("#output").startswith("JULIET:") and page.inner_text("#error") == ""
        browser.close()


def test_page_classifies_with_a_classifier(tmp_path):
    """With a classifier the page offers a text to label and shows every label's probability."""
    import torch

    from aiayn.config import preset
    from aiayn.data.vocab import CharVocab
    from aiayn.model import build_model
    from aiayn.train.checkpoint import save_model_dir

    vocab = CharVocab.train(["abcdefghijklmnopqrstuvwxyz "])
    cfg = preset("encoder-small", vocab_size=len(vocab), n_classes=3, d_model=32, d_ff=64, n_encoder_layers=1)
    torch.manual_seed(0)
    save_model_dir(tmp_path / "clf", build_model(cfg), cfg, vocab, {"labels": ["ham", "spam", "eggs"]})
    with ServerProcess(tmp_path / "clf") as s, sync_playwright() as p:
        browser, page = _page_for(p, s.url, "classifier")
        assert page.is_hidden("#translate-controls") and page.is_visible("#classify-controls")
        page.fill("#src", "a tin of spam")
        page.click("#cls")
        page.wait_for_function("!document.querySelector('#probabilities').hidden", timeout=60_000)
        assert page.inner_text("#output") in ("ham", "spam", "eggs") and page.inner_text("#error") == ""
        assert page.locator("#probabilities tr").count() == 3
        browser.close()
