"""The removal preview (``EditSession.what_if_remove``) changes nothing and equals committing the
removal and recomputing from scratch: random large removal sets (up to most of the anchors), exact
image ties (every photo has several captions, as in Flickr8k), lists whose slack runs out, after
earlier edits (dead rows, added rows), for both template strategies; and on real embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from core.asif import AsifModel
from core.edits import EditSession


def _twins_problem(seed, n_photos=120, captions=5, q=150, c=4, t=3):
    rng = np.random.default_rng(seed)
    img = np.repeat(rng.normal(size=(n_photos, 12)), captions, axis=0)  # exact ties
    # clustered queries and anchors, so a removal set near one query empties its list's slack
    return rng, dict(img=img, txt=rng.normal(size=(img.shape[0], 10)),
                     q=img[rng.integers(0, img.shape[0], q)] + 0.3 * rng.normal(size=(q, 12)),
                     y=rng.integers(0, c, q), prompts=rng.normal(size=(c * t, 10)),
                     pc=np.repeat(np.arange(c), t))


def _state(s: EditSession) -> list[np.ndarray]:
    return [s.D.copy(), s.na2.copy(), s.nb2.copy(), s.Bd.copy(), s.predictions.copy(),
            s.anchors.alive.copy()] + [a.copy() for a in s.neighbour_state().values()]


def _clustered(rng, s: EditSession, size: int) -> np.ndarray:
    """``size`` live pair ids nearest (by image) to a random evaluation image: a lasso region."""
    ids = s.pair_ids
    rows = s.rows_of(ids)
    sims = s.anchors.img[rows] @ s.eval_images[rng.integers(s.labels.size)]
    return ids[np.argsort(-sims, kind="stable")[:size]]


def _check_preview(s: EditSession, ids: np.ndarray) -> tuple[int, int]:
    """what_if_remove(ids) == a fresh model without ids == committing the removal; nothing changes."""
    before = _state(s)
    w = s.what_if_remove(ids)
    for a, b in zip(before, _state(s)):
        np.testing.assert_array_equal(a, b)  # nothing committed, nothing reverted
    assert not w.committed and w.n_anchors == s.n_anchors - len(np.unique(ids))
    fresh = s.current_model().with_pairs_removed(ids).classify(
        s.eval_images, s.cand, s.cand_classes, strategy="per-template", n_classes=s.n_classes)
    np.testing.assert_array_equal(w.predictions, fresh.predictions)
    r = s.remove(ids)
    np.testing.assert_array_equal(w.predictions, r.predictions)
    np.testing.assert_array_equal(w.predictions, s.full_recompute())
    assert (w.accuracy, w.accuracy_before, w.n_changed) == (r.accuracy, r.accuracy_before, r.n_changed)
    np.testing.assert_array_equal(w.per_class_accuracy, r.per_class_accuracy)
    if len(ids) > 8:  # the committed path filters whole lists too: the same lists run out of slack
        assert w.recomputed_queries == r.recomputed_queries
        assert w.touched_queries == r.touched_queries
    s.undo()
    np.testing.assert_array_equal(s.predictions, before[4])
    return w.recomputed_queries, w.touched_queries


@pytest.mark.parametrize("strategy,seed", [("mean", 0), ("per-template", 1), ("mean", 2)])
def test_preview_equals_commit_and_full_recompute(strategy, seed):
    rng, P = _twins_problem(seed)
    s = EditSession(AsifModel(P["img"], P["txt"], k=20, p=3), P["q"], P["y"], P["prompts"], P["pc"],
                    strategy=strategy, slack=4)
    recomputed = touched = 0
    for step in range(40):
        n = s.n_anchors
        if step % 5 == 4:  # earlier edits: dead rows, added rows (some re-using a photo: more ties)
            s.remove(rng.choice(s.pair_ids, int(rng.integers(1, 30)), replace=False))
            m = int(rng.integers(1, 12))
            im = P["img"][rng.integers(0, len(P["img"]), m)] if step % 10 == 4 else rng.normal(size=(m, 12))
            s.add(im, rng.normal(size=(m, 10)))
            continue
        size = int(rng.choice([1, 3, 9, 40, 150, n // 2, n - s.k]))
        ids = _clustered(rng, s, size) if step % 2 else rng.choice(s.pair_ids, size, replace=False)
        rec, tq = _check_preview(s, ids)
        recomputed += rec
        touched += tq
    assert recomputed > 0 and touched > 0  # slack ran out and was searched again


def test_preview_of_whole_photos_and_single_twins():
    """Removing some captions of a photo (its twins stay, tied at the same similarity) and all of
    them; the slack is 1, so nearly every list runs out."""
    rng, P = _twins_problem(3, n_photos=60)
    s = EditSession(AsifModel(P["img"], P["txt"], k=12, p=5), P["q"], P["y"], P["prompts"], P["pc"],
                    strategy="mean", slack=1)
    ids = s.pair_ids
    for photos, keep in ((3, 2), (10, 0), (25, 4), (40, 0)):
        chosen = rng.choice(60, photos, replace=False)
        drop = np.concatenate([ids[5 * p + keep:5 * p + 5] for p in chosen])
        rec, _ = _check_preview(s, drop)
    assert rec > 0


def test_preview_refuses_like_an_edit():
    rng, P = _twins_problem(4, n_photos=10)
    s = EditSession(AsifModel(P["img"], P["txt"], k=20, p=3), P["q"], P["y"], P["prompts"], P["pc"])
    with pytest.raises(ValueError, match="fewer than k"):
        s.what_if_remove(s.pair_ids[:40])
    s.remove(s.pair_ids[:3])
    with pytest.raises(ValueError, match="already removed"):
        s.what_if_remove(s.known_pair_ids()[:3])


def test_preview_on_real_embeddings(flickr_embeddings, cifar_small, cifar_small_embeddings, embedding_cache):
    """Flickr8k pairs (5 captions per photo) and CIFAR-10 pictures with p = 8: random and clustered
    removals of up to half the anchors equal a fresh model without them."""
    from core.asif import build_prompts
    from core.embedded import embed

    img, txt = flickr_embeddings
    names = cifar_small.class_names
    prompts, pc = build_prompts(names, ["a photo of a {}.", "a picture of a {}."])
    pe = embed("minilm", prompts, cache=embedding_cache).vectors
    rng = np.random.default_rng(0)
    for strategy in ("mean", "per-template"):
        s = EditSession(AsifModel(img, txt, k=60, p=8), cifar_small_embeddings, cifar_small.labels, pe, pc,
                        class_names=names, strategy=strategy)
        recomputed = 0
        for size in (1, 25, 120, 250):
            recomputed += _check_preview(s, rng.choice(s.pair_ids, size, replace=False))[0]
            recomputed += _check_preview(s, _clustered(rng, s, size))[0]
        assert recomputed > 0
