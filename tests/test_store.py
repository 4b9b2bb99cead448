"""The workspace store: pairs, labeled set, settings, the edit log (the only history), durability."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core import demo, store

ROOT = Path(__file__).resolve().parents[1]


def _small(tmp_path, name="w", n=10):
    pairs = [(f"/img/{i}.jpg", f"caption {i}") for i in range(n)]
    items = [(f"/eval/{i}.jpg", "cat" if i % 2 else "dog") for i in range(6)]
    return store.create_workspace(name, pairs, items, root=tmp_path)


def _commit(ws, plan):
    with ws.transaction() as tx:
        op = plan(tx.state())
        return tx.append(op)


def test_create_list_open(tmp_path):
    ws = _small(tmp_path, "My Workspace!")
    assert ws.id == "my-workspace" and ws.name == "My Workspace!"
    assert [p.name for p in store.list_workspaces(tmp_path)] == ["my-workspace"]
    again = store.open_workspace("my-workspace", root=tmp_path)
    assert len(again.pairs()) == 10 and len(again.eval_items()) == 6
    assert again.labels() == ["cat", "dog"] and again.settings()["classes"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="already exists"):
        _small(tmp_path, "my workspace")
    with pytest.raises(ValueError, match="at least one anchor pair"):
        store.create_workspace("empty", [], [], root=tmp_path)
    with pytest.raises(ValueError, match="name"):
        store.create_workspace("!!!", [("a", "b")], root=tmp_path)


def test_default_k_fits_the_workspace(tmp_path):
    """A 25-pair upload starts with a k it can use (half the pairs), not the 35,000-pair default."""
    assert _small(tmp_path, "small", n=25).settings()["k"] == 12
    assert _small(tmp_path, "big", n=4000).settings()["k"] == 800


def test_log_undo_redo_through_plans(tmp_path):
    ws = _small(tmp_path)
    _commit(ws, lambda s: store.plan_remove(s, [1, 2]))
    assert ws.active_pair_ids() == set(range(10)) - {1, 2}
    _commit(ws, lambda s: store.plan_add(s, [("/img/new.jpg", "a new pair")]))
    assert 10 in ws.active_pair_ids() and ws.all_pairs()[-1].caption == "a new pair"
    top = ws.peek_undo()
    assert top.kind == "add" and top.pair_ids == (10,)
    _commit(ws, lambda s: store.plan_undo(s, expected_seq=top.seq))
    _commit(ws, lambda s: store.plan_undo(s))
    assert ws.active_pair_ids() == set(range(10))
    assert ws.peek_undo() is None and ws.peek_redo().kind == "remove"
    _commit(ws, lambda s: store.plan_redo(s))
    assert ws.active_pair_ids() == set(range(10)) - {1, 2}
    _commit(ws, lambda s: store.plan_remove(s, [3]))  # a new edit clears the redo stack
    assert ws.peek_redo() is None
    hist = ws.history("any")
    assert [h["edit"] for h in hist][:3] == ["start", "remove of 2 pairs (#1)", "add of 1 pair (#2)"]
    assert len(hist) == 1 + len(ws.edits())
    with pytest.raises(ValueError, match="not in the current anchor set"):
        _commit(ws, lambda s: store.plan_remove(s, [1]))
    with pytest.raises(ValueError, match="Select at least one"):
        _commit(ws, lambda s: store.plan_remove(s, []))
    with pytest.raises(ValueError, match="fewer than k"):
        _commit(ws, lambda s: store.plan_remove(s, [4, 5], min_active=6))


def test_undo_names_its_edit_and_refuses_a_stale_view(tmp_path):
    ws = _small(tmp_path)
    first = _commit(ws, lambda s: store.plan_remove(s, [1]))
    _commit(ws, lambda s: store.plan_remove(s, [2]))  # e.g. another session
    n = len(ws.edits())
    with pytest.raises(store.StaleView, match="changed in another session"):
        _commit(ws, lambda s: store.plan_undo(s, expected_seq=first))
    assert len(ws.edits()) == n and 2 not in ws.active_pair_ids()  # nothing written


def test_a_failed_transaction_writes_nothing(tmp_path):
    ws = _small(tmp_path)
    with pytest.raises(RuntimeError):
        with ws.transaction() as tx:
            tx.append(store.plan_add(tx.state(), [("/x.jpg", "x")]))
            raise RuntimeError("the live model failed")
    assert ws.edits() == [] and len(ws.all_pairs()) == 10


def test_a_held_lock_is_a_sentence_not_a_traceback(tmp_path, monkeypatch):
    ws = _small(tmp_path)
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.2)
    other = sqlite3.connect(str(ws.db_path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.time()
        with pytest.raises(store.WorkspaceBusy, match="Another session is saving"):
            _commit(ws, lambda s: store.plan_remove(s, [1]))
        assert time.time() - t0 < 5
    finally:
        other.execute("ROLLBACK")
        other.close()
    _commit(ws, lambda s: store.plan_remove(s, [1]))  # usable again
    assert 1 not in ws.active_pair_ids()


@pytest.mark.parametrize("bad, msg", [
    ({"k": 0}, "k must"), ({"k": "x"}, "whole number"), ({"p": 0.5}, "p must be a number from 1 to 64"),
    ({"p": float("inf")}, "from 1 to 64"), ({"p": 1e308}, "from 1 to 64"), ({"p": float("nan")}, "from 1"),
    ({"templates": ["no slot"]}, "exactly one"), ({"templates": ["{}{}"]}, "exactly one"),
    ({"templates": ["a {0} {}"]}, "no other braces"), ({"templates": []}, "at least one"),
    ({"classes": ["one"]}, "two class"), ({"k": 11}, "more than the 10 active"),
    ({"tune_fraction": 1.0}, "between 0.05"),
])
def test_settings_validation(tmp_path, bad, msg):
    ws = _small(tmp_path)
    ws.update_settings(k=5)
    with pytest.raises(ValueError, match=msg):
        ws.update_settings(**bad)
    assert ws.settings()["k"] == 5  # a rejected change stores nothing


def test_duplicate_delete_export(tmp_path):
    ws = _small(tmp_path)
    _commit(ws, lambda s: store.plan_remove(s, [0]))
    ref = ws.store_file(b"hello", ".JPG")
    assert ref.startswith("ws:") and ws.resolve(ref).read_bytes() == b"hello"
    copy = store.duplicate_workspace(ws, "copy")
    assert copy.name == "copy" and copy.active_pair_ids() == ws.active_pair_ids()
    assert copy.resolve(ref).read_bytes() == b"hello"
    _commit(copy, lambda s: store.plan_remove(s, [1]))
    assert 1 in ws.active_pair_ids()  # independent
    rows = list(csv.reader(io.StringIO(ws.export_pairs_csv().decode())))
    assert rows[0] == ["pair_id", "image", "caption"] and len(rows) == 1 + 9
    store.delete_workspace(copy)
    assert [p.name for p in store.list_workspaces(tmp_path)] == ["w"]


def test_demo_workspace_exports_paths_relative_to_the_data_root(data_root, tmp_path):
    ws = demo.create_demo_workspace("demo", n_images=3, per_class=2, root=tmp_path)
    pairs = ws.pairs()
    assert len({p.image for p in pairs}) == 3 and all(ws.resolve(p.image).is_file() for p in pairs)
    assert len(ws.eval_items()) == 20 and len(ws.labels()) == 10
    assert ws.meta()["source"]["kind"] == "demo"
    rows = list(csv.reader(io.StringIO(ws.export_pairs_csv().decode())))[1:]
    assert all(r[1].startswith("flickr8k/images/") for r in rows)
    assert not any(str(data_root) in r[1] for r in rows)


def test_reads_share_one_connection_and_replay_only_on_change(tmp_path):
    ws = _small(tmp_path)
    for _ in range(5):
        ws.settings(), ws.counts(), ws.active_pair_ids(), ws.peek_undo(), ws.history("k")
    assert ws.stats == {"connections": 1, "replays": 1}
    _commit(ws, lambda s: store.plan_remove(s, [0]))
    ws.active_pair_ids(), ws.counts(), ws.peek_undo()
    assert ws.stats == {"connections": 1, "replays": 2}


def test_a_version_1_workspace_is_migrated(tmp_path):
    ws = _small(tmp_path)
    con = sqlite3.connect(str(ws.db_path))
    con.executescript("""
        CREATE TABLE e2 AS SELECT seq, kind, pair_ids, ref_seq, accuracy, per_class, note, created_at FROM edits;
        DROP TABLE edits; ALTER TABLE e2 RENAME TO edits;
        INSERT INTO edits VALUES (1, 'remove', '[3]', NULL, 0.5, NULL, '', 0);
        UPDATE meta SET value='1' WHERE key='schema';""")
    con.close()
    old = store.Workspace(ws.path)
    assert 3 not in old.active_pair_ids() and old.edits()[0].metrics == {"accuracy": 0.5}
    assert json.loads(sqlite3.connect(str(ws.db_path)).execute(
        "SELECT value FROM meta WHERE key='schema'").fetchone()[0]) == store.SCHEMA_VERSION


def test_kill_mid_edit_loses_no_committed_edit(tmp_path):
    """A writer process is SIGKILLed while editing: every edit it reported as committed is there."""
    ws = store.create_workspace("k", [(f"/i/{i}", f"c{i}") for i in range(5000)], root=tmp_path)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from core import store
        ws = store.Workspace({str(ws.path)!r})
        i = 0
        while True:
            with ws.transaction() as tx:
                tx.append(store.plan_remove(tx.state(), [i]))
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.time() + 60
    while len(committed) < 15 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(committed) >= 15
    removed = set(range(5000)) - store.Workspace(ws.path).active_pair_ids()
    assert set(committed) <= removed
    assert removed == set(range(len(removed)))  # a prefix: no torn or out-of-order edit


def test_photo_order_pages_the_live_pairs_by_photo_and_searches_captions(tmp_path):
    """The Data page's pages: live pairs grouped by photo in order of each photo's first pair,
    a removal and an addition seen at once, a search that folds case (also beyond ASCII)."""
    pairs = [("a.jpg", "A dog"), ("b.jpg", "a cat"), ("a.jpg", "ÉLAN of a dog"), ("c.jpg", "a cow"),
             ("b.jpg", "the cat sleeps")]
    ws = store.create_workspace("photos", pairs, [("x.jpg", "dog")], root=tmp_path)
    photo, ids = ws.photo_order()
    assert photo.tolist() == [0, 0, 1, 1, 2] and ids.tolist() == [0, 2, 1, 4, 3]
    with ws.transaction() as tx:
        tx.append(store.plan_remove(tx.state(), [1]))
    with ws.transaction() as tx:
        tx.append(store.plan_add(tx.state(), [("a.jpg", "another dog")]))
    photo, ids = ws.photo_order()
    assert photo.tolist() == [0, 0, 0, 1, 2] and ids.tolist() == [0, 2, 5, 3, 4]   # b.jpg now starts at 4
    assert ws.photo_order("élan")[1].tolist() == [2] and ws.photo_order("DOG")[1].tolist() == [0, 2, 5]
    assert [p.caption for p in ws.pairs_by_id([4, 0])] == ["the cat sleeps", "A dog"]
