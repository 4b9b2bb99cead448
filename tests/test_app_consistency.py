"""AppTest: after every kind of edit (remove, add, undo, redo) the numbers on the Curate page — the
headline, the sidebar, the per-class chart and the last point of the timeline — are those of a model
rebuilt from scratch out of the workspace's log (a fresh ``LiveModel``, nothing shared with the app)."""
from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from app_helpers import APP, open_curate, run_ready
from core import store
from core.live import LiveModel, WorkspaceVectors


def _fresh(demo_root, embedding_cache):
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    return ws, LiveModel(ws, WorkspaceVectors(ws, embedding_cache))


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def _charts(at) -> dict:
    """{trace name: y values} of every plotly chart on the page (per class bars, timeline lines)."""
    out = {}
    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        for trace in fig["data"]:
            out.setdefault((trace.get("type"), trace.get("name")), []).append(trace.get("y"))
    return out


def _check(at, demo_root, embedding_cache, after: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    ws, fresh = _fresh(demo_root, embedding_cache)
    m = fresh.metrics()
    metrics = {x.label.split(" (")[0]: x.value for x in at.metric}
    assert metrics["Anchor pairs"] == f"{m.n_anchors:,}", after
    assert metrics["Test accuracy"] == _pct(m.test), after
    assert metrics["Tuning accuracy"] == _pct(m.tune), after
    sidebar = " ".join(str(c.value) for c in at.sidebar.caption)
    assert f"{m.n_anchors:,} anchor pair" in sidebar, (after, sidebar)
    charts = _charts(at)
    bars = {name: ys[0] for (kind, name), ys in charts.items() if kind == "bar"}
    for name, values in (("tuning", m.per_class_tune), ("test (held out)", m.per_class_test)):
        want = [None if v is None else 100 * v for v in values]
        got = bars[name]
        assert len(got) == len(want) and all(
            (g is None and w is None) or abs(g - w) < 1e-9 for g, w in zip(got, want)), (after, name)
    lines = {name: ys[0] for (kind, name), ys in charts.items() if kind == "scatter"}
    assert abs(lines["test (held out)"][-1] - 100 * m.test) < 1e-9, after
    assert abs(lines["tuning"][-1] - 100 * m.tune) < 1e-9, after
    assert len(lines["tuning"]) == len(ws.history(fresh.key)), after


def test_every_number_agrees_after_every_kind_of_edit(demo_root, embedding_cache):
    at = open_curate(run_ready(AppTest.from_file(APP, default_timeout=120)))

    # remove
    box = [m for m in at.multiselect if m.label.startswith("Selected pairs")][0]
    box.set_value([int(box.options[0].lstrip("#"))]).run()
    [b for b in at.button if b.label == "Remove 1 pair"][0].click().run()
    _check(at, demo_root, embedding_cache, "remove")

    # add (in-domain CIFAR-10 train pictures, from the section below the panel)
    at.number_input(key="indomain_n").set_value(2)
    at.multiselect(key="indomain_cls").set_value(["airplane", "cat"])
    [b for b in at.button if b.label == "Add in-domain pairs"][0].click().run()
    _check(at, demo_root, embedding_cache, "add")
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    added = ws.edits()[-1].pair_ids
    assert sorted({p.caption for p in ws.all_pairs() if p.pair_id in added}) == \
        ["a photo of a cat.", "a photo of an airplane."]  # the prompts' own wording (fill_template)

    # undo (the add), then redo it
    at.button(key="curate_Undo").click().run()
    _check(at, demo_root, embedding_cache, "undo")
    at.button(key="curate_Redo").click().run()
    _check(at, demo_root, embedding_cache, "redo")
    assert [e.kind for e in store.Workspace(store.list_workspaces(demo_root)[0]).edits()] == \
        ["remove", "add", "undo", "redo"]


def test_classify_remove_updates_headline_and_sidebar(demo_root, embedding_cache):
    at = run_ready(AppTest.from_file(APP, default_timeout=120))
    [b for b in at.button if b.key and b.key.startswith("rm_")][0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    ws, fresh = _fresh(demo_root, embedding_cache)
    m = fresh.metrics()
    assert [e.kind for e in ws.edits()] == ["remove"]
    metrics = {x.label.split(" (")[0]: x.value for x in at.metric}
    assert (metrics["Anchor pairs"], metrics["Test accuracy"], metrics["Tuning accuracy"]) == \
        (f"{m.n_anchors:,}", _pct(m.test), _pct(m.tune))
    assert f"{m.n_anchors:,} anchor pair" in " ".join(str(c.value) for c in at.sidebar.caption)
    assert any("Removed pair #" in s.value for s in at.success)
