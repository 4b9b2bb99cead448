"""Workspace store: pairs, evaluation set, settings, the edit log with undo/redo, durability."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core import workspace as W

ROOT = Path(__file__).resolve().parents[1]


def _small(tmp_path, name="w"):
    pairs = [(f"/img/{i}.jpg", f"caption {i}") for i in range(10)]
    items = [(f"/eval/{i}.jpg", "cat" if i % 2 else "dog") for i in range(6)]
    return W.create_workspace(name, pairs, items, root=tmp_path)


def test_create_list_open(tmp_path):
    ws = _small(tmp_path, "My Workspace!")
    assert ws.id == "my-workspace"
    assert ws.name == "My Workspace!"
    assert [w.id for w in W.list_workspaces(tmp_path)] == ["my-workspace"]
    again = W.open_workspace("my-workspace", root=tmp_path)
    assert len(again.pairs()) == 10 and len(again.eval_items()) == 6
    assert again.labels() == ["cat", "dog"]
    assert again.settings()["classes"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="already exists"):
        _small(tmp_path, "my workspace")
    with pytest.raises(ValueError, match="at least one anchor pair"):
        W.create_workspace("empty", [], [], root=tmp_path)
    with pytest.raises(ValueError, match="name"):
        W.create_workspace("!!!", [("a", "b")], root=tmp_path)


def test_edit_log_undo_redo(tmp_path):
    ws = _small(tmp_path)
    ws.remove_pairs([1, 2], accuracy=0.5)
    assert ws.active_pair_ids() == set(range(10)) - {1, 2}
    seq, new = ws.add_pairs([("/img/new.jpg", "a new pair")], accuracy=0.6)
    assert new == [10] and 10 in ws.active_pair_ids()
    assert ws.peek_undo().kind == "remove" and ws.peek_undo().pair_ids == (10,)
    op = ws.undo(accuracy=0.5)
    assert op.kind == "remove" and op.pair_ids == (10,)
    op = ws.undo(accuracy=0.4)
    assert op.kind == "add" and set(op.pair_ids) == {1, 2}
    assert ws.active_pair_ids() == set(range(10))
    assert not ws.can_undo() and ws.can_redo()
    op = ws.redo(accuracy=0.5)
    assert op.kind == "remove" and ws.active_pair_ids() == set(range(10)) - {1, 2}
    # a new edit clears the redo stack
    ws.remove_pairs([3])
    assert not ws.can_redo()
    hist = ws.history()
    assert [h["edit"] for h in hist][:3] == ["start", "remove", "add"]
    assert len(hist) == 1 + len(ws.edits())
    with pytest.raises(ValueError, match="not in the current anchor set"):
        ws.remove_pairs([1])
    with pytest.raises(ValueError, match="Select at least one"):
        ws.remove_pairs([])


def test_cannot_remove_everything(tmp_path):
    ws = W.create_workspace("tiny", [("a", "b"), ("c", "d")], root=tmp_path)
    with pytest.raises(ValueError, match="no anchor pairs"):
        ws.remove_pairs([0, 1])
    ws.remove_pairs([0])
    assert ws.active_pair_ids() == {1}


def test_settings_validation(tmp_path):
    ws = _small(tmp_path)
    s = ws.update_settings(k=5, p=3, templates=["a photo of a {}.", " ", "art of {}"])
    assert s["k"] == 5 and s["p"] == 3 and s["templates"] == ["a photo of a {}.", "art of {}"]
    for bad, msg in [({"k": 0}, "k must"), ({"p": 0.5}, "p must"), ({"templates": ["no slot"]}, "exactly one"),
                     ({"templates": []}, "at least one"), ({"classes": ["one"]}, "two class")]:
        with pytest.raises(ValueError, match=msg):
            ws.update_settings(**bad)
    assert ws.settings()["k"] == 5  # a rejected change stores nothing


def test_duplicate_delete_export(tmp_path):
    ws = _small(tmp_path)
    ws.remove_pairs([0])
    ref = ws.store_file(b"hello", ".JPG")
    assert ref.startswith("ws:") and ws.resolve(ref).read_bytes() == b"hello"
    copy = W.duplicate_workspace(ws, "copy")
    assert copy.name == "copy" and copy.active_pair_ids() == ws.active_pair_ids()
    assert copy.resolve(ref).read_bytes() == b"hello"
    copy.remove_pairs([1])
    assert 1 in ws.active_pair_ids()  # independent
    rows = list(csv.reader(io.StringIO(ws.export_pairs_csv().decode())))
    assert rows[0] == ["pair_id", "image", "caption"] and len(rows) == 1 + 9
    W.delete_workspace(copy)
    assert [w.id for w in W.list_workspaces(tmp_path)] == ["w"]


def test_demo_workspace_small(tmp_path):
    if not (W.demo_root() / "flickr8k" / "captions.csv").is_file():
        pytest.skip("demo data not present")
    ws = W.create_demo_workspace("demo", n_images=3, per_class=2, root=tmp_path)
    pairs = ws.pairs()
    assert len({p.image for p in pairs}) == 3 and len(pairs) >= 3
    assert all(ws.resolve(p.image).is_file() for p in pairs)
    assert len(ws.eval_items()) == 20 and len(ws.labels()) == 10
    assert ws.meta()["source"]["kind"] == "demo"


def test_kill_mid_edit_loses_no_committed_edit(tmp_path):
    """A writer process is SIGKILLed while editing: every edit it reported as committed is there."""
    ws = W.create_workspace("k", [(f"/i/{i}", f"c{i}") for i in range(5000)], root=tmp_path)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from core.workspace import Workspace
        ws = Workspace({str(ws.path)!r})
        i = 0
        while True:
            ws.remove_pairs([i], accuracy=0.1)
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.time() + 30
    while len(committed) < 15 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(committed) >= 15
    again = W.Workspace(ws.path)
    removed = set(range(5000)) - again.active_pair_ids()
    assert set(committed) <= removed
    assert removed == set(range(len(removed)))  # a prefix: no torn or out-of-order edit


def test_live_model_mirrors_the_log_and_restores_from_snapshot(tmp_path):
    import numpy as np

    if not (W.demo_root() / "flickr8k" / "captions.csv").is_file():
        pytest.skip("demo data not present")
    ws = W.create_demo_workspace("demo", n_images=30, per_class=3, root=tmp_path)
    bank = W.Bank(ws)
    first = W.LiveModel(bank, ws.active_pair_ids())
    assert list((ws.path / "state").glob("neighbours-*.npz")), "no engine snapshot written"
    again = W.LiveModel(bank, ws.active_pair_ids())  # restored from the snapshot
    assert np.array_equal(first.eval_predictions(), again.eval_predictions())
    pid = sorted(ws.active_pair_ids())[3]
    r = again.remove([pid])
    ws.remove_pairs([pid], accuracy=r.accuracy)
    assert W.sync_live_model(ws, again)
    fresh = W.LiveModel(W.Bank(ws), ws.active_pair_ids())
    assert np.array_equal(fresh.eval_predictions(), again.eval_predictions())
    assert fresh.accuracy == again.accuracy
    # adding pairs: only the new ones are embedded, and the engine follows
    seq, new = ws.add_pairs([(ws.pairs()[0].image, "a photo of a cat.")])
    bigger = again.bank.extended(ws)
    again.add(bigger, new)
    assert W.sync_live_model(ws, again)
    # an explanation decomposes the score into pairs
    e = again.explain(bank.eval_vecs[0])
    rows = e.contributions(top=None)
    assert rows and abs(sum(r["product"] for r in rows) - e.scores[e.prediction]) < 1e-5
