"""core.cka against a direct implementation of eq. 2.1-2.2 (C K C with an explicit centring matrix)."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # These arrays are small: one BLAS thread is as fast on a quiet machine and avoids the
    # spin-wait slowdowns of multi-threaded BLAS when the 2 cores are shared with other work.
    with threadpool_limits(limits=1):
        yield

from core import cka


def _pair(n=60, dx=12, dy=9, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 4))
    X = Z @ rng.normal(size=(4, dx)) + noise * rng.normal(size=(n, dx))
    Y = np.tanh(Z @ rng.normal(size=(4, dy))) + noise * rng.normal(size=(n, dy))
    return X, Y


# ---- direct reference implementations (what the paper writes down) -------------------------------

def _H(n):
    return np.eye(n) - np.ones((n, n)) / n


def direct_hsic(K, L):  # eq. 2.2
    n = K.shape[0]
    H = _H(n)
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def direct_cka(K, L):  # eq. 2.1
    return direct_hsic(K, L) / np.sqrt(direct_hsic(K, K) * direct_hsic(L, L))


def direct_unbiased_hsic(K, L):  # Song et al. 2012, written literally
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    return (np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ Kt @ Lt @ one) / (n * (n - 3))


def direct_unbiased_cka(K, L):
    return direct_unbiased_hsic(K, L) / np.sqrt(direct_unbiased_hsic(K, K) * direct_unbiased_hsic(L, L))


def direct_rbf(X, sigma=None):
    G = X @ X.T
    D = np.diag(G)[None, :] - G + (np.diag(G)[None, :] - G).T  # as the reference code builds it
    if sigma is None:
        v = np.sort(D[D != 0])
        sigma = np.sqrt(v[(v.size - 1) // 2])  # torch.median = lower median
    return np.exp(-D / (2 * sigma**2))


# ---- equivalence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("feature_space", [False, True])
def test_linear_cka_matches_direct(feature_space):
    X, Y = _pair()
    want = direct_cka(X @ X.T, Y @ Y.T)
    assert cka.linear_cka(X, Y, feature_space=feature_space) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("feature_space", [False, True])
def test_unbiased_linear_cka_matches_direct(feature_space):
    X, Y = _pair(n=50)
    want = direct_unbiased_cka(X @ X.T, Y @ Y.T)
    assert cka.linear_cka(X, Y, unbiased=True, feature_space=feature_space) == pytest.approx(want, abs=1e-12)


def test_rbf_cka_matches_direct_median_bandwidth():
    X, Y = _pair()
    want = direct_cka(direct_rbf(X), direct_rbf(Y))
    assert cka.rbf_cka(X, Y) == pytest.approx(want, abs=1e-12)
    want_u = direct_unbiased_cka(direct_rbf(X), direct_rbf(Y))
    assert cka.rbf_cka(X, Y, unbiased=True) == pytest.approx(want_u, abs=1e-12)


def test_rbf_cka_fixed_sigma_and_separate_sigmas():
    X, Y = _pair(seed=3)
    assert cka.rbf_cka(X, Y, sigma=2.0) == pytest.approx(direct_cka(direct_rbf(X, 2.0), direct_rbf(Y, 2.0)), abs=1e-12)
    assert cka.rbf_cka(X, Y, sigma=2.0, sigma_y=0.7) == pytest.approx(
        direct_cka(direct_rbf(X, 2.0), direct_rbf(Y, 0.7)), abs=1e-12)


def test_hsic_and_kernel_cka_on_grams():
    X, Y = _pair(n=40, seed=5)
    K, L = direct_rbf(X), X @ X.T + 0.1 * (Y @ Y.T)
    assert cka.hsic(K, L) == pytest.approx(direct_hsic(K, L), rel=1e-12)
    assert cka.hsic(K, L, unbiased=True) == pytest.approx(direct_unbiased_hsic(K, L), rel=1e-10)
    assert cka.kernel_cka(K, L) == pytest.approx(direct_cka(K, L), abs=1e-12)


def test_center_gram_equals_HKH():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(30, 30))
    K = A @ A.T
    H = _H(30)
    assert np.allclose(cka.center_gram(K), H @ K @ H, atol=1e-12)


def test_median_sigma_is_lower_median_distance():
    X, _ = _pair(n=31)
    D = np.sqrt(np.maximum(((X[:, None] - X[None]) ** 2).sum(-1), 0))
    v = np.sort(D[np.triu_indices(31, 1)])
    assert cka.median_sigma(X) == pytest.approx(v[(v.size - 1) // 2], rel=1e-10)


# ---- properties ----------------------------------------------------------------------------------

def test_invariances():
    X, Y = _pair(n=80, dx=10)
    rng = np.random.default_rng(2)
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    base = cka.linear_cka(X, Y)
    assert cka.linear_cka(3.0 * X @ Q + 5.0, Y) == pytest.approx(base, abs=1e-10)
    assert cka.linear_cka(X, X) == pytest.approx(1.0)
    assert cka.rbf_cka(X, X) == pytest.approx(1.0)
    assert 0 < base < 1


def test_large_n_uses_feature_space_and_agrees():
    X, Y = _pair(n=5000, dx=16, dy=8, seed=4)
    sub = slice(0, 1500)
    assert cka.linear_cka(X[sub], Y[sub], feature_space=True) == pytest.approx(
        cka.linear_cka(X[sub], Y[sub], feature_space=False), abs=1e-10)
    assert 0 < cka.linear_cka(X, Y) < 1  # n >= FEATURE_SPACE_MIN_N: no n x n matrix


def test_minibatch_is_statistically_consistent_with_full_unbiased():
    X, Y = _pair(n=1200, dx=16, dy=8, seed=6, noise=1.0)
    full = cka.linear_cka(X, Y, unbiased=True)
    ests = np.array([cka.minibatch_cka(X, Y, batch_size=150, seed=s) for s in range(12)])
    se = ests.std(ddof=1) / np.sqrt(len(ests))
    # the minibatch estimator targets the same population CKA: the full-data unbiased value lies
    # within a few standard errors of the mean of independent minibatch estimates
    assert abs(ests.mean() - full) < 4 * se + 0.01
    # and more epochs means less spread
    more = np.array([cka.minibatch_cka(X, Y, batch_size=150, epochs=4, seed=s) for s in range(6)])
    assert more.std() < ests.std()
    rb_full = cka.rbf_cka(X[:800], Y[:800], unbiased=True)
    rb = cka.minibatch_cka(X[:800], Y[:800], kernel="rbf", batch_size=200, epochs=3, seed=0)
    assert abs(rb - rb_full) < 0.05


def test_minibatch_works_on_memmap(tmp_path):
    X, Y = _pair(n=600, seed=7)
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mx[:] = X
    my = np.lib.format.open_memmap(tmp_path / "y.npy", mode="w+", dtype=np.float32, shape=Y.shape)
    my[:] = Y
    seen = []
    v = cka.minibatch_cka(mx, my, batch_size=128, progress=seen.append)
    assert 0 < v < 1 and seen[-1] == pytest.approx(1.0)
    assert cka.feature_linear_cka(mx, my, chunk=100) == pytest.approx(cka.linear_cka(X, Y), abs=1e-5)


def test_shuffle_curve_decreases():
    X, Y = _pair(n=400, noise=0.3)
    curve = cka.shuffle_curve(X, Y, kernel="linear", seed=0, repeats=2)
    vals = [c["cka"] for c in curve]
    assert vals[0] == pytest.approx(cka.linear_cka(X, Y))
    assert all(a > b for a, b in zip(vals, vals[1:]))
    rbf = cka.shuffle_curve(X, Y, fractions=[0.0, 1.0], kernel="rbf")
    assert rbf[0]["cka"] == pytest.approx(cka.rbf_cka(X, Y)) and rbf[1]["cka"] < 0.2


@pytest.mark.parametrize("call", [
    lambda: cka.linear_cka(np.ones((5, 3)), np.ones((6, 3))),
    lambda: cka.linear_cka(np.array([[np.nan, 1.0], [1, 2], [3, 4]]), np.ones((3, 2))),
    lambda: cka.linear_cka(np.ones((3, 2)), np.ones((3, 2)), unbiased=True),
    lambda: cka.rbf_cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2))),
    lambda: cka.rbf_cka(np.random.default_rng(0).normal(size=(5, 2)), np.ones((5, 2)), sigma=-1.0),
    lambda: cka.minibatch_cka(np.ones((10, 2)), np.ones((10, 2)), batch_size=2),
    lambda: cka.shuffle_curve(np.eye(6), np.eye(6), fractions=[1.5]),
    lambda: cka.linear_cka(np.zeros((0, 3)), np.zeros((0, 3))),
])
def test_bad_input_raises_valueerror(call):
    with pytest.raises(ValueError):
        call()
