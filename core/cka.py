"""Centered kernel alignment (CKA) between two representations of the same items.

Arrays in, numbers out. Rows of ``X [n, dx]`` and ``Y [n, dy]`` are paired (row i of X and row i of
Y describe the same item, e.g. an image and its caption). Notation follows eq. 2.1-2.2 of
``shared/papers/cka-vision-language.md``:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),   HSIC(K, L) = tr(K C L C) / (n-1)^2

with ``C = I - 11^T/n``. We never form ``C`` or the products ``C K C``: centring a Gram matrix is
done by subtracting its row and column means (O(n^2) instead of O(n^3)), and for the linear kernel
the whole computation can be done in feature space in O(n d^2) without an ``n x n`` matrix.

Estimators
----------
* biased HSIC: ``tr(K C L C) / (n-1)^2`` (the paper's eq. 2.2),
* unbiased HSIC (Song et al. 2012): zero the diagonals of K and L, then
  ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``,
* minibatch: the unbiased HSIC averaged over random disjoint minibatches (Nguyen et al. 2021),
  for ``n`` beyond memory (works on ``np.memmap`` inputs, touching one batch at a time).

Public functions
----------------
``linear_cka``, ``rbf_cka``, ``kernel_cka`` (precomputed Gram matrices), ``feature_linear_cka``,
``minibatch_cka``, ``median_sigma``, ``rbf_kernel``, ``center_gram``, ``hsic``,
``shuffle_curve`` (the paper's Table 3.1: CKA vs fraction of shuffled pairs).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from core.arrays import as_2d, check_same_rows

__all__ = [
    "center_gram",
    "hsic",
    "kernel_cka",
    "linear_kernel",
    "rbf_kernel",
    "median_sigma",
    "lower_median",
    "linear_cka",
    "feature_linear_cka",
    "rbf_cka",
    "minibatch_cka",
    "shuffle_curve",
]

# Above this many rows linear_cka switches to the feature-space form (no n x n matrix).
FEATURE_SPACE_MIN_N = 4096


# --------------------------------------------------------------------------------------------------
# validation helpers


def _check_pair(X, Y, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Paired feature matrices (a 1-D array is one feature of n items), finite, at least ``min_n`` rows."""
    X = as_2d("X", X, dtype=None, vector="column")
    Y = as_2d("Y", Y, dtype=None, vector="column")
    check_same_rows(("X", "Y"), X, Y)
    if X.shape[0] < min_n:
        raise ValueError(f"this estimator needs at least {min_n} paired rows; got {X.shape[0]}.")
    return X, Y


def _check_gram(name: str, K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{name} must be a square Gram matrix [n, n]; got shape {K.shape}.")
    return K


# --------------------------------------------------------------------------------------------------
# kernels and centring


def linear_kernel(X) -> np.ndarray:
    """Linear Gram matrix ``X X^T`` [n, n] (float64)."""
    X = np.asarray(X, dtype=np.float64)
    return X @ X.T


def squared_distances(X) -> np.ndarray:
    """Pairwise squared Euclidean distances [n, n] from the Gram matrix, clipped at 0, exact-zero diagonal."""
    X = np.asarray(X, dtype=np.float64)
    G = X @ X.T
    sq = np.diag(G).copy()
    D = sq[:, None] + sq[None, :] - 2.0 * G
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def lower_median(values: np.ndarray) -> float:
    """The lower median (element ``(m-1)//2`` of the sorted values), as ``torch.median`` returns.

    >>> lower_median(np.array([4.0, 1.0, 3.0, 2.0]))
    2.0
    """
    m = values.size
    if m == 0:
        raise ValueError("cannot take the median of no distances (all points coincide?).")
    k = (m - 1) // 2
    return float(np.partition(values, k)[k])


def median_sigma(X=None, *, sq_dists: np.ndarray | None = None) -> float:
    """RBF bandwidth: the median pairwise Euclidean distance between distinct rows of ``X [n, d]``.

    Zero distances (the diagonal, duplicate rows) are left out and the *lower* median is taken,
    exactly as the reference implementation does (``sqrt(median(D[D != 0]))`` with torch's median).
    Pass ``sq_dists`` to reuse a squared-distance matrix already computed.
    """
    if sq_dists is None:
        X = as_2d("X", X, dtype=None, vector="column")
        sq_dists = squared_distances(X)
    n = sq_dists.shape[0]
    iu = np.triu_indices(n, k=1)
    vals = sq_dists[iu]
    vals = vals[vals != 0]
    if vals.size == 0:
        raise ValueError("cannot choose an RBF bandwidth: all rows are identical. Pass sigma explicitly.")
    return float(np.sqrt(lower_median(vals)))


def rbf_kernel(X, sigma: float | None = None, *, sq_dists: np.ndarray | None = None) -> np.ndarray:
    """Gaussian kernel ``exp(-||x_i - x_j||^2 / (2 sigma^2))`` [n, n]; ``sigma=None`` -> :func:`median_sigma`."""
    D = squared_distances(X) if sq_dists is None else sq_dists
    if sigma is None:
        sigma = median_sigma(sq_dists=D)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number; got {sigma}.")
    K = D * (-0.5 / (sigma * sigma))
    np.exp(K, out=K)
    return K


def center_gram(K, *, copy: bool = True) -> np.ndarray:
    """``C K C`` computed as ``K - row means - column means + grand mean`` (no n x n x n products)."""
    K = np.array(K, dtype=np.float64, copy=copy)
    col = K.mean(axis=0)
    row = K.mean(axis=1)
    grand = row.mean()
    K -= col[None, :]
    K -= row[:, None]
    K += grand
    return K


# --------------------------------------------------------------------------------------------------
# HSIC estimators on Gram matrices


def _hsic_biased_centered(Kc: np.ndarray, L: np.ndarray) -> float:
    # tr(CKC L) = sum(CKC o L) for symmetric matrices; L need not be centred since CKC already is.
    n = Kc.shape[0]
    return float(np.vdot(Kc, L)) / (n - 1) ** 2


def _unbiased_parts(K: np.ndarray):
    Kt = np.array(K, dtype=np.float64, copy=True)
    np.fill_diagonal(Kt, 0.0)
    r = Kt.sum(axis=1)
    return Kt, r, float(r.sum())


def _hsic_unbiased_parts(Kt, rk, sk, Lt, rl, sl) -> float:
    n = Kt.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 rows; got {n}.")
    tr = float(np.vdot(Kt, Lt))
    return (tr + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(rk @ rl)) / (n * (n - 3))


def _check_gram_pair(K, L) -> tuple[np.ndarray, np.ndarray]:
    K = _check_gram("K", K)
    L = _check_gram("L", L)
    if K.shape != L.shape:
        raise ValueError(f"K and L must have the same shape; got {K.shape} and {L.shape}.")
    return K, L


def hsic(K, L, *, unbiased: bool = False) -> float:
    """HSIC between two Gram matrices [n, n]: biased (eq. 2.2) or unbiased (Song et al. 2012)."""
    K, L = _check_gram_pair(K, L)
    if unbiased:
        return _hsic_unbiased_parts(*_unbiased_parts(K), *_unbiased_parts(L))
    return _hsic_biased_centered(center_gram(K), L)


def _ratio(kl: float, kk: float, ll: float) -> float:
    den = kk * ll
    if not den > 0:
        raise ValueError(
            "CKA is undefined: one representation has zero (or, for the unbiased estimator, negative) "
            "self-similarity, e.g. all rows identical."
        )
    return float(kl / np.sqrt(den))


def kernel_cka(K, L, *, unbiased: bool = False) -> float:
    """CKA between two precomputed Gram matrices [n, n] (eq. 2.1), biased or unbiased HSIC."""
    K, L = _check_gram_pair(K, L)
    if unbiased:
        pk = _unbiased_parts(K)
        pl = _unbiased_parts(L)
        return _ratio(_hsic_unbiased_parts(*pk, *pl), _hsic_unbiased_parts(*pk, *pk), _hsic_unbiased_parts(*pl, *pl))
    Kc = center_gram(K)
    Lc = center_gram(L)
    return _ratio(float(np.vdot(Kc, Lc)), float(np.vdot(Kc, Kc)), float(np.vdot(Lc, Lc)))


# --------------------------------------------------------------------------------------------------
# linear CKA


def feature_linear_cka(X, Y, *, unbiased: bool = False, chunk: int = 65536) -> float:
    """Linear CKA in feature space: O(n (dx + dy)^2) time, O((dx + dy)^2) memory, no n x n matrix.

    Biased: ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``.
    Unbiased: the same Song et al. estimator as :func:`hsic` rewritten in terms of ``X^T Y``,
    row norms and column sums. Rows are streamed in chunks, so ``np.memmap`` inputs work.
    """
    X, Y = _check_pair(X, Y, min_n=4 if unbiased else 2)
    n = X.shape[0]
    dx, dy = X.shape[1], Y.shape[1]
    # Accumulate uncentred moments in float64.
    XtX = np.zeros((dx, dx))
    YtY = np.zeros((dy, dy))
    XtY = np.zeros((dx, dy))
    sx = np.zeros(dx)
    sy = np.zeros(dy)
    nx_list, ny_list = [], []
    for start in range(0, n, chunk):
        xb = np.asarray(X[start:start + chunk], dtype=np.float64)
        yb = np.asarray(Y[start:start + chunk], dtype=np.float64)
        XtX += xb.T @ xb
        YtY += yb.T @ yb
        XtY += xb.T @ yb
        sx += xb.sum(axis=0)
        sy += yb.sum(axis=0)
        if unbiased:
            nx_list.append(np.einsum("ij,ij->i", xb, xb))
            ny_list.append(np.einsum("ij,ij->i", yb, yb))
    if not unbiased:
        mx, my = sx / n, sy / n
        Cxy = XtY - n * np.outer(mx, my)
        Cxx = XtX - n * np.outer(mx, mx)
        Cyy = YtY - n * np.outer(my, my)
        return _ratio(float(np.vdot(Cxy, Cxy)), float(np.vdot(Cxx, Cxx)), float(np.vdot(Cyy, Cyy)))

    # Unbiased: K~ = XX^T - diag(|x_i|^2). Needed per pair (K, L):
    #   tr(K~L~) = ||X^T Y||^2 - sum_i |x_i|^2 |y_i|^2
    #   1'K~1    = |sum x|^2 - sum_i |x_i|^2
    #   1'K~L~1  = (K~1).(L~1) with K~1 = X (X^T 1) - |x|^2   (needs a second pass over rows)
    nx = np.concatenate(nx_list)
    ny = np.concatenate(ny_list)
    kx_dot_ky = 0.0
    kx_dot_kx = 0.0
    ky_dot_ky = 0.0
    for start in range(0, n, chunk):
        xb = np.asarray(X[start:start + chunk], dtype=np.float64)
        yb = np.asarray(Y[start:start + chunk], dtype=np.float64)
        rk = xb @ sx - nx[start:start + chunk]
        rl = yb @ sy - ny[start:start + chunk]
        kx_dot_ky += float(rk @ rl)
        kx_dot_kx += float(rk @ rk)
        ky_dot_ky += float(rl @ rl)
    sk = float(sx @ sx - nx.sum())
    sl = float(sy @ sy - ny.sum())

    def h(tr, s1, s2, r12):
        return (tr + s1 * s2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * r12) / (n * (n - 3))

    kl = h(float(np.vdot(XtY, XtY)) - float(nx @ ny), sk, sl, kx_dot_ky)
    kk = h(float(np.vdot(XtX, XtX)) - float(nx @ nx), sk, sk, kx_dot_kx)
    ll = h(float(np.vdot(YtY, YtY)) - float(ny @ ny), sl, sl, ky_dot_ky)
    return _ratio(kl, kk, ll)


def linear_cka(X, Y, *, unbiased: bool = False, feature_space: bool | None = None) -> float:
    """Linear-kernel CKA of paired rows ``X [n, dx]``, ``Y [n, dy]``.

    ``feature_space=None`` picks the O(n d^2) feature-space form when ``n`` is large
    (>= ``FEATURE_SPACE_MIN_N``) or larger than the dimensions; both forms give the same number.

    CKA is invariant to rotations and isotropic scaling, but not to shuffling the pairs:

    >>> X = np.random.default_rng(0).normal(size=(200, 8))
    >>> rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))
    >>> round(linear_cka(X, 3.0 * X @ rotation), 6), linear_cka(X, X[::-1]) < 0.2
    (1.0, True)
    """
    X, Y = _check_pair(X, Y, min_n=4 if unbiased else 2)
    n = X.shape[0]
    if feature_space is None:
        feature_space = n >= FEATURE_SPACE_MIN_N or n > X.shape[1] + Y.shape[1]
    if feature_space:
        return feature_linear_cka(X, Y, unbiased=unbiased)
    return kernel_cka(linear_kernel(X), linear_kernel(Y), unbiased=unbiased)


# --------------------------------------------------------------------------------------------------
# RBF CKA


def rbf_cka(
    X,
    Y,
    sigma: float | None = None,
    *,
    sigma_y: float | None = None,
    unbiased: bool = False,
) -> float:
    """RBF-kernel CKA of paired rows ``X [n, dx]``, ``Y [n, dy]``.

    ``sigma`` is the bandwidth for X and, unless ``sigma_y`` is given, for Y too; ``None`` (default)
    means the median pairwise distance of each representation separately (the reference's choice).
    Centring subtracts row/column means; memory is a few ``n x n`` float64 matrices
    (n = 10,000 -> about 2.4 GB peak).
    """
    X, Y = _check_pair(X, Y, min_n=4 if unbiased else 2)
    if sigma_y is None:
        sigma_y = sigma
    K = rbf_kernel(X, sigma)
    if unbiased:
        pk = _unbiased_parts(K)
        del K
        L = rbf_kernel(Y, sigma_y)
        pl = _unbiased_parts(L)
        del L
        return _ratio(
            _hsic_unbiased_parts(*pk, *pl), _hsic_unbiased_parts(*pk, *pk), _hsic_unbiased_parts(*pl, *pl)
        )
    Kc = center_gram(K, copy=False)
    L = rbf_kernel(Y, sigma_y)
    Lc = center_gram(L, copy=False)
    return _ratio(float(np.vdot(Kc, Lc)), float(np.vdot(Kc, Kc)), float(np.vdot(Lc, Lc)))


# --------------------------------------------------------------------------------------------------
# minibatch estimator


def minibatch_cka(
    X,
    Y,
    *,
    kernel: str = "linear",
    batch_size: int = 1024,
    epochs: int = 1,
    sigma: float | None = None,
    sigma_y: float | None = None,
    sigma_sample: int = 2048,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> float:
    """Minibatch CKA for ``n`` beyond memory: the unbiased HSIC averaged over random minibatches.

    Each epoch draws a random permutation of the rows and splits it into disjoint batches of
    ``batch_size`` (a final batch smaller than 4 rows is dropped); for every batch the unbiased
    HSIC(K, L), HSIC(K, K), HSIC(L, L) are computed and averaged, and CKA is the ratio of the averages
    (Nguyen, Raghu & Kornblith 2021). Each average is an unbiased estimate of the population HSIC, so
    the estimate converges to the population CKA; its expectation does not depend on the batch size.

    ``kernel`` is ``"linear"`` or ``"rbf"``; for RBF with ``sigma=None`` the bandwidth is the median
    distance on a random sample of ``sigma_sample`` rows (fixed for all batches). Rows are read one
    batch at a time, so ``np.memmap`` inputs of any size work.
    """
    X = as_2d("X", X, dtype=None, vector="column", check_finite=False)  # memmaps are read by batch
    Y = as_2d("Y", Y, dtype=None, vector="column", check_finite=False)
    check_same_rows(("X", "Y"), X, Y)
    n = X.shape[0]
    if batch_size < 4:
        raise ValueError(f"batch_size must be at least 4 for the unbiased estimator; got {batch_size}.")
    if n < 4:
        raise ValueError(f"minibatch CKA needs at least 4 rows; got {n}.")
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf'; got {kernel!r}.")
    rng = np.random.default_rng(seed)
    if kernel == "rbf":
        if sigma is None or sigma_y is None:
            idx = np.sort(rng.choice(n, size=min(n, sigma_sample), replace=False))
            if sigma is None:
                sigma = median_sigma(np.asarray(X[idx], dtype=np.float64))
            if sigma_y is None:
                sigma_y = median_sigma(np.asarray(Y[idx], dtype=np.float64))

    def gram(A, s):
        A = np.asarray(A, dtype=np.float64)
        return linear_kernel(A) if kernel == "linear" else rbf_kernel(A, s)

    kl = kk = ll = 0.0
    count = 0
    total = epochs * max(1, n // batch_size + (1 if n % batch_size >= 4 else 0))
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = np.sort(perm[start:start + batch_size])
            if idx.size < 4:
                continue
            pk = _unbiased_parts(gram(X[idx], sigma))
            pl = _unbiased_parts(gram(Y[idx], sigma_y if sigma_y is not None else sigma))
            kl += _hsic_unbiased_parts(*pk, *pl)
            kk += _hsic_unbiased_parts(*pk, *pk)
            ll += _hsic_unbiased_parts(*pl, *pl)
            count += 1
            if progress is not None:
                progress(min(1.0, count / total))
    return _ratio(kl / count, kk / count, ll / count)


# --------------------------------------------------------------------------------------------------
# CKA vs shuffling (the paper's Table 3.1)


def shuffle_curve(
    X,
    Y,
    fractions: Sequence[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    *,
    kernel: str = "linear",
    seed: int = 0,
    repeats: int = 1,
    sigma: float | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[dict]:
    """CKA after shuffling a fraction of the pairs: ``[{"fraction", "cka", "cka_std"}, ...]``.

    For each fraction f, ``round(f n)`` rows of Y are chosen at random and permuted among themselves
    (a random derangement-free permutation; some may land back in place, as in the paper), the rest
    stay paired. ``kernel`` is ``"linear"`` or ``"rbf"``; RBF bandwidths are fixed from the unshuffled
    data (they do not depend on the order anyway). Averaged over ``repeats`` seeds.
    """
    X, Y = _check_pair(X, Y, min_n=4)
    n = X.shape[0]
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf'; got {kernel!r}.")
    if kernel == "rbf":
        Kc = center_gram(rbf_kernel(X, sigma), copy=False)
        Lraw = rbf_kernel(Y, sigma)
    else:
        Kc = center_gram(linear_kernel(X), copy=False)
        Lraw = linear_kernel(Y)
    Lc = center_gram(Lraw, copy=False)
    kk = float(np.vdot(Kc, Kc))
    ll = float(np.vdot(Lc, Lc))  # invariant under permutation
    rng = np.random.default_rng(seed)
    out = []
    fr = [float(f) for f in fractions]
    for t, f in enumerate(fr):
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"fractions must lie in [0, 1]; got {f}.")
        vals = []
        for _ in range(repeats):
            m = int(round(f * n))
            perm = np.arange(n)
            if m > 1:
                chosen = rng.choice(n, size=m, replace=False)
                perm[chosen] = chosen[rng.permutation(m)]
            Lp = Lc[np.ix_(perm, perm)]  # centring commutes with a joint permutation
            vals.append(float(np.vdot(Kc, Lp)) / np.sqrt(kk * ll))
        out.append({"fraction": f, "cka": float(np.mean(vals)), "cka_std": float(np.std(vals))})
        if progress is not None:
            progress((t + 1) / len(fr))
    return out
