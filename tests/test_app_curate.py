"""AppTest: Curate — what-if, remove -> numbers change everywhere, undo/redo, stale sessions, Settings."""
from __future__ import annotations

import numpy as np
from streamlit.testing.v1 import AppTest

from app_helpers import APP, open_curate, run_ready, texts
from core import store
from core.cache import EmbeddingCache
from core.live import LiveModel, WorkspaceVectors


def _pct(x):
    return f"{100 * x:.1f}%"


def _metrics(at) -> dict:
    return {m.label.split(" (")[0]: m.value for m in at.metric}


def _ws(root) -> store.Workspace:
    return store.Workspace(store.list_workspaces(root)[0])


def _selector(at):
    return [m for m in at.multiselect if m.key and m.key.startswith("curate_ids")][0]


def _button(at, prefix: str):
    return [b for b in at.button if b.label.startswith(prefix) or (b.key or "").startswith(prefix)][0]


def test_remove_changes_the_numbers_and_undo_restores_them(demo_root):
    at = open_curate(run_ready(AppTest.from_file(APP, default_timeout=120)))
    assert "Anchor pairs, most harmful first" in texts(at)
    # the engine's own answer for the most harmful pair on the tuning part
    ws = _ws(demo_root)
    live = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    start = live.metrics()
    inf, _ = live.influence()
    table = live.influence_rows(inf)
    moving = np.flatnonzero(table["loo_delta"] != 0)
    assert moving.size, "no pair changes the tuning accuracy on the small demo"
    pid = int(table["pair_id"][moving[0]])
    expected_tune = start.tune + float(table["loo_delta"][moving[0]])
    shown = _metrics(at)
    assert shown["Test accuracy"] == _pct(start.test) and shown["Tuning accuracy"] == _pct(start.tune)

    _selector(at).set_value([pid])
    at.run()
    assert f"→ {_pct(expected_tune)}" in texts(at)  # the what-if preview (tuning)
    assert len(ws.edits()) == 0  # a preview commits nothing

    _button(at, "remove_selected").click()
    at.run()
    assert _metrics(at)["Tuning accuracy"] == _pct(expected_tune)
    assert "Removed pair #" in texts(at) and "re-scored in" in texts(at)
    assert [e.kind for e in ws.edits()] == ["remove"] and pid not in ws.active_pair_ids()
    assert _selector(at).value == []  # no selection survives an edit
    assert _metrics(at)["Anchor pairs"] == f"{len(ws.active_pair_ids()):,}"
    assert f"{len(ws.active_pair_ids()):,} anchor pairs" in " ".join(c.value for c in at.sidebar.caption)

    assert "Undo: remove of 1 pair (#1)" in texts(at)  # the button names the edit it undoes
    _button(at, "Undo").click()
    at.run()
    assert _metrics(at)["Tuning accuracy"] == _pct(start.tune) and pid in ws.active_pair_ids()
    _button(at, "Redo").click()
    at.run()
    assert _metrics(at)["Tuning accuracy"] == _pct(expected_tune) and pid not in ws.active_pair_ids()
    assert [h["edit"].split()[0] for h in ws.history(live.key)] == ["start", "remove", "undo", "redo"]
    assert not at.exception


def test_a_stale_session_is_told_and_undoes_nothing(demo_root):
    """Two browser sessions on one server: session 2 offers 'Undo #1', session 1 then removes
    another pair; session 2's click must not undo session 1's newer edit."""
    one = open_curate(run_ready(AppTest.from_file(APP, default_timeout=120)))
    ws = _ws(demo_root)
    ids = sorted(ws.active_pair_ids())
    _selector(one).set_value([ids[0]])
    one.run()
    _button(one, "remove_selected").click()
    one.run()
    two = open_curate(run_ready(AppTest.from_file(APP, default_timeout=120)))
    assert "Undo: remove of 1 pair (#1)" in texts(two)
    _selector(one).set_value([ids[1]])
    one.run()
    _button(one, "remove_selected").click()
    one.run()
    _button(two, "Undo").click()
    two.run()
    assert any("changed in another session" in e.value for e in two.error)
    assert ids[0] not in ws.active_pair_ids() and ids[1] not in ws.active_pair_ids()
    assert [e.kind for e in ws.edits()] == ["remove", "remove"]


def test_an_idle_rerun_opens_no_connection_and_replays_nothing(demo_root):
    from ui import state

    at = open_curate(run_ready(AppTest.from_file(APP, default_timeout=120)))
    ws = state.workspace(store.list_workspaces(demo_root)[0])
    before = dict(ws.stats)
    for _ in range(3):
        at.run()
    assert ws.stats == before
    _selector(at).set_value([sorted(ws.active_pair_ids())[0]])
    at.run()
    _button(at, "remove_selected").click()
    at.run()
    assert ws.stats["connections"] == before["connections"]
    assert ws.stats["replays"] - before["replays"] <= 1  # the edit's own transaction reads the log once


def test_settings_reject_k_larger_than_the_anchor_set(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    at.switch_page("pages/settings.py").run()
    n = len(_ws(demo_root).active_pair_ids())
    at.number_input[0].set_value(n + 1000)
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception
    assert any("more than the" in e.value for e in at.error)
    assert _ws(demo_root).settings()["k"] != n + 1000  # nothing stored


def test_workspaces_duplicate_switches_and_delete(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    at.switch_page("pages/workspaces.py").run()
    at.text_input[0].set_value("demo copy")
    [b for b in at.button if b.label == "Duplicate"][0].click()
    at.run()
    assert not at.exception
    assert sorted(p.name for p in store.list_workspaces(demo_root)) == ["demo", "demo-copy"]
    assert at.session_state["ws_id"] == "demo-copy"  # the user now works in the copy
    assert "Current: demo copy" in texts(at)
    at.switch_page("pages/workspaces.py").run()
    at.checkbox[0].check()
    [b for b in at.button if b.label == "Delete"][0].click()
    at.run()
    assert not at.exception
    assert [p.name for p in store.list_workspaces(demo_root)] == ["demo"]
