"""End to end in headless chromium (Playwright): on the Map page, box-select a region of the map by
dragging on plotly's drag layer, see the what-if preview, remove, see the accuracy change, undo, see
it return."""
from __future__ import annotations

import re

import pytest

from app_helpers import free_port, metric_value, open_page, start_server, stop_server
from core import workspace as W

ACC = "Accuracy on the evaluation set"


@pytest.fixture
def server(data_root, tmp_path):
    port = free_port()
    proc = start_server(port, tmp_path / "ws", tmp_path / "server.log")
    yield f"http://127.0.0.1:{port}", tmp_path
    stop_server(proc)


def test_map_box_select_preview_remove_undo(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser, page = open_page(p, 1400, 1600)
        page.goto(url)
        expect(page.get_by_text("It's a", exact=False).first).to_be_visible(timeout=240_000)
        page.get_by_role("link", name="Map").click()
        # the UMAP layout and the flags are computed in the background; the page says when ready
        expect(page.get_by_text("UMAP of the photo embeddings", exact=False).first).to_be_visible(timeout=240_000)
        expect(page.get_by_text("flags:", exact=False)).to_have_count(0, timeout=240_000)
        before = metric_value(page, ACC)

        # box select: pick plotly's "Box Select" tool, then drag across the left part of the plot
        plot = page.locator(".js-plotly-plot").first
        plot.hover()
        page.locator('.modebar-btn[data-title="Box Select"]').first.click()
        drag = plot.locator(".nsewdrag").first
        box = drag.bounding_box()
        x0, y0 = box["x"] + 0.02 * box["width"], box["y"] + 0.02 * box["height"]
        x1, y1 = box["x"] + 0.45 * box["width"], box["y"] + 0.98 * box["height"]
        page.mouse.move(x0, y0)
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
        page.mouse.up()

        preview = page.locator('[data-testid="stAlert"]', has_text="What if").first
        expect(preview).to_be_visible(timeout=60_000)
        predicted = re.search(r"→ (\d+\.\d%)", preview.inner_text()).group(1)
        remove = page.get_by_role("button", name=re.compile(r"Remove [\d,]+ pair"))
        n = int(re.search(r"Remove ([\d,]+)", remove.inner_text()).group(1).replace(",", ""))
        remove.click()
        expect(page.get_by_text("re-scored in", exact=False).first).to_be_visible()
        after = metric_value(page, ACC)
        assert after == predicted and after != before, (before, predicted, after)
        ws = W.list_workspaces(tmp / "ws")[0]
        assert [e.kind for e in ws.edits()] == ["remove"] and len(ws.edits()[0].pair_ids) == n

        page.get_by_role("button", name="Undo").click()
        expect(page.locator('[data-testid="stMetric"]', has_text=ACC)
               .locator('[data-testid="stMetricValue"]')).to_have_text(before)
        browser.close()
    assert [e.kind for e in ws.edits()] == ["remove", "undo"]
