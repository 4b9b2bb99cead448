"""End to end in headless chromium (Playwright): on the Map page, box-select a region of the map by
dragging on plotly's drag layer, see the what-if preview, remove, see the accuracy change, undo, see
it return."""
from __future__ import annotations

import re

import numpy as np
import pytest

from app_helpers import metric_value, open_page
from core import layout as L
from core import store
from core.cache import EmbeddingCache
from core.live import LiveModel, WorkspaceVectors

ACC = "Tuning accuracy"




def test_map_box_select_preview_remove_undo(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    with sync_playwright() as p:
        browser, page = open_page(p, 1400, 1600)
        page.goto(url)
        expect(page.get_by_text("It's a", exact=False).first).to_be_visible(timeout=240_000)
        page.get_by_role("link", name="Map").click()
        # the UMAP layout and the flags are computed in the background; the page says when ready
        expect(page.get_by_text("UMAP layout of the photo embeddings", exact=False).first).to_be_visible(timeout=240_000)
        expect(page.get_by_text("Computing flags", exact=False)).to_have_count(0, timeout=240_000)
        expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0)  # no run in flight
        page.wait_for_timeout(1000)
        before = metric_value(page, ACC)

        # a region to select: the pairs left of some x on the map whose removal changes the accuracy
        # by the engine's own what-if (the map's layout is read from the workspace's cache)
        ws = store.Workspace(store.list_workspaces(tmp / "ws")[0])
        vec = WorkspaceVectors(ws, EmbeddingCache())
        live = LiveModel(ws, vec)
        used, rows = np.unique(vec.pair_img[vec.ok], return_inverse=True)
        ids_shown = vec.pair_ids[vec.ok]
        xy = L.spread_copies(L.cached_layout(vec.img[used], "umap", ws.state_dir), rows.ravel())
        order = np.sort(xy[:, 0])
        for frac in (0.3, 0.4, 0.2, 0.5, 0.15):
            # cut in the widest gap near that fraction, so no point sits within a pixel of the edge
            lo = int(frac * len(order)) - 10
            i = lo + int(np.argmax(np.diff(order[lo:lo + 21])))
            cut = float(order[i] + order[i + 1]) / 2
            ids = ids_shown[xy[:, 0] < cut].tolist()
            what = live.what_if_remove(ids)
            if what.after.tune != what.before.tune:
                break
        else:
            pytest.fail("no left part of the map changes the accuracy")

        # box select: plotly's "Box Select" tool, then a mouse drag on the drag layer from the plot
        # area's left edge to the cut, over its full height
        plot = page.locator(".js-plotly-plot").first
        plot.hover()
        page.locator('.modebar-btn[data-title="Box Select"]').first.click()
        area = page.evaluate("""(cut) => {
            const gd = document.querySelector('.js-plotly-plot'), r = gd.getBoundingClientRect();
            const xa = gd._fullLayout.xaxis, s = gd._fullLayout._size;
            return {left: r.left + s.l, top: r.top + s.t, height: s.h, cut: r.left + xa._offset + xa.l2p(cut)};
        }""", cut)
        x0, y0, y1 = area["left"] + 1, area["top"] + 1, area["top"] + area["height"] - 1
        page.mouse.move(x0, y0)
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(x0 + (area["cut"] - x0) * i / 10, y0 + (y1 - y0) * i / 10)
        page.mouse.up()

        preview = page.locator('[data-testid="stAlert"]', has_text="What if").first
        try:
            expect(preview).to_be_visible(timeout=60_000)
        finally:
            page.screenshot(path=str(tmp / "after_select.png"), full_page=True)
        predicted = re.search(r"tuning \S+ → (\d+\.\d%)", preview.inner_text()).group(1)
        remove = page.get_by_role("button", name=re.compile(r"Remove [\d,]+ pair"))
        n = int(re.search(r"Remove ([\d,]+)", remove.inner_text()).group(1).replace(",", ""))
        remove.click()
        expect(page.get_by_text("re-scored in", exact=False).first).to_be_visible()
        after = metric_value(page, ACC)
        assert n == len(ids)
        assert after == predicted == f"{100 * what.after.tune:.1f}%" != before, (before, predicted, after)
        assert [e.kind for e in ws.edits()] == ["remove"] and sorted(ws.edits()[0].pair_ids) == sorted(ids)

        page.get_by_role("button", name="Undo").click()
        expect(page.locator('[data-testid="stMetric"]', has_text=ACC)
               .locator('[data-testid="stMetricValue"]')).to_have_text(before)
        browser.close()
    assert [e.kind for e in ws.edits()] == ["remove", "undo"]
