"""core.curation on real embeddings: the tuning/test split is stratified and stable; choosing (influence,
auto-curate, suggested additions) never reads the test labels; incremental == full recompute after
auto-curation on both parts; one undo reverts one round; the CLI's JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.asif import DEFAULT_TEMPLATES, AsifModel, build_prompts, fill_template
from core.cli.curate import split_keys
from core.curation import (STOP_RULE, auto_curate, holdout_split, stratified_split,
                           suggest_additions)
from core.edits import EditSession

ROOT = Path(__file__).resolve().parents[1]
K = 60


# ------------------------------------------------------------------------------- split

def test_split_is_stratified_seeded_and_stable(cifar_small):
    keys, y = split_keys(cifar_small), cifar_small.labels
    tune = stratified_split(keys, y, 0.5, seed=0)
    for c in range(len(cifar_small.class_names)):
        n = int((y == c).sum())
        assert int(tune[y == c].sum()) == n // 2  # 20 per class -> 10 / 10
    assert np.array_equal(tune, stratified_split(keys, y, 0.5, seed=0))
    assert not np.array_equal(tune, stratified_split(keys, y, 0.5, seed=1))
    # reordering the items does not move any of them
    perm = np.random.default_rng(0).permutation(len(keys))
    again = stratified_split([keys[i] for i in perm], y[perm], 0.5, seed=0)
    assert np.array_equal(again, tune[perm])
    # adding items to a class moves few of the others: the old ones keep their hash order
    extra = [f"{cifar_small.class_names[0]}/new_{i}.jpg" for i in range(4)]
    grown = stratified_split(keys + extra, np.concatenate([y, np.zeros(4, dtype=y.dtype)]), 0.5, seed=0)
    moved = int((grown[:len(keys)] != tune).sum())
    assert moved <= 2, moved
    # an uneven fraction rounds per class and never empties a side
    t3 = stratified_split(keys, y, 0.3, seed=0)
    assert all(int(t3[y == c].sum()) == 6 for c in range(10))
    assert stratified_split(["a", "b"], np.array([0, 0]), 0.01).sum() == 1


def test_cli_splits_like_the_app(cifar_small):
    from core.demo import demo_labeled_items

    items = demo_labeled_items(20)  # the app's demo references for the same 200 pictures
    assert split_keys(cifar_small) == [ref for ref, _ in items]


def test_split_rejects_small_classes_and_bad_fractions():
    with pytest.raises(ValueError, match=r"Class 'dog' has 1 labeled item"):
        stratified_split(["x", "y", "z"], np.array(["cat", "cat", "dog"]))
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            stratified_split(["x", "y"], np.array([0, 0]), bad)
    with pytest.raises(ValueError, match="unique"):
        stratified_split(["x", "x"], np.array([0, 0]))


def test_holdout_slice_is_inside_tuning_and_stratified(cifar_small):
    y = cifar_small.labels
    tune = stratified_split(split_keys(cifar_small), y, 0.5, seed=0)
    choose, hold = holdout_split(y, tune, 0.3, seed=0)
    assert not (choose & hold).any() and np.array_equal(choose | hold, tune)
    assert all(int(hold[y == c].sum()) == 3 for c in range(10))


def _texts(texts):
    from core.cache import default_cache
    from core.embedded import embed
    from conftest import TEXT_ENCODER

    return embed(TEXT_ENCODER, texts, cache=default_cache()).vectors


def _session(flickr_embeddings, cifar_small, cifar_small_embeddings, labels=None):
    img, txt = flickr_embeddings
    prompts, pc = build_prompts(cifar_small.class_names, DEFAULT_TEMPLATES)
    pe = _texts(prompts)
    model = AsifModel(img, txt, k=K, p=8.0)
    y = cifar_small.labels if labels is None else labels
    return EditSession(model, cifar_small_embeddings, y, pe, pc, class_names=cifar_small.class_names)


@pytest.fixture(scope="module")
def split(cifar_small):
    return stratified_split(split_keys(cifar_small), cifar_small.labels, 0.5, seed=0)


def _shuffled_test_labels(labels, tune):
    out = labels.copy()
    test = np.flatnonzero(~tune)
    out[test] = (labels[test] + 1 + np.random.default_rng(3).integers(0, 9, test.size)) % 10
    assert (out[test] != labels[test]).all()
    return out


def test_choosing_never_reads_test_labels(flickr_embeddings, cifar_small, cifar_small_embeddings, split):
    a = _session(flickr_embeddings, cifar_small, cifar_small_embeddings)
    b = _session(flickr_embeddings, cifar_small, cifar_small_embeddings,
                 _shuffled_test_labels(cifar_small.labels, split))
    ia, ib = a.influence(eval_mask=split), b.influence(eval_mask=split)
    np.testing.assert_array_equal(ia.loo_delta, ib.loo_delta)
    np.testing.assert_array_equal(ia.order_most_harmful(), ib.order_most_harmful())
    assert np.nanmax(ia.loo_delta) > 0  # there is something to choose
    ra = auto_curate(a, split, max_removals=30, per_round=5, holdout_fraction=0.3, seed=0)
    rb = auto_curate(b, split, max_removals=30, per_round=5, holdout_fraction=0.3, seed=0)
    assert ra.removed.size > 0
    assert [r.pair_ids.tolist() for r in ra.rounds] == [r.pair_ids.tolist() for r in rb.rounds]
    assert ra.stopped_because == rb.stopped_because
    assert (ra.tune_before, ra.tune_after) == (rb.tune_before, rb.tune_after)
    assert a.accuracy_on(~split) != b.accuracy_on(~split)  # the test labels did differ


def test_auto_curate_rounds_are_single_edits_and_incremental_equals_full(
        flickr_embeddings, cifar_small, cifar_small_embeddings, split):
    s = _session(flickr_embeddings, cifar_small, cifar_small_embeddings)
    n0 = s.n_anchors
    seen = []
    report = auto_curate(s, split, max_removals=40, per_round=5, holdout_fraction=0.3, seed=0,
                         progress=lambda f, m: seen.append((f, m)))
    assert len(report.rounds) > 1 and report.rule == STOP_RULE
    assert report.removed.size <= 40 and s.n_anchors == n0 - report.removed.size
    assert len(s.history) == len(report.rounds)  # one edit per round
    assert seen[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in seen)
    # the stopping rule never lets the held-back slice fall more than the tolerance below its start
    assert report.holdout_after >= report.holdout_before - report.settings["tolerance"] - 1e-12
    strict = auto_curate(_session(flickr_embeddings, cifar_small, cifar_small_embeddings), split,
                         max_removals=40, per_round=5, holdout_fraction=0.3, seed=0, tolerance=0.0)
    assert strict.holdout_after >= strict.holdout_before
    assert report.tune_after == pytest.approx(s.accuracy_on(split))
    full = s.full_recompute()
    np.testing.assert_array_equal(s.predictions[split], full[split])
    np.testing.assert_array_equal(s.predictions[~split], full[~split])
    last = report.rounds[-1]
    s.undo()  # one undo reverts one round
    assert s.n_anchors == n0 - report.removed.size + last.pair_ids.size
    np.testing.assert_array_equal(s.predictions, s.full_recompute())


def test_auto_curate_cancels_between_rounds_and_routes_edits(
        flickr_embeddings, cifar_small, cifar_small_embeddings, split):
    s = _session(flickr_embeddings, cifar_small, cifar_small_embeddings)
    routed = []

    def apply(ids):
        routed.append(list(ids))
        return s.remove(ids)

    report = auto_curate(s, split, max_removals=100, per_round=5, holdout_fraction=0.3, seed=0,
                         apply_remove=apply, should_stop=lambda: len(routed) >= 1)
    assert report.stopped_because == "cancelled" and len(report.rounds) == 1
    assert routed == [report.rounds[0].pair_ids.tolist()]
    with pytest.raises(ValueError, match="tuning mask"):
        auto_curate(s, split[:10], max_removals=5)


@pytest.fixture(scope="module")
def pool(data_root, embedding_cache):
    from core.data import load_labeled
    from core.embedded import EmbeddedLabeled
    from conftest import IMAGE_ENCODER

    train = load_labeled(data_root / "cifar10" / "train").per_class(8)
    return train, EmbeddedLabeled.from_labeled(train, IMAGE_ENCODER, cache=embedding_cache).vectors


def test_suggest_additions_reads_tuning_only_and_previews_exactly(
        flickr_embeddings, cifar_small, cifar_small_embeddings, split, pool):
    train, pool_emb = pool
    captions = [fill_template(DEFAULT_TEMPLATES[0], c) for c in cifar_small.class_names]
    assert "a photo of an airplane." in captions
    cap_emb = _texts(captions)
    a = _session(flickr_embeddings, cifar_small, cifar_small_embeddings)
    b = _session(flickr_embeddings, cifar_small, cifar_small_embeddings,
                 _shuffled_test_labels(cifar_small.labels, split))
    pa = suggest_additions(a, pool_emb, train.labels, cap_emb, captions, split, 25)
    pb = suggest_additions(b, pool_emb, train.labels, cap_emb, captions, split, 25)
    assert [(x.pool_index, x.caption) for x in pa.suggestions] == [(x.pool_index, x.caption) for x in pb.suggestions]
    assert len(pa.suggestions) == 25 == sum(pa.quota.values())
    assert len({x.pool_index for x in pa.suggestions}) == 25
    assert all(train.labels[x.pool_index] == x.class_index for x in pa.suggestions)
    # the worst tuning class gets at least as many proposals as the best
    worst = min(pa.per_class_tune_before, key=pa.per_class_tune_before.get)
    best = max(pa.per_class_tune_before, key=pa.per_class_tune_before.get)
    assert pa.quota.get(worst, 0) >= pa.quota.get(best, 0)
    idx = np.asarray([x.pool_index for x in pa.suggestions])
    cls = np.asarray([x.class_index for x in pa.suggestions])
    a.add(pool_emb[idx], cap_emb[cls])  # accepting = one add edit
    assert a.accuracy_on(split) == pytest.approx(pa.tune_if_accepted)
    np.testing.assert_array_equal(a.predictions, a.full_recompute())
    again = suggest_additions(a, pool_emb, train.labels, cap_emb, captions, split, 10, exclude=idx,
                              preview=False)
    assert not set(idx.tolist()) & {x.pool_index for x in again.suggestions}


# ------------------------------------------------------------------------------- CLI

def test_cli_curate_json(data_root, flickr_embeddings, cifar_small, cifar_small_embeddings, split):
    cmd = [sys.executable, "-m", "core", "asif", "curate", "--limit-anchors", "300", "--per-class", "20",
           "--k", str(K), "--max-removals", "20", "--per-round", "10", "--tune-fraction", "0.5",
           "--seed", "0", "--add-pool", str(data_root / "cifar10" / "train"), "--pool-per-class", "8",
           "--max-additions", "10", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    for key in ("tune_before", "tune_after", "test_before", "test_after"):
        assert 0.0 <= r[key] <= 1.0, key
    assert 0 <= r["removed"] <= 20 and r["added"] == 10 and sum(r["additions"]["per_class"].values()) == 10
    assert r["n_tune"] == r["n_test"] == 100
    st = r["settings"]
    assert (st["k"], st["p"], st["tune_fraction"], st["seed"], st["per_round"]) == (K, 8.0, 0.5, 0, 10)
    assert st["templates"] == list(DEFAULT_TEMPLATES) and st["stopping_rule"] == STOP_RULE
    assert st["image_encoder"] == "efficientnet-lite0" and st["text_encoder"] == "minilm"
    # the reported test accuracy before curating is the plain model's on the same held-out split

    img, txt = flickr_embeddings
    prompts, pc = build_prompts(cifar_small.class_names, DEFAULT_TEMPLATES)
    res = AsifModel(img[:300], txt[:300], k=K, p=8.0).classify(
        cifar_small_embeddings[~split], _texts(prompts), pc, n_classes=10)
    assert r["test_before"] == pytest.approx(res.accuracy(cifar_small.labels[~split]))
    bad = subprocess.run([sys.executable, "-m", "core", "asif", "curate", "--max-additions", "5", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--add-pool" in bad.stderr


def test_cli_names_a_class_too_small_to_split(data_root, tmp_path):
    import shutil

    src = data_root / "cifar10" / "test"
    for cls, n in (("cat", 3), ("dog", 1)):
        (tmp_path / cls).mkdir()
        for f in sorted((src / cls).iterdir())[:n]:
            shutil.copy(f, tmp_path / cls / f.name)
    out = subprocess.run([sys.executable, "-m", "core", "asif", "curate", "--test", str(tmp_path),
                          "--limit-anchors", "300", "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert "Class 'dog' has 1 labeled item" in out.stderr


# ------------------------------------------------------------------------------- the Curate page panel

def test_app_auto_curate_and_suggested_additions(demo_root):
    from streamlit.testing.v1 import AppTest

    from app_helpers import APP, open_curate, run_ready, texts
    from core import store
    from core.cache import EmbeddingCache
    from core.live import LiveModel, WorkspaceVectors

    at = open_curate(run_ready(AppTest.from_file(APP, default_timeout=240)))
    ws = store.Workspace(store.list_workspaces(demo_root)[0])
    at.number_input(key="ac_budget").set_value(20)
    at.number_input(key="ac_per_round").set_value(5)
    [b for b in at.button if b.label == "Run auto-curate"][0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    edits = ws.edits()
    assert edits and all(e.kind == "remove" and len(e.pair_ids) <= 5 for e in edits) and len(edits) <= 4
    assert [e.note for e in edits] == [f"auto-curate round {i + 1}" for i in range(len(edits))]
    # the summary shows both parts, as a fresh model of the workspace computes them
    fresh = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    m = fresh.metrics()
    shown = {x.label: x.value for x in at.metric}
    assert shown["Tuning accuracy (chooses)"] == f"{100 * m.tune:.1f}%"
    assert shown["Test accuracy (held out, honest)"] == f"{100 * m.test:.1f}%"
    assert "stopped because" in texts(at)

    at.number_input(key="suggest_n").set_value(6)
    at.number_input(key="suggest_pool").set_value(8)
    at.button(key="suggest_go").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "If all 6 were added" in texts(at)
    n0 = len(ws.edits())
    [b for b in at.button if b.label.startswith("Add 6 checked")][0].click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    last = ws.edits()[-1]
    assert len(ws.edits()) == n0 + 1 and last.kind == "add" and len(last.pair_ids) == 6
    added = [p for p in ws.all_pairs() if p.pair_id in set(last.pair_ids)]
    assert all(p.image.startswith("demo:cifar10/train/") for p in added)
    assert {p.caption for p in added} <= {f"a photo of a{'n' if c[0] in 'aeiou' else ''} {c}."
                                          for c in fresh.vectors.classes}
