"""AppTest: Curate grouped by photo (exact leave-photo-out, one edit for all captions) and Align's
suspicious pairs (rank beside the score, sent to Curate as its selection)."""
from __future__ import annotations

import time

import pytest
from streamlit.testing.v1 import AppTest

from app_helpers import APP, rerun_until, run_ready, switch_and_wait, texts
from core import store
from core.cache import EmbeddingCache
from core.live import LiveModel, WorkspaceVectors

PHOTO_DELTA = "Δ tuning accuracy if the photo is removed"


def _open(at, page: str, ready_text: str, timeout: float = 180.0):
    return switch_and_wait(at, page, lambda a: ready_text in texts(a)
                           or any(m.label == ready_text for m in a.metric), timeout)


def _frame(at, column):
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with {column!r}")


def _ws(root) -> store.Workspace:
    return store.Workspace(store.list_workspaces(root)[0])


def test_group_by_photo_shows_the_exact_photo_change_and_removes_all_its_captions(demo_root):
    at = _open(run_ready(AppTest.from_file(APP, default_timeout=120)), "pages/curate.py", "Select one or more rows")
    ws = _ws(demo_root)
    live = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    photos: dict[str, list[int]] = {}
    table = live.influence_rows(live.influence()[0])
    for ref, pair_id in zip(table["image"], table["pair_id"].tolist()):
        photos.setdefault(ref, []).append(pair_id)
    exact = {}
    for ref, ids in photos.items():
        w = live.what_if_remove(ids)
        exact[ref] = w.after.tune - w.before.tune
    worst = max(exact, key=exact.get)

    at.toggle(key="curate_by_photo").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    table = _frame(at, PHOTO_DELTA)
    assert len(table) == len(photos)  # one row per photo, not one per caption
    assert table[PHOTO_DELTA].iloc[0] == pytest.approx(100 * exact[worst])  # exact, most harmful first
    assert sorted(table[PHOTO_DELTA]) == pytest.approx(sorted(100 * v for v in exact.values()))

    picker = [m for m in at.multiselect if (m.key or "").startswith("curate_photos")][0]
    picker.set_value([worst]).run()
    n = len(photos[worst])
    assert f"these {n} pairs were removed" in texts(at)
    remove = [b for b in at.button if (b.key or "").startswith("remove_selected")][0]
    assert remove.label == f"Remove {n} pairs"
    remove.click().run()
    assert not at.exception, [e.value for e in at.exception]
    edits = ws.edits()
    assert [e.kind for e in edits] == ["remove"]  # the whole photo is one edit
    assert not set(photos[worst]) & ws.active_pair_ids()

    at.text_input(key="curate_search").set_value("no caption says zqxjv").run()  # nothing matches
    assert not at.exception, [e.value for e in at.exception]
    assert len(_frame(at, PHOTO_DELTA)) == 0


def test_suspicious_pairs_show_their_rank_and_go_to_curate_as_the_selection(demo_root):
    at = _open(run_ready(AppTest.from_file(APP, default_timeout=180)), "pages/align.py", "Linear CKA")
    at.button(key="align_run_suspicious").click().run()
    assert not at.exception, [e.value for e in at.exception]
    sus = _frame(at, "rank")
    n = len(_ws(demo_root).active_pair_ids())
    assert sus["rank"].iloc[0] == f"1 of {n:,}" and sus["score"].is_monotonic_decreasing
    ranks = [int(r.split(" of ")[0].replace(",", "")) for r in sus["rank"]]
    assert ranks == sorted(ranks) and ranks[-1] >= 20  # ranks resolve what the rounded scores may not
    sent = [int(i) for i in sus["pair"]]

    at.button(key="align_send").click().run()
    rerun_until(at, lambda a: any((m.key or "").startswith("curate_ids") for m in a.multiselect),
                "Curate's pair picker (its influence table is computed in the background first)")
    picker = [m for m in at.multiselect if (m.key or "").startswith("curate_ids")][0]
    assert sorted(picker.value) == sorted(sent)
    assert f"{len(sent)} pairs from Align's suspicious pairs selected below." in texts(at)
    assert f"these {len(sent)} pairs were removed" in texts(at)  # the what-if of exactly these pairs


def test_why_list_shows_one_entry_per_photo_and_removes_all_its_captions_at_once(demo_root):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    photo = [b for b in at.button if (b.key or "").startswith("rmphoto_")]
    assert photo, "no photo with several captions among the pairs behind the answer"
    ws = _ws(demo_root)
    image_of = {p.pair_id: p.image for p in ws.all_pairs()}
    first = int(photo[0].key.rsplit("_", 1)[1])
    n = int(photo[0].label.split()[-1])
    # each caption line of that entry has its own button; the photo appears in no other entry
    tab = photo[0].key.split("_")[1]
    singles = [int(b.key.rsplit("_", 1)[1]) for b in at.button if (b.key or "").startswith(f"rm_{tab}_")]
    same = [i for i in singles if image_of[i] == image_of[first]]
    assert len(same) == n
    photo[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    edits = ws.edits()
    assert [e.kind for e in edits] == ["remove"]
    assert not set(same) & ws.active_pair_ids()


def test_influence_started_by_a_page_waits_until_its_run_is_over(data_root, tmp_path):
    """The influence table's seconds of pure Python hold the GIL: started by a page (Curate after an
    edit), it starts once that script run is over, so that the rest of the run and the sending of
    the page do not wait for it (0.5-1 s at 35,000 pairs); then it is computed."""
    script = f"""
import time
import streamlit as st
from core import demo
from core.cache import EmbeddingCache
from core.live import LiveModel, WorkspaceVectors
from ui import state

ws = demo.create_demo_workspace(n_images=40, per_class=5, root={str(tmp_path)!r})
model = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
state.start_influence(model)
deadline = time.time() + 5  # the small demo's table takes well under a second
while time.time() < deadline and state.influence_snapshot(model)[0] is None:
    time.sleep(0.05)
st.write("computed during the run" if state.influence_snapshot(model)[0] else "not during the run")
st.session_state["model"] = model
"""
    at = AppTest.from_string(script, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.markdown[0].value == "not during the run"
    from ui import state

    model = at.session_state["model"]
    deadline = time.time() + 120
    while state.influence_snapshot(model)[0] is None and time.time() < deadline:
        time.sleep(0.2)
    rows, version, _ = state.influence_snapshot(model)
    assert rows and version == model.version, "the influence table was not computed after the run"
