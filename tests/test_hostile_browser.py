"""Stored XSS / markdown injection, in a real browser (Debian chromium + Playwright): a workspace
whose name, captions and image file names carry script, HTML and markdown payloads. Visiting
Classify & explain, Curate, Data and Workspaces must run nothing (the title stays), fetch nothing
outside the app's own origin, and show the payloads as text."""
from __future__ import annotations

import csv
import re
import shutil

import pytest

from app_helpers import free_port, open_page, start_server, stop_server
from core import data as D
from core import demo, store

TITLE_PAYLOAD = "<iframe srcdoc=\"<script>parent.document.title='x'</script>\">"
PAYLOADS = [TITLE_PAYLOAD, "<img src=x onerror=alert(1)>", "![x](http://127.0.0.1:9/leak.png)",
            "[click](javascript:alert(1))"]
NAME_PAYLOADS = ["<img src=x onerror=alert(1)>", "[click](javascript:alert(1))", "**bold** _it_ $x$"]
N_IMAGES = 40


@pytest.fixture
def hostile_server(data_root, tmp_path):
    src = sorted((data_root / "flickr8k" / "images").glob("*.jpg"))[:N_IMAGES]
    folder = tmp_path / "set"
    folder.mkdir()
    with open(folder / "captions.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "caption"])
        for i, path in enumerate(src):
            name = f"{NAME_PAYLOADS[i % len(NAME_PAYLOADS)]} {i}.jpg"
            shutil.copy(path, folder / name)
            out.writerow([name, f"{PAYLOADS[i % len(PAYLOADS)]} a photo {i}"])
    pairs = D.load_pairs_folder(folder)
    assert len(pairs) == N_IMAGES, pairs.report.rows()
    ws_root = tmp_path / "ws"
    store.create_from_pairset(NAME_PAYLOADS[0], pairs, demo.demo_labeled_items(5), copy=True, root=ws_root)
    port = free_port()
    proc = start_server(port, ws_root, tmp_path / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def test_payloads_render_as_text_and_fetch_nothing(hostile_server):
    from playwright.sync_api import expect, sync_playwright

    url = hostile_server
    elsewhere: list[str] = []
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser, page = open_page(p, 1400, 1600)
        page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:", "about:"))
                else elsewhere.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        expect(page.get_by_text("It's a", exact=False).first).to_be_visible(timeout=240_000)
        title = page.title()
        # the explanation lists anchor pairs: their captions carry the payloads, shown as text
        expect(page.get_by_text("image weight", exact=False).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("a photo", exact=False).first).to_be_visible()
        page.wait_for_timeout(2000)
        shown = page.locator("body").inner_text()
        assert any(payload in shown for payload in PAYLOADS), "no payload caption shown as text"

        page.get_by_role("link", name="Curate").click()
        expect(page.get_by_text("Anchor pairs, most harmful first")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(3000)

        page.get_by_role("link", name="Data").click()
        expect(page.get_by_text(re.compile(r"\d pairs? from \d"))).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2000)
        shown = page.locator("body").inner_text()
        for payload in PAYLOADS:  # every caption on the first page of the grid, verbatim
            assert payload in shown, f"{payload!r} is not shown as text on the Data page"

        page.get_by_role("link", name="Workspaces").click()
        expect(page.get_by_text("Current:", exact=False)).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1000)
        assert f"Current: {NAME_PAYLOADS[0]}" in page.locator("body").inner_text()

        assert page.title() == title and page.title() != "x"
        assert page.locator("iframe[srcdoc]").count() == 0
        assert not dialogs, dialogs
        browser.close()
    assert not elsewhere, f"requests outside the app: {elsewhere}"
