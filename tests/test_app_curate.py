"""AppTest: Curate — what-if, remove -> accuracy changes, undo -> it returns, redo; Settings k check."""
from __future__ import annotations

import time

from streamlit.testing.v1 import AppTest

from app_helpers import APP, run_ready, texts
from core import workspace as W


def _pct(x):
    return f"{100 * x:.1f}%"


def _acc(at):
    return {m.label: m.value for m in at.metric}["Accuracy on the evaluation set"]


def _open_curate(at):
    at.switch_page("pages/curate.py").run()
    deadline = time.time() + 120
    while "Measuring each pair's influence" in texts(at) and time.time() < deadline:
        time.sleep(0.3)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_remove_changes_accuracy_and_undo_restores_it(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    at = _open_curate(at)
    assert "Anchor pairs, most harmful first" in texts(at)
    # the engine's own answer for the most harmful pair, to compare with what the page shows
    ws = W.list_workspaces(demo_root)[0]
    live = W.LiveModel(W.Bank(ws), ws.active_pair_ids())
    start = live.accuracy
    rows = [r for r in live.influence() if r["loo_delta"] != 0]
    assert rows, "no pair changes the accuracy on the small demo"
    pid = rows[0]["pair_id"]
    expected = start + rows[0]["loo_delta"]
    assert _acc(at) == _pct(start)

    at.multiselect(key="curate_ids").set_value([pid])
    at.run()
    assert f"→ **{_pct(expected)}**" in texts(at)  # the what-if preview
    assert len(ws.edits()) == 0  # a preview commits nothing

    at.button(key="remove_selected").click()
    at.run()
    assert _acc(at) == _pct(expected)
    assert f"→ **{_pct(expected)}**" in texts(at) and "re-scored in" in texts(at)
    assert [e.kind for e in ws.edits()] == ["remove"] and pid not in ws.active_pair_ids()

    [b for b in at.button if b.label == "Undo"][0].click()
    at.run()
    assert _acc(at) == _pct(start)
    assert pid in ws.active_pair_ids()

    [b for b in at.button if b.label == "Redo"][0].click()
    at.run()
    assert _acc(at) == _pct(expected) and pid not in ws.active_pair_ids()
    hist = ws.history()
    assert [h["edit"].split()[0] for h in hist] == ["start", "remove", "undo", "redo"]
    assert not at.exception


def test_settings_reject_k_larger_than_anchor_set(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    at.switch_page("pages/settings.py").run()
    n = W.list_workspaces(demo_root)[0].counts()["pairs"]
    at.number_input[0].set_value(n + 1000)
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception
    assert any("larger than" in e.value for e in at.error)
    assert W.list_workspaces(demo_root)[0].settings()["k"] != n + 1000  # nothing stored


def test_workspaces_duplicate_and_delete(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    at.switch_page("pages/workspaces.py").run()
    at.text_input[0].set_value("demo copy")
    [b for b in at.button if b.label == "Duplicate"][0].click()
    at.run()
    assert not at.exception
    assert sorted(w.id for w in W.list_workspaces(demo_root)) == ["demo", "demo-copy"]
    at.switch_page("pages/workspaces.py").run()
    at.checkbox[0].check()
    [b for b in at.button if b.label == "Delete"][0].click()
    at.run()
    assert not at.exception
    assert [w.id for w in W.list_workspaces(demo_root)] == ["demo"]
