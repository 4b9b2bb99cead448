"""core.edits: the incremental path equals a full recompute on long random edit sequences
(removals, additions, duplicates/ties, undo/redo, slack exhaustion), what-if, influence (exact
leave-one-out), most-harmful ranking, and the same on real embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from core.edits import neighbours
from core.asif import AsifModel
from core.edits import EditSession


def _random_problem(seed, n=450, q=160, c=4, t=3, d1=12, d2=10):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n // 3, d1))
    img = np.repeat(base, 3, axis=0)  # every image has 3 captions: exact ties, like Flickr8k
    txt = rng.normal(size=(n, d2))
    return rng, dict(img=img, txt=txt, q=rng.normal(size=(q, d1)), y=rng.integers(0, c, q),
                     prompts=rng.normal(size=(c * t, d2)), pc=np.repeat(np.arange(c), t))


def _check_against_full(s: EditSession):
    full_model = s.current_model()
    res = full_model.classify(s.eval_images, s.cand, s.cand_classes, strategy="per-template",
                              n_classes=s.n_classes)
    np.testing.assert_array_equal(s.predictions, res.predictions)
    np.testing.assert_allclose(s.class_scores, res.scores, atol=2e-6)
    fresh = EditSession(full_model, s.eval_images, s.labels, s.cand, s.cand_classes,
                        strategy="per-template", slack=s.slack)
    np.testing.assert_allclose(s.D, fresh.D, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(s.na2, fresh.na2, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(s.nb2, fresh.nb2, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("strategy,seed,largest,product_max", [
    ("mean", 0, 8, 256), ("per-template", 1, 8, 256), ("mean", 2, 8, 256),  # one pair at a time
    ("per-template", 5, 24, 256),  # also whole-list merges and filters (more than SEQUENTIAL_MAX)
    ("per-template", 6, 24, 0)])  # the text side's changed anchors found by scanning the lists
def test_random_edit_sequence_equals_full_recompute(strategy, seed, largest, product_max, monkeypatch):
    monkeypatch.setattr(neighbours, "PRODUCT_MAX_ANCHORS", product_max)
    rng, P = _random_problem(seed)
    model = AsifModel(P["img"], P["txt"], k=15, p=3)
    s = EditSession(model, P["q"], P["y"], P["prompts"], P["pc"], strategy=strategy, slack=3)
    np.testing.assert_array_equal(s.predictions, s.full_recompute())
    kinds = set()
    for step in range(160):
        r = rng.random()
        if r < 0.4:
            ids = rng.choice(s.pair_ids, size=int(rng.integers(1, largest)), replace=False)
            res = s.remove(ids)
            kinds.add("remove")
        elif r < 0.65:
            m = int(rng.integers(1, largest // 2 + 1))
            # half the time re-use existing image embeddings (more exact ties)
            im = P["img"][rng.integers(0, len(P["img"]), m)] if rng.random() < 0.5 else rng.normal(size=(m, 12))
            res = s.add(im, rng.normal(size=(m, 10)))
            kinds.add("add")
        elif r < 0.9 and s.can_undo:
            res = s.undo()
            kinds.add("undo")
        elif s.can_redo:
            res = s.redo()
            kinds.add("redo")
        else:
            continue
        assert res.n_anchors == s.n_anchors
        np.testing.assert_array_equal(s.predictions, s.full_recompute(), err_msg=f"step {step}")
        if step % 40 == 0:
            _check_against_full(s) if strategy == "per-template" else None
    assert kinds == {"remove", "add", "undo", "redo"}
    assert s.img_side.recomputed > 0  # slack ran out and was handled
    acc_log = s.accuracy_log
    assert len(acc_log) > 100


def test_removal_finds_a_pair_whose_stored_similarity_is_one_bit_off():
    # Another BLAS may round a recomputed similarity differently from the stored one; the binary
    # search then misses the pair, and the lists must still lose it.
    rng, P = _random_problem(7)
    s = EditSession(AsifModel(P["img"], P["txt"], k=15, p=3), P["q"], P["y"], P["prompts"], P["pc"])
    side = s.img_side
    row = int(np.bincount(side.rows[:, :15].ravel()).argmax())  # the pair held by most images
    held = side.rows == row
    side.sims[held] = np.nextafter(side.sims[held], np.float32(np.inf))  # now ranks before itself
    s._full_scores()
    s.remove([s.anchors.ids[row]])
    assert not (side.rows == row).any()
    np.testing.assert_array_equal(s.predictions, s.full_recompute())


def test_a_pair_put_back_ties_with_its_twins_when_a_product_rounds_differently():
    # Flickr8k gives one image five captions: rows with the same image embedding tie exactly, and
    # ties break by row. A product of another shape (or thread count) may round a similarity one bit
    # differently: simulate it (every stored image similarity one bit lower), then take out a pair
    # whose twin sits at the k-th place and put it back; it must land after its twin, as in a full
    # recompute, not before it.
    rng, P = _random_problem(11)  # 150 images x 3 captions
    k = 16  # not a multiple of 3: twin groups straddle the top-k boundary
    s = EditSession(AsifModel(P["img"], P["txt"], k=k, p=3), P["q"], P["y"], P["prompts"], P["pc"],
                    slack=4)
    side = s.img_side
    side.sims[:] = np.nextafter(side.sims, np.float32(-np.inf))
    s._full_scores()
    a, b = side.rows[:, k - 1], side.rows[:, k]
    straddle = np.flatnonzero((b // 3 == a // 3) & (b > a))  # twins across the top-k boundary
    assert straddle.size
    s.remove([s.anchors.ids[b[straddle[0]]]])
    s.undo()
    fresh = EditSession(s.current_model(), P["q"], P["y"], P["prompts"], P["pc"], slack=4)
    np.testing.assert_array_equal(np.sort(s.anchors.ids[side.rows[:, :k]], axis=1),
                                  np.sort(fresh.anchors.ids[fresh.img_side.rows[:, :k]], axis=1))
    np.testing.assert_array_equal(s.predictions, s.full_recompute())


def test_scores_match_fresh_session_after_edits():
    rng, P = _random_problem(3)
    s = EditSession(AsifModel(P["img"], P["txt"], k=12, p=5), P["q"], P["y"], P["prompts"], P["pc"],
                    strategy="per-template", slack=2)
    for _ in range(30):
        s.remove(rng.choice(s.pair_ids, 3, replace=False))
        s.add(rng.normal(size=(2, 12)), rng.normal(size=(2, 10)))
    _check_against_full(s)


def test_session_rebuilt_from_neighbour_state_edits_identically():
    rng, P = _random_problem(4)
    model = AsifModel(P["img"], P["txt"], k=12, p=5)
    built = EditSession(model, P["q"], P["y"], P["prompts"], P["pc"], slack=4)
    restored = EditSession(model, P["q"], P["y"], P["prompts"], P["pc"], slack=4,
                           neighbours=built.neighbour_state())
    np.testing.assert_array_equal(restored.predictions, built.predictions)
    for _ in range(20):
        ids = rng.choice(built.pair_ids, 3, replace=False)
        built.remove(ids)
        restored.remove(ids)
        np.testing.assert_array_equal(restored.predictions, built.predictions)
    _check_against_full(restored)


def test_undo_restores_exactly_and_what_if_commits_nothing():
    rng, P = _random_problem(4)
    s = EditSession(AsifModel(P["img"], P["txt"], k=15, p=3), P["q"], P["y"], P["prompts"], P["pc"])
    pred0, acc0, ids0 = s.predictions.copy(), s.accuracy, s.pair_ids.copy()
    w = s.what_if_remove(ids0[:20])
    assert not w.committed
    np.testing.assert_array_equal(s.predictions, pred0)
    np.testing.assert_array_equal(s.pair_ids, ids0)
    r = s.remove(ids0[:20])
    assert r.accuracy == w.accuracy and r.accuracy_before == acc0
    assert r.elapsed_ms >= 0 and r.per_class_accuracy.shape == (4,)
    u = s.undo()
    assert u.accuracy == acc0
    np.testing.assert_array_equal(s.predictions, pred0)
    np.testing.assert_array_equal(s.pair_ids, ids0)
    s.redo()
    assert s.n_anchors == len(ids0) - 20
    wa = s.what_if_add(rng.normal(size=(5, 12)), rng.normal(size=(5, 10)))
    assert s.n_anchors == len(ids0) - 20 and not wa.committed
    with pytest.raises(ValueError):
        s.remove([ids0[0]])  # already removed
    with pytest.raises(ValueError):
        s.remove([10 ** 9])  # unknown
    with pytest.raises(ValueError):
        s.remove(s.pair_ids[: s.n_anchors - 10])  # would leave fewer than k
    with pytest.raises(ValueError):
        s.add(rng.normal(size=(1, 12)), rng.normal(size=(1, 10)), pair_ids=[int(ids0[1])])


@pytest.mark.parametrize("strategy", ["mean", "per-template"])
def test_influence_leave_one_out_is_exact(strategy):
    rng, P = _random_problem(5, n=240, q=120)
    s = EditSession(AsifModel(P["img"], P["txt"], k=10, p=4), P["q"], P["y"], P["prompts"], P["pc"],
                    strategy=strategy, slack=3)
    s.remove(s.pair_ids[:5])  # some history first
    inf = s.influence()
    assert len(inf.pair_ids) == s.n_anchors
    assert inf.n_fast > 0 and inf.n_algebraic > 0  # both exact shortcuts are exercised
    for i in range(len(inf.pair_ids)):
        model = s.current_model().with_pairs_removed([inf.pair_ids[i]])
        res = model.classify(s.eval_images, s.cand, s.cand_classes, strategy="per-template",
                             n_classes=s.n_classes)
        assert inf.loo_delta[i] == pytest.approx(res.accuracy(s.labels) - s.accuracy, abs=1e-12)
        assert inf.loo_changed[i] == (res.predictions != s.predictions).sum()
    assert (inf.supported_correct + inf.supported_wrong == inf.participated).all()
    assert (inf.participated <= inf.in_topk).all() and inf.in_topk.sum() == 120 * 10
    top = s.most_harmful(5, inf)
    assert top[0]["loo_delta"] == inf.loo_delta.max()
    # removing the most harmful pair gives exactly the promised gain
    before = s.accuracy
    s.remove([top[0]["pair_id"]])
    assert s.accuracy - before == pytest.approx(top[0]["loo_delta"], abs=1e-12)


def _fields(inf):
    return {f: getattr(inf, f) for f in ("pair_ids", "in_topk", "participated", "supported_correct",
                                          "supported_wrong", "loo_delta", "loo_changed")}


@pytest.mark.parametrize("strategy,slack", [("mean", 3), ("per-template", 3), ("per-template", 1)])
def test_influence_on_a_mask_equals_a_session_of_the_masked_images(strategy, slack):
    rng, P = _random_problem(8, n=240, q=150)
    model = AsifModel(P["img"], P["txt"], k=10, p=4)
    mask = rng.random(150) < 0.5
    full = EditSession(model, P["q"], P["y"], P["prompts"], P["pc"], strategy=strategy, slack=slack)
    part = EditSession(model, P["q"][mask], P["y"][mask], P["prompts"], P["pc"], strategy=strategy,
                       slack=slack)
    for ids in (full.pair_ids[:4], full.pair_ids[10:12]):  # some history, slack partly spent
        full.remove(ids)
        part.remove(ids)
    inf_full, inf_part = full.influence(eval_mask=mask), part.influence()
    assert inf_full.n_fast > 0 and inf_full.n_algebraic + inf_full.n_edit_path > 0
    for name, value in _fields(inf_part).items():
        np.testing.assert_array_equal(_fields(inf_full)[name], value, err_msg=name)
    # the same selection given as indices
    idx_inf = full.influence(eval_mask=np.flatnonzero(mask))
    np.testing.assert_array_equal(idx_inf.loo_delta, inf_part.loo_delta)
    assert full.accuracy_on(mask) == part.accuracy
    np.testing.assert_array_equal(full.per_class_accuracy_on(mask), part.per_class_accuracy)


def test_influence_on_a_mask_never_reads_the_other_labels():
    rng, P = _random_problem(9, n=240, q=150)
    model = AsifModel(P["img"], P["txt"], k=10, p=4)
    mask = rng.random(150) < 0.4
    shuffled = P["y"].copy()
    shuffled[~mask] = rng.permutation(shuffled[~mask])
    shuffled[np.flatnonzero(~mask)[:10]] = (shuffled[np.flatnonzero(~mask)[:10]] + 1) % 4
    assert (shuffled != P["y"]).any()
    a = EditSession(model, P["q"], P["y"], P["prompts"], P["pc"], strategy="per-template", slack=2)
    b = EditSession(model, P["q"], shuffled, P["prompts"], P["pc"], strategy="per-template", slack=2)
    inf_a, inf_b = a.influence(eval_mask=mask), b.influence(eval_mask=mask)
    for name, value in _fields(inf_a).items():
        np.testing.assert_array_equal(_fields(inf_b)[name], value, err_msg=name)
    assert a.most_harmful(10, eval_mask=mask) == b.most_harmful(10, eval_mask=mask)
    assert a.accuracy_on(mask) == b.accuracy_on(mask)
    assert a.accuracy_on(~mask) != b.accuracy_on(~mask)  # the other labels did change


def test_edit_results_carry_predictions_for_any_part():
    rng, P = _random_problem(10)
    s = EditSession(AsifModel(P["img"], P["txt"], k=15, p=3), P["q"], P["y"], P["prompts"], P["pc"])
    mask = np.zeros(160, dtype=bool)
    mask[::3] = True
    before = s.predictions.copy()
    w = s.what_if_remove(s.pair_ids[:30])
    np.testing.assert_array_equal(w.predictions_before, before)
    np.testing.assert_array_equal(s.predictions, before)  # nothing committed
    r = s.remove(s.pair_ids[:30])
    np.testing.assert_array_equal(r.predictions, s.predictions)
    np.testing.assert_array_equal(w.predictions, r.predictions)
    np.testing.assert_array_equal(r.predictions_before, before)
    assert r.n_changed == (r.predictions != r.predictions_before).sum()
    on_mask = np.mean(r.predictions[mask] == s.labels[mask])
    assert s.accuracy_on(mask) == on_mask
    a = s.add(rng.normal(size=(3, 12)), rng.normal(size=(3, 10)))
    np.testing.assert_array_equal(a.predictions, s.predictions)
    np.testing.assert_array_equal(a.predictions_before, r.predictions)
    # a class with no selected image has NaN accuracy
    one_class = s.labels == 0
    per = s.per_class_accuracy_on(one_class)
    assert not np.isnan(per[0]) and np.isnan(per[1:]).all()
    for bad in (np.zeros(160, dtype=bool), np.ones(5, dtype=bool), np.array([0, 160]), [0.5]):
        with pytest.raises(ValueError):
            s.accuracy_on(bad)


# ------------------------------------------------------------------ real embeddings

def test_real_session_curation(flickr_embeddings, cifar_small, cifar_small_embeddings, embedding_cache):
    from core.asif import build_prompts
    from core.embedded import embed

    img, txt = flickr_embeddings
    prompts, pc = build_prompts(cifar_small.class_names, ["a photo of a {}.", "a picture of a {}."])
    s = EditSession(AsifModel(img, txt, k=50, p=8), cifar_small_embeddings, cifar_small.labels,
                    embed("minilm", prompts, cache=embedding_cache).vectors, pc, class_names=cifar_small.class_names)
    inf = s.influence()
    worst = inf.rows()[:3]
    assert worst[0]["loo_delta"] >= worst[-1]["loo_delta"]
    before = s.accuracy
    r = s.remove([worst[0]["pair_id"]])
    assert r.accuracy - before == pytest.approx(worst[0]["loo_delta"], abs=1e-12)
    # Flickr8k has 5 captions per image: exact image ties; a random sequence still equals a recompute
    rng = np.random.default_rng(0)
    for _ in range(12):
        if rng.random() < 0.6:
            s.remove(rng.choice(s.pair_ids, 4, replace=False))
        else:
            s.undo() if s.can_undo else None
        np.testing.assert_array_equal(s.predictions, s.full_recompute())
    # "adjust in seconds": add in-domain pairs captioned with the class name -> accuracy rises
    caps = [f"a photo of a {cifar_small.class_names[c]}" for c in cifar_small.labels[::10]]
    add = s.add(cifar_small_embeddings[::10], embed("minilm", caps, cache=embedding_cache).vectors)
    assert add.accuracy > add.accuracy_before
    np.testing.assert_array_equal(s.predictions, s.full_recompute())


def test_undoing_dominant_additions_stays_exact(flickr_embeddings, cifar_small, cifar_small_embeddings,
                                                embedding_cache, monkeypatch):
    """In-domain pairs (a labeled picture's near-twin, captioned with its class prompt) dominate the
    norms they enter; taking them out again must not leave the cancelled remainder inexact (the
    session then recomputes those rows / columns from its lists)."""
    from core.asif import build_prompts
    from core.embedded import embed

    img, txt = flickr_embeddings
    names = cifar_small.class_names
    prompts, pc = build_prompts(names, ["a photo of a {}."])
    pe = embed("minilm", prompts, cache=embedding_cache).vectors
    s = EditSession(AsifModel(img, txt, k=60, p=8), cifar_small_embeddings, cifar_small.labels, pe, pc,
                    class_names=names)
    start = s.predictions.copy()
    rng = np.random.default_rng(0)
    for _ in range(30):
        pick = rng.choice(len(cifar_small.labels), 8, replace=False)
        s.add(cifar_small_embeddings[pick] + 1e-3 * rng.standard_normal((8, img.shape[1])),
              pe[cifar_small.labels[pick]])
    while s.can_undo:
        s.undo()
        np.testing.assert_array_equal(s.predictions, s.full_recompute())
    np.testing.assert_array_equal(s.predictions, start)


def test_a_copied_session_shares_the_model_rows_and_edits_alone():
    """``LiveModel.influence`` works on a deep copy of the session: the model's rows (8 GB at 1.6M
    pairs) and the metadata are shared, everything an edit changes is the copy's own."""
    import copy

    rng, P = _random_problem(7)
    meta = [{"caption": f"c{i}"} for i in range(len(P["txt"]))]
    s = EditSession(AsifModel(P["img"], P["txt"], metadata=meta, k=12, p=5), P["q"], P["y"], P["prompts"],
                    P["pc"], strategy="per-template", slack=2)
    s.add(rng.normal(size=(2, 12)), rng.normal(size=(2, 10)), metadata=[{"caption": "x"}, {"caption": "y"}])
    before = (s.predictions.copy(), s.pair_ids.copy(), s.anchors.img[np.arange(s.anchors.size)].copy())
    c = copy.deepcopy(s)
    assert np.shares_memory(c.anchors.img.base, s.anchors.img.base)
    assert not np.shares_memory(c.anchors.img.extra, s.anchors.img.extra)
    assert c.anchors.metadata[0] is s.anchors.metadata[0]
    c.remove(rng.choice(c.pair_ids, 5, replace=False))
    c.add(rng.normal(size=(3, 12)), rng.normal(size=(3, 10)))
    _check_against_full(c)
    np.testing.assert_array_equal(s.predictions, before[0])
    np.testing.assert_array_equal(s.pair_ids, before[1])
    np.testing.assert_array_equal(s.anchors.img[np.arange(s.anchors.size)], before[2])
    assert len(s.anchors.metadata) == s.anchors.size and s.anchors.size == len(P["txt"]) + 2
    _check_against_full(s)
