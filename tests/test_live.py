"""The live model and its one edit path: memory and disk never diverge (kills, locks, two processes)."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from bench.durability import kill_campaign, run_writers, wrong_metrics
from core import demo, store
from core.cache import EmbeddingCache
from core.live import LiveModel, Metrics, WorkspaceVectors

N_IMAGES, PER_CLASS = 30, 4


@pytest.fixture(scope="module")
def cache():
    return EmbeddingCache()


@pytest.fixture
def ws(data_root, tmp_path):
    return demo.create_demo_workspace("w", n_images=N_IMAGES, per_class=PER_CLASS, root=tmp_path)


def _fresh(ws, cache) -> LiveModel:
    again = store.Workspace(ws.path)
    return LiveModel(again, WorkspaceVectors(again, cache))


def _same(a: LiveModel, b: LiveModel) -> None:
    assert a.active_ids() == b.active_ids()
    assert np.array_equal(a.session.predictions, b.session.predictions)
    assert a.metrics() == b.metrics()


def test_edits_undo_redo_match_a_fresh_model_and_the_log(ws, cache):
    m = _fresh(ws, cache)
    assert m.k == store.default_k(len(ws.pairs()))
    ids = sorted(m.active_ids())
    m.remove(ids[:3])
    out = m.undo(expected_seq=ws.peek_undo().seq)
    assert "Undid the remove of 3 pairs (#1)" in out.message()
    m.redo()
    train = sorted((demo_root := ws.resolve("demo:cifar10/train")).glob("cat/*.jpg"))[:2]
    added = m.add([(f"demo:cifar10/train/cat/{p.name}", "a photo of a cat.") for p in train])
    assert added.op.pair_ids == (len(ids), len(ids) + 1) and demo_root.is_dir()
    _same(m, _fresh(ws, cache))
    assert m.active_ids() == set(ws.active_pair_ids())
    assert np.array_equal(m.session.full_recompute(), m.session.predictions)
    last = ws.edits()[-1]
    assert last.metrics == m.metrics().to_dict() and last.settings_key == m.key


def test_a_lock_held_by_another_process_loses_nothing(ws, cache, monkeypatch):
    """The repro of the hardening issue: remove 5, undo, another process holds the write lock,
    remove 7 fails with a sentence, redo: memory and disk agree (5 removed, 7 not)."""
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.2)
    m = _fresh(ws, cache)
    m.remove([5])
    m.undo()
    other = sqlite3.connect(str(ws.db_path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(store.WorkspaceBusy):
            m.remove([7])
        with pytest.raises(store.WorkspaceBusy):
            m.redo()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert 7 in m.active_ids() and 5 in m.active_ids()
    m.redo()
    assert 5 not in m.active_ids() and 7 in m.active_ids()
    assert m.active_ids() == set(ws.active_pair_ids())
    _same(m, _fresh(ws, cache))


def test_another_processs_edits_are_picked_up(ws, cache):
    a, b = _fresh(ws, cache), _fresh(ws, cache)
    a.remove([3])
    b.remove([4])          # b syncs inside its transaction first: 3 is gone for b too
    assert 3 not in b.active_ids()
    assert a.sync() and a.active_ids() == b.active_ids()
    with pytest.raises(store.StaleView):
        a.undo(expected_seq=1)  # the page of `a` offered #1, but #2 is on top now
    _same(a, b)


def test_k_is_the_users_and_survives_reopening(ws, cache):
    ws.update_settings(k=20)
    m = _fresh(ws, cache)
    assert m.k == 20 and m.k_note is None
    for pid in sorted(m.active_ids())[:10]:
        m.remove([pid])
    again = _fresh(ws, cache)
    assert again.k == 20
    _same(m, again)
    # an old workspace whose k is larger than its pairs: clamped, and the page is told why
    with sqlite3.connect(str(ws.db_path)) as con:  # as an older version left it
        s = json.loads(con.execute("SELECT value FROM meta WHERE key='settings'").fetchone()[0])
        s["k"] = 5000
        con.execute("UPDATE meta SET value=? WHERE key='settings'", (json.dumps(s),))
    big = _fresh(ws, cache)
    assert big.k == big.n_anchors and "k = 5,000 is more than" in big.k_note
    assert _fresh(ws, cache).metrics() == big.metrics()


def test_an_unreadable_picture_is_quarantined_and_the_workspace_opens(ws, cache, tmp_path):
    good = ws.resolve(ws.pairs()[0].image).read_bytes()
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(good[: len(good) // 3])  # passes a header check, fails a full decode
    m = _fresh(ws, cache)
    with pytest.raises(ValueError, match="could not be read"):
        m.add([(str(broken), "a truncated photo")])
    n_pairs = len(ws.all_pairs())
    assert not ws.edits() and len(ws.all_pairs()) == n_pairs  # a refused addition leaves no trace
    # a workspace that already holds such a pair (e.g. made by an older version) still opens
    with sqlite3.connect(str(ws.db_path)) as con:
        con.execute("INSERT INTO pairs VALUES (?, ?, 'a truncated photo', 1)", (n_pairs, str(broken)))
    ws2 = store.Workspace(ws.path)
    v = WorkspaceVectors(ws2, cache)
    assert [q.item_id for q in v.quarantined] == [n_pairs]
    m2 = LiveModel(ws2, v)
    assert n_pairs not in m2.active_ids() and n_pairs in ws2.active_pair_ids()
    m2.remove([n_pairs])  # the user can take it out; the model is unchanged
    assert n_pairs not in ws2.active_pair_ids()


def test_fitting_warning_rule():
    start = Metrics(0.40, 0.40, 0.40, [], [], 500, 500, 100, 10)
    honest = Metrics(0.50, 0.48, 0.49, [], [], 500, 500, 90, 10)
    fitting = Metrics(0.60, 0.41, 0.50, [], [], 500, 500, 90, 10)
    assert honest.fitting_tuning(start) is None          # gap 2 pts < 2 SE (4.5 pts)
    assert "fitting the tuning pictures" in fitting.fitting_tuning(start)


def test_two_processes_editing_one_workspace(ws, cache):
    _fresh(ws, cache)  # the engine snapshot, so both workers start fast
    r = run_writers(ws.path, (1, 2), 12, timeout=600)
    assert r["tracebacks"] == 0
    assert r["committed"] == len(ws.edits()) >= 12
    assert wrong_metrics(ws.path, cache, sample=6) == []


def test_random_kills_during_edits_lose_no_commit(ws, cache):
    """SIGKILL a writer at random moments, several times: every reported commit is in the log, and
    a model rebuilt from the log equals the replay (and the numbers stored with each edit)."""
    _fresh(ws, cache)
    k = kill_campaign(ws.path, 4)
    assert k["reported"] > 0 and k["lost"] == 0
    fresh = _fresh(ws, cache)
    assert fresh.active_ids() == set(ws.active_pair_ids())
    assert ws.edits()[-1].metrics == fresh.metrics().to_dict()
    assert wrong_metrics(ws.path, cache, sample=6) == []


def test_a_quick_first_start_then_all_pairs(data_root, tmp_path):
    """On an empty cache, the first start embeds only the first pictures; the rest are pending and
    a second build completes them (what the app does in the background)."""
    ws = demo.create_demo_workspace("quick", n_images=5, per_class=1, root=tmp_path / "ws")
    empty = EmbeddingCache(tmp_path / "cache")
    quick = WorkspaceVectors(ws, empty, first_images=3)
    first_three = {p.pair_id for p in ws.pairs() if p.image in quick.img_refs[:3]}
    assert quick.pending == len(ws.pairs()) - len(first_three) > 0 and not quick.quarantined
    model = LiveModel(ws, quick)
    assert model.active_ids() == first_three
    model.remove([min(first_three)])  # edits made meanwhile are kept
    full = LiveModel(ws, WorkspaceVectors(ws, empty))
    assert full.vectors.pending == 0
    assert full.active_ids() == {p.pair_id for p in ws.pairs()}


def test_a_separate_test_folder_is_the_test_part(data_root, tmp_path, cache):
    """Labeled pictures given as a separate test set are the test part; all the others tune."""
    pairs, items = demo.demo_pairs_and_items(20, 3)
    held = [(ref, label, "test") for ref, label in demo.demo_pairs_and_items(0, 5)[1][3::5]]
    ws = store.create_workspace("sep", pairs, items + held, {"classes": sorted({x[1] for x in items})},
                                root=tmp_path)
    v = WorkspaceVectors(ws, cache)
    assert [x.part == "test" for x in v.items] == list(~v.is_tune)
    assert int((~v.is_tune).sum()) == len(held) and "separate test set" in " ".join(v.notes)


def test_a_settings_change_after_edits_measures_the_start_again(ws, cache):
    """The headline's "vs. start" and the timeline's first point exist for the new settings too:
    the base pairs classified afresh under them, equal to a fresh model on a copy never edited."""
    m = _fresh(ws, cache)
    m.remove(sorted(m.active_ids())[:4])
    ws.update_settings(p=4)
    again = _fresh(ws, cache)
    start = ws.baseline(again.key)
    assert start is not None and start["n_anchors"] == len(ws.base_pair_ids())
    other = demo.create_demo_workspace("never-edited", n_images=N_IMAGES, per_class=PER_CLASS,
                                       root=ws.path.parent)
    other.update_settings(p=4)
    assert start == _fresh(other, cache).metrics().to_dict()
    assert again.ws.history(again.key)[0]["step"] == 0 and start != again.metrics().to_dict()


def test_current_model_is_the_opened_model_until_an_edit_and_again_after_undo(ws, cache):
    m = _fresh(ws, cache)
    opened = m.current_model()
    assert opened.image_embeddings is m.session.anchors.img.base            # shared with the session, no copy
    ids = sorted(m.active_ids())
    m.remove(ids[:2])
    edited = m.current_model()
    assert edited is not opened and set(edited.pair_ids.tolist()) == set(ids[2:])
    m.undo()
    assert m.current_model() is opened
    q = m.vectors.item_vecs[0]
    fresh = m.session.current_model()                                        # a copy of the same live rows
    np.testing.assert_array_equal(m.explain(q).scores,
                                  fresh.explain(q, m.vectors.prompts, m.vectors.prompt_classes).scores)


@pytest.mark.parametrize("left_out_max,copy_max,over_rows", [
    (16_384, 2 ** 31, True),   # the defaults: few removed, searched through the opened model
    (0, 2 ** 31, False),       # more removed than the limit: the live rows are copied
    (0, 0, True)])             # ... unless the copy is too big (paper scale): searched deeper
def test_the_model_after_edits_equals_a_copy_of_the_live_rows(ws, cache, tmp_path, monkeypatch,
                                                              left_out_max, copy_max, over_rows):
    """After removals and additions current_model() searches the opened model's indexes (no copy of
    the live rows) or, past the limits, copies them: either way the same anchors, representations,
    classification and explanation as a model built from a copy of the live rows."""
    from core import live
    from core.search import RowSubsetIndex

    monkeypatch.setattr(live, "SUBSET_MAX_LEFT_OUT", left_out_max)
    monkeypatch.setattr(live, "COPY_MAX_BYTES", copy_max)
    m = _fresh(ws, cache)
    ids = sorted(m.active_ids())
    m.remove(ids[::3])
    train = sorted(ws.resolve("demo:cifar10/train").glob("cat/*.jpg"))[:3]
    m.add([(f"demo:cifar10/train/cat/{p.name}", "a photo of a cat.") for p in train])
    m.remove([ids[1], len(ids) + 1])                                         # an added pair goes too
    edited, copy = m.current_model(), m.session.current_model()
    assert edited is m.current_model() and edited.n_anchors == copy.n_anchors == m.n_anchors
    assert isinstance(edited.search_index("image"), RowSubsetIndex) == over_rows
    np.testing.assert_array_equal(edited.pair_ids, copy.pair_ids)
    assert edited.metadata == copy.metadata
    v = m.vectors
    for rep in ("represent_images", "represent_texts"):
        x = v.item_vecs if rep == "represent_images" else v.prompts
        for a, b in zip(getattr(edited, rep)(x), getattr(copy, rep)(x)):
            np.testing.assert_array_equal(a, b)
    got, want = (mod.classify(v.item_vecs, v.prompts, v.prompt_classes, n_classes=len(v.classes))
                 for mod in (edited, copy))
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.predictions, m.session.predictions)
    q = v.item_vecs[0]
    e, f = (mod.explain(q, v.prompts, v.prompt_classes) for mod in (edited, copy))
    np.testing.assert_array_equal(e.caption_similarity, f.caption_similarity)
    np.testing.assert_array_equal(e.all_image_similarity, f.all_image_similarity)
    np.testing.assert_array_equal(edited.image_embeddings, copy.image_embeddings)   # gathered on read
    saved = type(copy).load(edited.save(tmp_path / "export.npz"))                  # a Workspaces export
    for name in ("image_embeddings", "text_embeddings", "pair_ids"):
        np.testing.assert_array_equal(getattr(saved, name), getattr(copy, name))


def test_the_image_search_report_after_an_edit_is_of_the_faiss_index_the_model_searches(ws, cache):
    """Above the FAISS threshold the Settings panel's report (core.ann.report) of the edited model
    measures the opened model's index over the live rows, not "exact search"."""
    from core.ann import AnnIndex, report

    ws.update_settings(ann_min_anchors=len({p.image for p in ws.pairs()}))
    m = _fresh(ws, cache)
    assert isinstance(m.current_model().search_index("image"), AnnIndex)
    m.remove(sorted(m.active_ids())[:4])
    edited, v = m.current_model(), m.vectors
    assert isinstance(edited.image_index(), AnnIndex) and edited.n_anchors == m.n_anchors
    r = report(edited, v.item_vecs, v.prompts, v.prompt_classes, n_classes=len(v.classes))
    assert r is not None and r["recall"] == 1.0 and r["agreement"] == 1.0    # one list, probed in full
    np.testing.assert_array_equal(edited.classify(v.item_vecs, v.prompts, v.prompt_classes,
                                                  n_classes=len(v.classes)).predictions, m.session.predictions)


def test_stamp_changes_with_every_edit_and_never_repeats_across_a_rebuild(ws, cache):
    """Caches of a model's numbers key on ``stamp``: a rebuilt model starts its version at 0 again,
    so the version alone would hand it the numbers of its predecessor's start."""
    m = _fresh(ws, cache)
    first = m.stamp
    m.remove(sorted(m.active_ids())[:1])
    assert m.stamp != first
    m.undo()
    rebuilt = _fresh(ws, cache)
    assert rebuilt.version == 0 and rebuilt.stamp not in {first, m.stamp}
