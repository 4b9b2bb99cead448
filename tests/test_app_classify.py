"""AppTest: Classify & explain — the prediction, its contributing pairs, removing one, bad uploads."""
from __future__ import annotations

import io

from streamlit.testing.v1 import AppTest

from app_helpers import APP, run_ready, texts
from core import store


def test_first_start_creates_demo_and_explains(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    assert [p.name for p in store.list_workspaces(demo_root)] == ["demo"]
    shown = texts(at)
    assert "It's a **" in shown  # the prediction
    assert "pair #" in shown and "image weight" in shown and "text weight" in shown
    metrics = {m.label.split(" (")[0]: m.value for m in at.metric}
    assert metrics["Anchor pairs"] and metrics["Test accuracy"] and metrics["Tuning accuracy"]
    before = metrics["Test accuracy"]
    # pick another test picture from the gallery
    at.button(key=[b.key for b in at.button if b.key and b.key.startswith("pick_")][1]).click()
    at.run()
    assert "It's a **" in texts(at)
    # remove the top contributing pair from the explanation
    rm = [b for b in at.button if b.key and b.key.startswith("rm_")]
    assert rm, "no Remove button next to the contributing pairs"
    rm[0].click()
    at.run()
    shown = texts(at)
    assert "Removed pair #" in shown and "re-scored in" in shown
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    assert len(ws.edits()) == 1 and ws.edits()[0].kind == "remove"
    assert ws.edits()[0].metrics["test"] is not None
    assert not at.exception
    assert before  # the metric was there before the edit


def test_bad_uploads_are_messages(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    up = at.file_uploader(key="query_upload")
    up.set_value(("broken.jpg", b"\xff\xd8\xff this is not a jpeg", "image/jpeg"))
    at.run()
    assert not at.exception
    assert any("could not be used as a picture" in e.value for e in at.error)
    # a real picture works
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    at.file_uploader(key="query_upload").set_value(("red.png", buf.getvalue(), "image/png"))
    at.run()
    assert not at.exception and "It's a **" in texts(at)
