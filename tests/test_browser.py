"""End to end in a real headless browser (Debian chromium + Playwright): load the demo, classify a
picture, remove a pair, see the accuracy change. The screenshot goes to a temporary folder;
``make screenshot`` refreshes the README's (``ROSETTA_SCREENSHOT=assets/dashboard.jpg``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from app_helpers import ROOT, metric_value, open_page
from core import store


def test_bench_times_what_is_shown_on_the_frame_it_is_shown():
    """``bench.browser`` times an element shown 350 or 780 ms after the start within a few frames of
    it, not at Playwright's next locator poll (0, 20, 70, 170, 270 ms, then every 500 ms: a row click
    whose what-if came at 300 ms was timed 770+ ms, the "bimodal" row click of issue #16)."""
    from playwright.sync_api import sync_playwright

    from bench.browser import shown

    with sync_playwright() as p:
        browser, page = open_page(p)
        page.set_content("<body><p>nothing yet</p></body>")
        for delay in (350, 780):
            start = time.perf_counter()
            page_start = page.evaluate(
                f"""() => {{ window.__at = null; const t = performance.now(); setTimeout(() => {{
                    document.body.insertAdjacentHTML('beforeend', '<p>What if {delay}</p>');
                    window.__at = performance.now(); }}, {delay}); return t; }}""")
            t = shown(page, f"() => document.body.textContent.includes('What if {delay}')", 30_000)
            late = (t - start) * 1000 - (page.evaluate("() => window.__at") - page_start)
            assert 0 <= late < 250, f"shown {delay} ms after the start, timed {late:.0f} ms late"
        browser.close()


def test_served_app_does_not_collect_garbage_after_every_run():
    """The app as served from the repository (``streamlit run app.py``, ``make demo``) reads
    ``.streamlit/config.toml``: no full ``gc.collect(2)`` after every script run, which on the demo
    holds the GIL 120-240 ms after a fragment rerun while its last messages (the what-if) wait."""
    code = "from streamlit import config; print(config.get_option('runner.postScriptGC'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_classify_remove_accuracy_changes(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser, page = open_page(p, 1440, 1700)
        page.goto(url)
        # the demo is created and embedded on first start (small demo: seconds on a warm cache)
        expect(page.get_by_text("It's a", exact=False).first).to_be_visible(timeout=240_000)
        before = metric_value(page, "Tuning accuracy")
        assert re.fullmatch(r"\d+\.\d%", before)

        # classify another picture from the gallery
        page.get_by_role("button", name=re.compile(r"^(airplane|automobile|bird|cat|deer|dog|frog|"
                                                   r"horse|ship|truck)")).nth(2).click()
        expect(page.get_by_text("labeled picture #", exact=False).first).to_be_visible()
        expect(page.get_by_text("image weight", exact=False).first).to_be_visible()

        # Curate: select the most harmful pair, preview, remove
        page.get_by_role("link", name="Curate").click()
        expect(page.get_by_text("Anchor pairs, most harmful first")).to_be_visible()
        expect(page.get_by_text("Selected pairs", exact=False)).to_be_visible(timeout=120_000)
        page.locator('[data-testid="stMultiSelect"]').first.locator("input").click()
        page.get_by_role("option", name=re.compile(r"^#\d+")).first.click()
        page.keyboard.press("Escape")
        expect(page.get_by_text("What if", exact=False)).to_be_visible(timeout=30_000)
        page.get_by_role("button", name=re.compile(r"Remove 1 pair")).click()
        expect(page.get_by_text("re-scored in", exact=False)).to_be_visible()
        after = metric_value(page, "Tuning accuracy")
        assert after != before, "removing the most harmful pair did not change the tuning accuracy"
        assert metric_value(page, "Test accuracy")  # shown beside it (it may or may not move)

        # back to the explanation, with the new accuracy: the README screenshot
        page.get_by_role("link", name="Classify & explain").click()
        expect(page.get_by_text("image weight", exact=False).first).to_be_visible()
        assert metric_value(page, "Tuning accuracy") == after
        page.wait_for_timeout(1500)  # let images and charts settle
        shot = Path(os.environ.get("ROSETTA_SCREENSHOT") or tmp / "dashboard.jpg")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), type="jpeg", quality=80)
        browser.close()
    assert shot.stat().st_size < 500_000
    ws = store.Workspace(store.list_workspaces(tmp / "ws")[0])
    assert [e.kind for e in ws.edits()] == ["remove"]
