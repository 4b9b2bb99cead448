"""The live model and its one edit path: memory and disk never diverge (kills, locks, two processes)."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core import demo, store
from core.asif import AsifModel
from core.cache import EmbeddingCache
from core.live import LiveModel, Metrics, WorkspaceVectors

ROOT = Path(__file__).resolve().parents[1]
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
    with ws._write(ws._connection()) as con:
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
    with ws._write(ws._connection()) as con:
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


_WORKER = textwrap.dedent("""
    import json, random, sys
    sys.path.insert(0, {root!r})
    from core import store
    from core.cache import EmbeddingCache
    from core.live import LiveModel, WorkspaceVectors
    ws = store.Workspace({path!r})
    m = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    rng = random.Random({seed})
    for i in range({n}):
        try:
            r = rng.random()
            if r < 0.55:
                out = m.remove(rng.sample(sorted(m.active_ids()), rng.randint(1, 3)))
            elif r < 0.8:
                top = ws.peek_undo()
                out = m.undo(expected_seq=None if top is None else top.seq)
            else:
                top = ws.peek_redo()
                out = m.redo(expected_seq=None if top is None else top.seq)
            print(json.dumps({{"seq": out.seq}}), flush=True)
        except ValueError as error:   # busy, stale, nothing to undo: a sentence, never a traceback
            print(json.dumps({{"refused": type(error).__name__}}), flush=True)
""")


def _worker(ws, seed, n):
    script = _WORKER.format(root=str(ROOT), path=str(ws.path), seed=seed, n=n)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _check_log(ws, cache) -> None:
    """Every stored metric belongs to the pair set its edit left (replayed from the log)."""
    edits = ws.edits()
    base = {p.pair_id for p in ws.all_pairs() if p.base}
    fresh = _fresh(ws, cache)
    v = fresh.vectors
    for i in sorted(set(random.Random(0).sample(range(len(edits)), min(6, len(edits))) + [len(edits) - 1])):
        state = store.replay(base, edits[: i + 1], 0)
        assert edits[i].metrics["n_anchors"] == len(state.active)
        pos = v.positions(sorted(state.active))
        model = AsifModel(v.img[v.pair_img[pos]], v.cap[pos], v.pair_ids[pos], k=fresh.k, p=v.p)
        pred = model.classify(v.item_vecs, v.prompts, v.prompt_classes).predictions
        want = Metrics.of(pred, v.item_labels, v.is_tune, len(v.classes), len(state.active), fresh.k)
        assert edits[i].metrics == want.to_dict(), f"edit {edits[i].seq} stored another pair set's numbers"


def test_two_processes_editing_one_workspace(ws, cache):
    _fresh(ws, cache)  # the engine snapshot, so both workers start fast
    procs = [_worker(ws, seed, 12) for seed in (1, 2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err[-2000:]
        assert "Traceback" not in err
    done = [json.loads(line) for out, _ in outs for line in out.splitlines()]
    assert sum("seq" in d for d in done) == len(ws.edits()) >= 12
    _check_log(ws, cache)


def test_random_kills_during_edits_lose_no_commit(ws, cache):
    """SIGKILL a writer at random moments, several times: every reported commit is in the log, and
    a model rebuilt from the log equals the replay (and the numbers stored with the last edit)."""
    _fresh(ws, cache)
    rng = random.Random(7)
    reported = []
    for round_ in range(4):
        proc = _worker(ws, 100 + round_, 1000)
        deadline = time.time() + 120
        target = rng.randint(2, 6)
        got = 0
        while got < target and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            d = json.loads(line)
            if "seq" in d:
                reported.append(d["seq"])
                got += 1
        time.sleep(rng.random() * 0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    seqs = {e.seq for e in ws.edits()}
    assert reported and set(reported) <= seqs
    fresh = _fresh(ws, cache)
    assert fresh.active_ids() == set(ws.active_pair_ids())
    assert ws.edits()[-1].metrics == fresh.metrics().to_dict()
    _check_log(ws, cache)


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
