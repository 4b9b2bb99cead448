"""Settings: an encoder change is estimated (counted with the cache, speed measured) before the
user confirms it; a recompute shows live progress on the page itself, up to "Model ready"."""
from __future__ import annotations

import re
import uuid

from streamlit.testing.v1 import AppTest

from app_helpers import APP, open_page, run_ready, texts
from core import store
from core.cache import EmbeddingCache
from core.embedded import embed
from core.live import LiveModel, WorkspaceVectors


def test_an_encoder_change_is_estimated_and_waits_for_confirmation(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=300))
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    cache = EmbeddingCache()
    # captions no cache has seen: more than the few the estimate embeds to measure the speed, so
    # a second try still has some to embed
    image = ws.all_pairs()[0].image
    LiveModel(ws, WorkspaceVectors(ws, cache)).add([(image, f"a dog {uuid.uuid4().hex}") for _ in range(20)])
    captions = list(dict.fromkeys(p.caption for p in ws.all_pairs()))
    missing = embed("mpnet", captions, cache=cache, compute=False).missing.size
    assert missing >= 20

    at.switch_page("pages/settings.py").run()
    at.selectbox[1].set_value("mpnet")
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    said = texts(at)
    assert f"{missing:,} of {len(captions):,} captions" in said and "per second measured" in said
    assert ws.settings()["text_encoder"] == "minilm"  # nothing changes before the user confirms

    at.button(key="settings_cancel").click().run()
    assert ws.settings()["text_encoder"] == "minilm" and "not in the cache yet" not in texts(at)

    at.selectbox[1].set_value("mpnet")
    at.button[0].click()
    at.run()
    at.button(key="settings_confirm").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert ws.settings()["text_encoder"] == "mpnet"

    # a change asked in one workspace is never applied to another one switched to meanwhile
    other = store.create_workspace("other", [(p.image, p.caption) for p in ws.all_pairs()[:40]],
                                   [(i.image, i.label) for i in ws.eval_items()], root=demo_root)
    at.session_state["settings_pending"] = ({**ws.settings(), "text_encoder": "minilm", "k": 7},
                                             "About a minute of embedding.", str(ws.path))
    at.run()
    assert [b for b in at.button if b.key == "settings_confirm"]  # asked in this workspace: shown
    at.selectbox(key="sidebar_ws").set_value(other.id).run()
    at.run()
    assert not [b for b in at.button if b.key == "settings_confirm"]
    assert other.settings()["text_encoder"] == "minilm" and other.settings()["k"] != 7   # the default, untouched
    assert ws.settings()["text_encoder"] == "mpnet" and ws.settings()["k"] != 7




def test_settings_shows_live_progress_until_the_model_is_ready(server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser, page = open_page(p)
        page.goto(server[0] + "/settings")
        expect(page.get_by_text("Model ready", exact=False)).to_be_visible(timeout=240_000)
        box = page.get_by_label(re.compile("^k — nearest anchors"))
        box.fill("37")
        page.get_by_role("button", name="Apply and recompute").click()
        # no click after this: the page itself must follow the recompute to its end
        expect(page.get_by_text(re.compile(r"Model ready: .* k = 37\."))).to_be_visible(timeout=120_000)
        browser.close()
