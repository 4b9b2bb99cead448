"""Kill the server (SIGKILL) right after an edit, start it again: the edit is there."""
from __future__ import annotations

import re

from app_helpers import free_port, metric_value, open_page, start_server, stop_server
from core import store


def test_edit_survives_a_killed_server(data_root, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    spaces = tmp_path / "ws"
    port = free_port()
    proc = start_server(port, spaces, tmp_path / "server.log")
    try:
        with sync_playwright() as p:
            browser, page = open_page(p)
            page.goto(f"http://127.0.0.1:{port}")
            expect(page.get_by_text("image weight", exact=False).first).to_be_visible(timeout=240_000)
            n_before = int(metric_value(page, "Anchor pairs").replace(",", ""))
            # one caption's Remove ("Remove" or "Remove #id"), not a photo's "Remove all N"
            page.get_by_role("button", name=re.compile(r"Remove( #\d+)?$")).first.click()
            done = page.get_by_text("Removed pair #", exact=False).first
            expect(done).to_be_visible()
            removed = int(re.search(r"Removed pair #(\d+)", done.inner_text()).group(1))
            browser.close()
    finally:
        stop_server(proc, hard=True)  # SIGKILL: no clean shutdown

    proc = start_server(port, spaces, tmp_path / "server.log")
    try:
        with sync_playwright() as p:
            browser, page = open_page(p)
            page.goto(f"http://127.0.0.1:{port}/curate")  # a page URL first, on a fresh server
            expect(page.get_by_text("Anchor pairs, most harmful first")).to_be_visible(timeout=240_000)
            assert int(metric_value(page, "Anchor pairs").replace(",", "")) == n_before - 1
            expect(page.get_by_role("button", name="Undo")).to_be_enabled()
            browser.close()
    finally:
        stop_server(proc)
    ws = store.Workspace(store.list_workspaces(spaces)[0])
    assert removed not in ws.active_pair_ids()
    assert [e.kind for e in ws.edits()] == ["remove"]
