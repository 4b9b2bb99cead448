"""core.matching: local CKA equals the reference's per-pair CKA, QAP/baselines/metrics behave."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # These arrays are small: one BLAS thread is as fast on a quiet machine and avoids the
    # spin-wait slowdowns of multi-threaded BLAS when the 2 cores are shared with other work.
    with threadpool_limits(limits=1):
        yield

from core import cka, matching as mt


def _latent_pairs(n, dx=10, dy=7, k=4, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, k))
    X = Z @ rng.normal(size=(k, dx)) + noise * rng.normal(size=(n, dx))
    Y = np.tanh(Z @ rng.normal(size=(k, dy))) + noise * rng.normal(size=(n, dy))
    return X, Y


def _direct_cka(A, B, kernel, sigma=None):
    """The reference's KernelCKA.calculate / LinearCKA.calculate with an explicit H (eq. 2.1-2.2)."""
    n = A.shape[0]
    H = np.eye(n) - 1.0 / n

    def gram(Z):
        G = Z @ Z.T
        if kernel == "linear":
            return G
        D = np.diag(G)[None, :] - G + (np.diag(G)[None, :] - G).T
        s = sigma
        if s is None:
            v = np.sort(D[D != 0])
            s = np.sqrt(v[(v.size - 1) // 2])
        return np.exp(-D / (2 * s * s))

    K, L = gram(A), gram(B)
    h = lambda P, Q: np.sum((H @ P @ H) * (H @ Q @ H))
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def _reference_grid(sb, tb, sq, tq, kernel, sigma=None):
    return np.array([[_direct_cka(np.vstack([sq[i:i + 1], sb]), np.vstack([tq[j:j + 1], tb]), kernel, sigma)
                      for j in range(len(tq))] for i in range(len(sq))])


@pytest.mark.parametrize("kernel,sigma,n_nodes", [
    ("rbf", "auto", 12),   # per-call median bandwidth, as the reference
    ("rbf", "auto", 4),    # forced interpolation with few nodes: still close
    ("rbf", 1.7, 12),      # fixed bandwidth: exact
    ("linear", "auto", 12),
])
def test_local_cka_equals_reference_double_loop(kernel, sigma, n_nodes):
    X, Y = _latent_pairs(52, seed=1)
    sb, tb, sq, tq = X[:40], Y[:40], X[40:], Y[40:]
    want = _reference_grid(sb, tb, sq, tq, kernel, None if sigma == "auto" else sigma)
    got = mt.LocalCKA(sb, tb, kernel=kernel, sigma=sigma, n_nodes=n_nodes).score(sq, tq)
    tol = 1e-4 if n_nodes == 4 else 1e-10
    assert got.shape == (12, 12)
    assert np.abs(got - want).max() < tol


def test_local_cka_base_sigma_uses_base_median():
    X, Y = _latent_pairs(30, seed=2)
    sb, tb, sq, tq = X[:24], Y[:24], X[24:], Y[24:]
    sx, sy = cka.median_sigma(sb), cka.median_sigma(tb)
    got = mt.LocalCKA(sb, tb, sigma="base").score(sq, tq)
    want = np.array([[_direct_cka_two(np.vstack([sb, sq[i:i + 1]]), np.vstack([tb, tq[j:j + 1]]), sx, sy)
                      for j in range(6)] for i in range(6)])
    assert np.abs(got - want).max() < 1e-10


def _direct_cka_two(A, B, sx, sy):
    return cka.kernel_cka(cka.rbf_kernel(A, sx), cka.rbf_kernel(B, sy))


def test_union_lower_median_brute_force():
    rng = np.random.default_rng(3)
    S = np.sort(rng.integers(1, 20, size=57).astype(float))
    V = rng.integers(0, 25, size=(30, 9)).astype(float)
    got = mt._union_lower_median(S, V)
    for i in range(30):
        u = np.sort(np.concatenate([S, V[i][V[i] != 0]]))
        assert got[i] == u[(u.size - 1) // 2]


def test_qap_recovers_a_planted_matching():
    X, Y = _latent_pairs(140, noise=0.05, seed=4)
    rng = np.random.default_rng(0)
    shuffle = rng.permutation(40)
    sb, tb = X[:100], Y[:100]
    sq, tq = X[100:], Y[100:][shuffle]
    perm = mt.qap_match(sb, tb, sq, tq, restarts=2, seed=0)
    assert sorted(perm.tolist()) == list(range(40))
    assert mt.matching_accuracy(perm, np.argsort(shuffle)) > 0.8


def test_local_cka_and_baselines_retrieve_on_easy_data():
    X, Y = _latent_pairs(260, noise=0.05, seed=5)
    sb, tb, sq, tq = X[:200], Y[:200], X[200:], Y[200:]
    for S in (mt.local_cka_scores(sb, tb, sq, tq), mt.relative_scores(sb, tb, sq, tq)):
        assert mt.retrieval_at_k(S)["top5"] > 0.8
        assert mt.matching_accuracy(mt.assign(S)) > 0.6


def test_linear_map_is_exact_for_a_linear_relation():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(80, 6))
    W = rng.normal(size=(6, 5))
    S = mt.linear_map_scores(X[:50], X[:50] @ W, X[50:], X[50:] @ W)
    assert np.allclose(np.diag(S), 1.0)
    assert mt.retrieval_at_k(S)["top1"] == 1.0


def test_relative_scores_formula():
    rng = np.random.default_rng(7)
    sb, tb, sq, tq = (rng.normal(size=s) for s in [(9, 4), (9, 3), (5, 4), (6, 3)])
    n = lambda A: A / np.linalg.norm(A, axis=1, keepdims=True)
    want = n(n(sq) @ n(sb).T) @ n(n(tq) @ n(tb).T).T
    assert np.allclose(mt.relative_scores(sb, tb, sq, tq), want)


def test_metrics_and_assignment():
    S = np.array([[3.0, 1, 0], [2, 2, 0], [0, 1, 1]])
    # rows 1 and 2 tie their true column with another: ties count against the query
    assert mt.retrieval_at_k(S, ks=(1, 2)) == {"top1": pytest.approx(1 / 3), "top2": 1.0}
    perm = mt.assign(S)
    assert perm.tolist() == [0, 1, 2]
    assert mt.matching_accuracy([0, 2, 1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        mt.assign(np.ones((3, 2)))


def test_stretch_and_kmeans_base():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 5)) * np.array([1, 10, 100, 0.1, 1])
    assert np.allclose(mt.stretch(X).std(axis=0, ddof=1), 1.0)
    idx = mt.kmeans_base(X, 25, seed=0)
    assert idx.size == 25 and np.unique(idx).size == 25
    with pytest.raises(ValueError):
        mt.kmeans_base(X, 301)


def test_evaluate_protocol_rows():
    X, Y = _latent_pairs(200, noise=0.1, seed=9)
    rows = mt.evaluate(X, Y, n_base=60, n_query=40, seeds=(0, 1), qap_restarts=1)
    assert len(rows) == 2 * len(mt.METHODS)
    summary = {s["method"]: s for s in mt.summarize(rows)}
    assert summary["qap"]["top5"] is None
    for m in ("local_cka", "relative"):
        assert summary[m]["top5"] > 0.5
    with pytest.raises(ValueError):
        mt.evaluate(X, Y, n_base=150, n_query=100)


def test_loo_cka_gain_equals_brute_force():
    X, Y = _latent_pairs(40, seed=10)
    got = mt.suspicious_pair_scores(X, Y, method="loo_cka")
    full = cka.linear_cka(X, Y, feature_space=True)
    want = np.array([cka.linear_cka(np.delete(X, i, 0), np.delete(Y, i, 0)) - full for i in range(40)])
    assert np.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("method", ["rank", "agreement"])
def test_suspicious_scores_find_swapped_pairs_on_synthetic_data(method):
    X, Y = _latent_pairs(600, noise=0.2, seed=11)
    rng = np.random.default_rng(0)
    bad = rng.choice(600, size=30, replace=False)
    Y = Y.copy()
    Y[bad] = Y[np.roll(bad, 1)]
    s = mt.suspicious_pair_scores(X, Y, method=method, n_base=80, pool=200)
    assert s.shape == (600,)
    from core.cli.align import detection_metrics
    truth = np.zeros(600, bool)
    truth[bad] = True
    assert detection_metrics(s, truth)["roc_auc"] > 0.9


def test_bad_inputs():
    X, Y = _latent_pairs(30)
    with pytest.raises(ValueError):
        mt.LocalCKA(X[:10], Y[:9])
    with pytest.raises(ValueError):
        mt.LocalCKA(X[:10], Y[:10]).score(X[:3, :5], Y[:3])
    with pytest.raises(ValueError):
        mt.qap_match(X[:10], Y[:10], X[10:15], Y[10:16])
    with pytest.raises(ValueError):
        mt.suspicious_pair_scores(X, Y[:20])
    with pytest.raises(ValueError):
        mt.suspicious_pair_scores(X, Y, method="nope")
    with pytest.raises(ValueError):
        mt.evaluate(X, Y, n_base=10, n_query=5, methods=["magic"])


def test_prepared_scoring_and_pairwise_diagonal():
    X, Y = _latent_pairs(70, seed=12)
    lc = mt.LocalCKA(X[:50], Y[:50])
    full = lc.score(X[50:], Y[50:])
    ps, pt = lc.prepare_src(X[50:]), lc.prepare_tgt(Y[50:])
    assert np.allclose(lc.score_prepared(ps, pt), full, atol=1e-12)
    assert np.allclose(lc.score_pairs_prepared(ps, pt), np.diag(full), atol=1e-12)


# ---- real embeddings: the first 100 Flickr8k images (efficientnet-lite0 x minilm, ~500 pairs) -------

def test_real_embeddings_cka_matching_and_suspicion(flickr_pairs, flickr_embeddings):
    from core.cli.align import detection_metrics, swap_captions
    from core.embedded import first_pair_per_image

    img, txt = (np.asarray(a, dtype=np.float64) for a in flickr_embeddings)
    groups = np.asarray(flickr_pairs.pair_image)
    lin, rbf = cka.linear_cka(img, txt), cka.rbf_cka(img, txt)
    assert 0.3 < lin < 0.9 and 0.3 < rbf < 0.9  # unaligned encoders, clearly related
    curve = cka.shuffle_curve(img, txt, fractions=(0.0, 0.5, 1.0), seed=0)
    assert curve[0]["cka"] > curve[1]["cka"] > curve[2]["cka"] and curve[2]["cka"] < 0.3 * lin

    first = first_pair_per_image(groups)  # one caption per image: 100 pairs
    summary = {s["method"]: s for s in mt.summarize(
        mt.evaluate(img[first], txt[first], n_base=50, n_query=50, seeds=(0,), qap_restarts=1))}
    assert summary["local_cka"]["top5"] > 0.3  # chance: 5/50
    assert summary["qap"]["matching_acc"] > 0.12  # chance: 1/50
    assert summary["relative"]["top5"] > 0.3

    txt_sw, _, swapped = swap_captions(txt, list(flickr_pairs.captions), 0.05, np.random.default_rng(0))
    rank = mt.suspicious_pair_scores(img, txt_sw, groups=groups, n_base=60, pool=300)
    loo = mt.suspicious_pair_scores(img, txt_sw, method="loo_cka")
    assert detection_metrics(rank, swapped)["roc_auc"] > 0.75
    assert detection_metrics(loo, swapped)["roc_auc"] > 0.85


def test_pair_embeddings_selects_before_embedding(data_root, flickr_pairs, flickr_embeddings,
                                                  embedding_cache):
    """One caption per image of the first 30 images, then a seeded subset of 20: the same rows as
    the conftest embeddings (the same pairs, in order), and no image twice."""
    from core.embedded import first_pair_per_image

    one = mt.pair_embeddings(data_root / "flickr8k", first_images=30, cache=embedding_cache)
    rows = first_pair_per_image(flickr_pairs.pair_image)[:30]
    assert len(one) == 30 and len(set(one.pair_image.tolist())) == 30
    assert one.pair_ids == [flickr_pairs.pair_ids[i] for i in rows]
    np.testing.assert_array_equal(one.pair_image_vectors, flickr_embeddings[0][rows])
    np.testing.assert_array_equal(one.text_vectors, flickr_embeddings[1][rows])
    some = mt.pair_embeddings(data_root / "flickr8k", first_images=30, limit=20, seed=3,
                              cache=embedding_cache)
    again = mt.pair_embeddings(data_root / "flickr8k", first_images=30, limit=20, seed=3,
                               cache=embedding_cache)
    assert len(some) == 20 and some.pair_ids == again.pair_ids
    assert set(some.pair_ids) < set(one.pair_ids)
    every = mt.pair_embeddings(data_root / "flickr8k", first_images=30, one_caption_per_image=False,
                               cache=embedding_cache)
    assert len(every) == int((flickr_pairs.pair_image < 30).sum())
