"""The card's index.html as people read it: opened in a real headless Chromium (Debian's
chromium-headless-shell, driven by Playwright): no console errors, no request leaves the page, every chart
and table renders with a non-zero size, every link inside the page resolves, and a full-page screenshot is
kept (in ``$XGEN_TEST_ARTIFACTS`` when set, else the test's temporary folder).

Skips without Playwright or Chromium, unless ``XGEN_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""
from __future__ import annotations

import os
import shutil

import pytest

from xgen_data.interop import card

CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")


def _browser():
    required = os.environ.get("XGEN_REQUIRE_BROWSER") == "1"
    path = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    if path is None:
        if required:
            pytest.fail(f"no Chromium found ({', '.join(CHROMIUM_NAMES)}); .ci/run installs chromium-headless-shell")
        pytest.skip("no Chromium installed")
    if required:
        import playwright.sync_api as api
    else:
        api = pytest.importorskip("playwright.sync_api")
    return api, path


def test_card_page_renders_in_chromium(demo_shards, sample_corpus, tmp_path):
    api, chromium = _browser()
    out = tmp_path / "card"
    result = card.write_card(demo_shards, str(out), corpus_dir=sample_corpus)
    url = (out / "index.html").as_uri()
    errors, requests = [], []
    with api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url, wait_until="load")
        boxes = page.eval_on_selector_all(
            "svg, table",
            "els => els.map(e => { const r = e.getBoundingClientRect(); return [e.tagName, r.width, r.height] })")
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        targets = {h: page.evaluate("h => document.getElementById(h.slice(1)) !== null", h) for h in hrefs}
        page.click(f'a[href="#{result["facts"][-1]["key"]}"]')  # following a link scrolls to its section
        scrolled = page.evaluate("() => window.scrollY")
        shot_dir = os.environ.get("XGEN_TEST_ARTIFACTS") or str(tmp_path)
        os.makedirs(shot_dir, exist_ok=True)
        shot = os.path.join(shot_dir, "card-index.png")
        page.screenshot(path=shot, full_page=True)
        browser.close()
    assert errors == []
    assert requests == [url]  # self-contained: nothing but the page itself is fetched
    n_tables = sum(1 for f in result["facts"] if f["rows"])
    assert sum(1 for t, _, _ in boxes if t.lower() == "table") == n_tables
    assert sum(1 for t, _, _ in boxes if t.lower() == "svg") >= 6
    assert all(w > 0 and h > 0 for _, w, h in boxes)
    assert hrefs and all(targets.values()), [h for h, ok in targets.items() if not ok]
    assert scrolled > 0
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(shot) > 20_000
