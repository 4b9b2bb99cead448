"""Modality gap, similarity histograms, retrieval mAP, intra-modal recovery and class-axis projection."""
from __future__ import annotations

import numpy as np
import pytest

from core import gap
from core.arrays import l2_normalize


def _unit(rng, n, d, shift=0.0):
    return l2_normalize(rng.normal(size=(n, d)) + shift)


def test_modality_gap():
    rng = np.random.default_rng(0)
    x = _unit(rng, 100, 8)
    assert gap.modality_gap(x, x)["gap"] == pytest.approx(0.0, abs=1e-6)
    shifted = gap.modality_gap(_unit(rng, 200, 8, 2.0), _unit(rng, 200, 8, -2.0))
    assert shifted["gap"] > 1.0 and shifted["centroid_cosine"] < 0
    out = gap.modality_gap(x, x, (np.arange(100), np.arange(100)))
    assert out["matched_cosine"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="shared space"):
        gap.modality_gap(x, _unit(rng, 10, 4))


def test_similarity_distributions_and_histograms():
    rng = np.random.default_rng(1)
    x = _unit(rng, 30, 8)
    t = l2_normalize(x + 0.1 * rng.normal(size=x.shape))
    d = gap.similarity_distributions(x, t, inverted=x)
    assert len(d["image-image"]) == 30 * 29 // 2
    assert np.allclose(d["inverted-image matched"], 1.0, atol=1e-5)
    assert d["text-image matched"].mean() > d["text-image unmatched"].mean()
    h = gap.histograms(d, bins=20)
    assert h["edges"].shape == (21,) and set(h["density"]) == set(d)
    for dens in h["density"].values():
        assert np.sum(dens * np.diff(h["edges"])) == pytest.approx(1.0, abs=1e-4)


def _brute_ap(scores, rel):
    order = np.argsort(-scores, kind="stable")
    r = rel[order]
    hits = np.cumsum(r)
    return np.sum(hits[r] / (np.nonzero(r)[0] + 1)) / r.sum()


def test_mean_average_precision_matches_brute_force():
    rng = np.random.default_rng(2)
    q, g = _unit(rng, 13, 6), _unit(rng, 40, 6)
    ql, gl = rng.integers(0, 3, 13), rng.integers(0, 3, 40)
    got = gap.mean_average_precision(q, g, gap.label_relevance(ql, gl), chunk=5)
    s = q @ g.T
    want = np.mean([_brute_ap(s[i], gl == ql[i]) for i in range(13)]) * 100
    assert got["mAP"] == pytest.approx(want, abs=1e-4) and got["n_queries"] == 13


def test_caption_protocol_excludes_the_query():
    pair_image = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    queries, rel, exc = gap.caption_relevance(pair_image)
    assert queries.tolist() == [0, 3, 5]
    emb = np.eye(3)[pair_image] + 1e-3 * np.arange(8)[:, None]
    out = gap.mean_average_precision(emb[queries], emb, rel, exc)
    assert out["mAP"] == pytest.approx(100.0) and out["n_queries"] == 3


def test_recovery_is_exact_when_n_is_large_enough():
    rng = np.random.default_rng(3)
    x = _unit(rng, 400, 6)
    t = _unit(rng, 300, 6, 0.3)
    res = gap.recover_intra_from_inter(t @ x.T)
    assert res.determined and res.rank == 6 and res.n_unknowns == 21
    assert np.abs(res.s_intra - x @ x.T).max() < 1e-4


def test_recovery_says_plainly_when_n_is_too_small():
    rng = np.random.default_rng(4)
    x = _unit(rng, 20, 8)
    t = _unit(rng, 50, 8)
    res = gap.recover_intra_from_inter(t @ x.T)
    assert not res.determined and "too small" in res.message and "36" in res.message
    refused = gap.recover_intra_from_inter(t @ x.T, max_matrix_entries=10)
    assert refused.s_intra is None and "lower the rank" in refused.message


def test_class_axis_projection():
    rng = np.random.default_rng(5)
    x, c = _unit(rng, 50, 6), _unit(rng, 40, 6)
    # all axes kept: the projection is the identity
    assert np.allclose(gap.class_axis_projection(x, c, 6, mean_adjust=False), x, atol=1e-5)
    p = gap.class_axis_projection(x, c, 2, mean_adjust=False, renormalize=False)
    assert np.linalg.matrix_rank(p, tol=1e-5) == 2
    pm = gap.class_axis_projection(x, c, 2, mean_adjust=True, renormalize=False)
    # mean adjustment is one translation: pairwise distances are unchanged
    assert np.allclose(np.linalg.norm(pm[0] - pm[1]), np.linalg.norm(p[0] - p[1]), atol=1e-5)
    # … which moves the projected cloud back onto the original mean (eq. 12)
    assert np.allclose(pm.mean(0), x.mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="principal axes"):
        gap.class_axis_projection(x, c[:3], 5)
