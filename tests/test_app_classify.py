"""AppTest: Classify & explain — the prediction, its contributing pairs, removing one, bad uploads."""
from __future__ import annotations

import io
import re

from streamlit.testing.v1 import AppTest

from app_helpers import APP, run_ready, texts
from core.asif import indefinite_article as article
from ui.widgets import count
from core import store


def test_first_start_creates_demo_and_explains(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    assert [p.name for p in store.list_workspaces(demo_root)] == ["demo"]
    shown = texts(at)
    assert re.search(r"It's an? \*\*", shown)  # the prediction
    assert "pair #" in shown and "image weight" in shown and "text weight" in shown
    metrics = {m.label.split(" (")[0]: m.value for m in at.metric}
    assert metrics["Anchor pairs"] and metrics["Test accuracy"] and metrics["Tuning accuracy"]
    before = metrics["Test accuracy"]
    # pick another test picture from the gallery
    at.button(key=[b.key for b in at.button if b.key and b.key.startswith("pick_")][1]).click()
    at.run()
    assert re.search(r"It's an? \*\*", texts(at))
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


def test_why_draws_only_the_open_class_and_keeps_it_open_after_a_remove(demo_root):
    """Only the open tab of "Why …?" is drawn (hidden tabs' pairs would be sent and drawn on every
    run: most of the page); another tab draws its own class's pairs; a Remove there keeps it open."""
    at = run_ready(AppTest.from_file(APP, default_timeout=120))

    def drawn() -> set[str]:  # the classes whose Remove buttons are on the page
        return {b.key.split("_")[1] for b in at.button if (b.key or "").startswith(("rm_", "rmphoto_"))}

    labels = [t.label for t in at.tabs]
    assert len(labels) == 3 and len(drawn()) == 1, (labels, drawn())
    first = drawn()
    at.session_state["classify_why_tab"] = labels[1]
    at.run()
    second = drawn()
    assert len(second) == 1 and second != first
    [b for b in at.button if (b.key or "").startswith("rm_")][0].click().run()
    assert "Removed pair #" in texts(at) and not at.exception
    assert drawn() == second


def test_bad_uploads_are_messages(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    from PIL import Image

    good = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(good, format="PNG")
    big = io.BytesIO()
    Image.new("L", (12000, 6000), 0).save(big, format="PNG")
    for name, data in (("broken.jpg", b"\xff\xd8\xff this is not a jpeg"), ("empty.png", b""),
                       ("cut.png", good.getvalue()[:60]), ("notes.gif", b"GIF89a<script>x</script>"),
                       ("huge.png", big.getvalue())):
        at.file_uploader(key="query_upload").set_value((name, data, "image/png"))
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        assert errors and all("could not be used as a picture" in e for e in errors), (name, errors)
        for bad in ("b'", "\\x", " object at 0x", "Error(", "Traceback"):
            assert bad not in texts(at), (name, bad)
    # a real picture works
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    at.file_uploader(key="query_upload").set_value(("red.png", buf.getvalue(), "image/png"))
    at.run()
    assert not at.exception and re.search(r"It's an? \*\*", texts(at))


def test_articles_and_counts():
    assert [f"{article(w)} {w}" for w in ("airplane", "automobile", "cat", "elephant", "hour", "unicorn",
                                           "umbrella", "one-way sign")] == \
        ["an airplane", "an automobile", "a cat", "an elephant", "an hour", "a unicorn", "an umbrella",
         "a one-way sign"]
    assert [count(n, "pair") for n in (0, 1, 2, 1000)] == ["0 pairs", "1 pair", "2 pairs", "1,000 pairs"]
    assert count(1, "prediction") + " changed" == "1 prediction changed"


def _top_bars(at):
    """(class names top to bottom, their probabilities in %) of the top-5 probability bars."""
    bars = [p.proto for p in at.get("progress") if " · " in p.proto.text]
    assert len(bars) == 5, [p.proto.text for p in at.get("progress")]
    names = [b.text.split(" · ")[0] for b in bars]
    values = [float(b.text.split(" · ")[1].rstrip("%")) for b in bars]
    return names, values


def test_verdict_article_and_top5_order_follow_the_current_picture(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    seen = set()
    picks = [b.key for b in at.button if b.key and b.key.startswith("pick_")]
    for key in picks[:4]:
        at.button(key=key).click().run()
        shown = texts(at)
        pred = re.search(r"It's (an?) \*\*([^*]+)\*\*", shown)
        assert pred, shown
        assert pred.group(1) == ("an" if pred.group(2)[0] in "aeiou" else "a")
        labels, values = _top_bars(at)
        assert labels[0] == pred.group(2), "the top bar is not the prediction of the current picture"
        assert values == sorted(values, reverse=True), "bars not ordered by the current picture's scores"
        seen.add(tuple(labels))
    assert len(seen) > 1, "four pictures, one class order: the test cannot tell"
