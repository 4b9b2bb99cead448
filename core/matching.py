"""Matching and retrieval of unpaired images and captions from a small base set of true pairs.

After ``shared/papers/cka-vision-language.md`` (sections 3.1-3.3). Arrays in, arrays out; no
Streamlit. Conventions: ``src`` and ``tgt`` are the two modalities (the benchmark uses captions as
``src`` and images as ``tgt``: caption -> image retrieval, as the reference's default);
``*_base [M, d]`` rows are true pairs (row i of ``src_base`` goes with row i of ``tgt_base``);
``*_query [N, d]`` are the unpaired items to match. Score matrices are ``S [N_src, N_tgt]``,
higher = better match; ground truth in evaluation is the diagonal.

Methods
-------
* :func:`qap_match` - seeded graph matching: maximise ``tr((I+P)^T Kz (I+P) Kh)`` over permutations
  of the queries (eq. 3.3) with ``scipy.optimize.quadratic_assignment(method="faq")``, the base pairs
  as ``partial_match`` seeds, best of several restarts (barycenter start, then random starts).
* :class:`LocalCKA` - local CKA (eq. 3.4) for every query x target pair. The base-only parts are
  precomputed once and the CKA of ``[base; query_i]`` vs ``[base; target_j]`` is assembled from
  low-rank pieces, so scoring all N x N pairs costs a couple of GEMMs instead of N^2 full CKA
  calls. Exact for the linear kernel and fixed bandwidths; with the reference's per-call median
  bandwidth it interpolates the base-block sums in the bandwidth (Chebyshev, machine precision).
* baselines: :func:`linear_map_scores` (least squares, no intercept) and :func:`relative_scores`
  (relative representations: cosine to the base set, then cosine between the profiles).
* :func:`assign` - one-to-one matching from any score matrix by ``linear_sum_assignment``.
* :func:`stretch` (per-dimension standardisation) and :func:`kmeans_base` (nearest sample to each
  k-means centroid).
* metrics: :func:`matching_accuracy`, :func:`retrieval_at_k`.
* :func:`suspicious_pair_scores` - label-free per-pair score (higher = more suspicious) for curation;
  :func:`suspicion_rank` - its rank (1 = most suspicious), shown beside the raw score.
* :func:`evaluate` - the benchmark protocol (base by k-means, random queries, seeds).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment, quadratic_assignment

from core import cka as _cka
from core.arrays import as_float64_2d as _f64
from core.arrays import l2_normalize as _rownorm
from core.embedded import first_pair_per_image

__all__ = [
    "stretch",
    "kmeans_base",
    "centered_scaled_kernel",
    "qap_match",
    "LocalCKA",
    "local_cka_scores",
    "linear_map_scores",
    "relative_scores",
    "assign",
    "matching_accuracy",
    "retrieval_at_k",
    "evaluate",
    "suspicious_pair_scores",
    "suspicion_rank",
    "SUSPICIOUS_METHODS",
    "METHODS",
]

METHODS = ("qap", "local_cka", "linear", "relative")

Progress = Callable[[float], None] | None


def _check_sets(src_base, tgt_base, src_query, tgt_query):
    sb, tb = _f64("src_base", src_base), _f64("tgt_base", tgt_base)
    sq, tq = _f64("src_query", src_query), _f64("tgt_query", tgt_query)
    if sb.shape[0] != tb.shape[0]:
        raise ValueError(f"the base sets must be paired row by row; got {sb.shape[0]} and {tb.shape[0]} rows.")
    if sb.shape[0] < 3:
        raise ValueError(f"the base set needs at least 3 true pairs; got {sb.shape[0]}.")
    if sb.shape[1] != sq.shape[1] or tb.shape[1] != tq.shape[1]:
        raise ValueError(
            "query and base embeddings must come from the same encoders: dimensions "
            f"{sb.shape[1]}/{sq.shape[1]} (src) and {tb.shape[1]}/{tq.shape[1]} (tgt) differ."
        )
    if sq.shape[0] == 0 or tq.shape[0] == 0:
        raise ValueError("there are no queries to match.")
    return sb, tb, sq, tq


# --------------------------------------------------------------------------------------------------
# preprocessing


def stretch(X, *, ref=None) -> np.ndarray:
    """Per-dimension standardisation (the paper's stretching matrix S = diag(1/std)): ``X [n, d]``.

    Each column is divided by its standard deviation (ddof=1) over ``ref`` (default: ``X`` itself;
    the protocol stretches base and queries together). Constant columns are left unscaled.
    """
    X = _f64("X", X)
    R = X if ref is None else _f64("ref", ref)
    sd = R.std(axis=0, ddof=1) if R.shape[0] > 1 else np.ones(R.shape[1])
    sd = np.where(sd > 0, sd, 1.0)
    return X / sd


def kmeans_base(X, m: int, *, seed: int = 0, n_init: int = 1, max_iter: int = 100) -> np.ndarray:
    """Indices [m] of a diverse base set: k-means on ``X [n, d]``, then the sample nearest (cosine)
    to each centroid. Where two centroids pick the same sample, the next-nearest unused one is
    taken, so exactly ``m`` distinct indices come back (sorted by cluster)."""
    from sklearn.cluster import KMeans

    X = _f64("X", X)
    n = X.shape[0]
    if not 1 <= m <= n:
        raise ValueError(f"cannot pick {m} base samples from {n} items.")
    km = KMeans(n_clusters=m, random_state=seed, n_init=n_init, max_iter=max_iter).fit(X.astype(np.float32))
    C = km.cluster_centers_
    Xn, Cn = _rownorm(X), _rownorm(C)
    sims = Cn @ Xn.T  # [m, n]
    order = np.argsort(-sims, axis=1)
    chosen: list[int] = []
    used = np.zeros(n, dtype=bool)
    for c in range(m):
        for idx in order[c]:
            if not used[idx]:
                used[idx] = True
                chosen.append(int(idx))
                break
    return np.asarray(chosen, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# global CKA kernels and QAP


def centered_scaled_kernel(X, *, kernel: str = "rbf", sigma: float | None = None) -> np.ndarray:
    """``K_bar = C K C / sqrt(HSIC(K, K))`` [n, n] (section 3.1), centred by row/column means."""
    X = _f64("X", X)
    if kernel == "rbf":
        K = _cka.rbf_kernel(X, sigma)
    elif kernel == "linear":
        K = _cka.linear_kernel(X)
    else:
        raise ValueError(f"kernel must be 'rbf' or 'linear'; got {kernel!r}.")
    Kc = _cka.center_gram(K, copy=False)
    norm = np.sqrt(float(np.vdot(Kc, Kc)))
    if norm == 0:
        raise ValueError("all rows are identical: the kernel carries no structure to match.")
    return Kc / norm


def qap_match(
    src_base,
    tgt_base,
    src_query,
    tgt_query,
    *,
    kernel: str = "rbf",
    restarts: int = 3,
    seed: int = 0,
    tol: float = 1e-5,
    maxiter: int = 30,
    progress: Progress = None,
) -> np.ndarray:
    """Seeded QAP matching (eq. 3.3): ``perm [N]`` with ``perm[i]`` the target query for source query i.

    Builds the centred, scaled kernels of ``[base; queries]`` on each side, seeds the first M nodes
    to each other (``partial_match``) and runs FAQ ``restarts`` times (the first from the barycenter,
    the others from random doubly-stochastic starts); keeps the run with the highest objective.
    Needs as many source as target queries.
    """
    sb, tb, sq, tq = _check_sets(src_base, tgt_base, src_query, tgt_query)
    if sq.shape[0] != tq.shape[0]:
        raise ValueError(f"QAP matching needs equally many source and target queries; got {sq.shape[0]} and {tq.shape[0]}.")
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1; got {restarts}.")
    m = sb.shape[0]
    A = centered_scaled_kernel(np.vstack([sb, sq]), kernel=kernel)
    B = centered_scaled_kernel(np.vstack([tb, tq]), kernel=kernel)
    seeds = np.stack([np.arange(m), np.arange(m)], axis=1)
    rng = np.random.default_rng(seed)
    best = None
    for r in range(restarts):
        options = {
            "maximize": True,
            "partial_match": seeds,
            "P0": "barycenter" if r == 0 else "randomized",
            "rng": rng,
            "tol": tol,
            "maxiter": maxiter,
        }
        res = quadratic_assignment(A, B, method="faq", options=options)
        if best is None or res.fun > best.fun:
            best = res
        if progress is not None:
            progress((r + 1) / restarts)
    return np.asarray(best.col_ind[m:] - m, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# local CKA


def _sq_dists_to(Q: np.ndarray, B: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    q_sq = np.einsum("ij,ij->i", Q, Q)
    D = q_sq[:, None] + b_sq[None, :] - 2.0 * (Q @ B.T)
    np.maximum(D, 0.0, out=D)
    return D


def _union_lower_median(S: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Lower median of the multiset ``S`` (sorted, shared) united with each row of ``V [N, t]``.

    Zeros in V are dropped (as the reference's ``D[D != 0]``). Returns [N] medians.
    """
    out = np.empty(V.shape[0])
    s = S.size
    for i in range(V.shape[0]):
        v = V[i]
        v = np.sort(v[v != 0])
        t = v.size
        m = s + t
        k = (m - 1) // 2
        lo, hi = max(0, k - t), min(s - 1, k)
        cand = np.concatenate([S[lo:hi + 1], v]) if s else v
        f = np.searchsorted(S, cand, side="right") + np.searchsorted(v, cand, side="right")
        out[i] = cand[f >= k + 1].min()
    return out


class _Side:
    """One modality of a local-CKA problem: the base block and, per query, what augments it.

    For query i the augmented Gram matrix is ``[[A(g_i), k_i], [k_i^T, kappa_i]]`` where ``A(g)`` is
    the base kernel at inverse bandwidth ``g`` (constant for the linear kernel). Functions of ``g``
    that touch the M x M block are evaluated at a few nodes and interpolated (barycentric Lagrange
    on Chebyshev nodes); when the queries use at most ``n_nodes`` distinct bandwidths the nodes are
    those bandwidths and everything is exact.
    """

    def __init__(self, base: np.ndarray, kernel: str, sigma, n_nodes: int):
        self.base = base
        self.kernel = kernel
        self.sigma = sigma
        self.n_nodes = n_nodes
        self.M = base.shape[0]
        if kernel == "rbf":
            self.D = _cka.squared_distances(base)
            self.b_sq = np.einsum("ij,ij->i", base, base)
            iu = np.triu_indices(self.M, k=1)
            self.D_upper = self.D[iu]
            nz = self.D_upper[self.D_upper != 0]
            self.S_sorted = np.sort(nz)
            if sigma == "base":
                self.fixed_sigma = float(np.sqrt(_cka.lower_median(nz)))
            elif sigma is None or sigma == "auto":
                self.fixed_sigma = None
            else:
                self.fixed_sigma = float(sigma)
                if not self.fixed_sigma > 0:
                    raise ValueError(f"sigma must be positive; got {sigma}.")
        elif kernel == "linear":
            self.A = base @ base.T
        else:
            raise ValueError(f"kernel must be 'rbf' or 'linear'; got {kernel!r}.")

    def prepare(self, Q: np.ndarray):
        """Per-query pieces for queries ``Q [N, d]``: returns a dict of arrays."""
        N, M = Q.shape[0], self.M
        if self.kernel == "linear":
            kq = Q @ self.base.T  # [N, M]
            kappa = np.einsum("ij,ij->i", Q, Q)
            a_row = self.A.sum(axis=1)  # [M]
            W = np.ones((N, 1))
            node_rowsum = a_row[None, :]  # [1, M]
            node_sq = np.array([float(np.vdot(self.A, self.A))])
            return dict(k=kq, kappa=kappa, W=W, rowsum=node_rowsum, sq=node_sq, linear=True)
        Dq = _sq_dists_to(Q, self.base, self.b_sq)  # [N, M]
        if self.fixed_sigma is not None:
            sig = np.full(N, self.fixed_sigma)
        else:
            sig = np.sqrt(_union_lower_median(self.S_sorted, Dq))
            if not np.all(sig > 0):
                raise ValueError("cannot choose an RBF bandwidth: a query and the base set all coincide.")
        g = 0.5 / sig**2  # inverse bandwidths [N]
        kq = np.exp(-g[:, None] * Dq)
        kappa = np.ones(N)
        uniq = np.unique(g)
        if uniq.size <= self.n_nodes:
            nodes = uniq
            W = (g[:, None] == nodes[None, :]).astype(np.float64)
        else:
            lo, hi = float(g.min()), float(g.max())
            P = self.n_nodes
            j = np.arange(P)
            t = np.cos((2 * j + 1) * np.pi / (2 * P))  # Chebyshev points of the first kind
            nodes = 0.5 * (lo + hi) + 0.5 * (hi - lo) * t
            bw = (-1.0) ** j * np.sin((2 * j + 1) * np.pi / (2 * P))  # barycentric weights
            diff = g[:, None] - nodes[None, :]
            exact = diff == 0
            diff[exact] = 1.0
            Wr = bw[None, :] / diff
            W = Wr / Wr.sum(axis=1, keepdims=True)
            rows = exact.any(axis=1)
            W[rows] = exact[rows].astype(np.float64)
        # node quantities: row sums of A(node) [P, M], sum of A(node)^2 via sum at 2*node, upper vectors
        E_upper = np.exp(-nodes[:, None] * self.D_upper[None, :])  # [P, M(M-1)/2]
        rowsum = np.empty((nodes.size, M))
        iu = np.triu_indices(M, k=1)
        for p in range(nodes.size):
            Ap = np.zeros((M, M))
            Ap[iu] = E_upper[p]
            rowsum[p] = Ap.sum(axis=0) + Ap.sum(axis=1) + 1.0
        sq = 2.0 * np.einsum("ij,ij->i", E_upper, E_upper) + M  # sum of A(node)^2 (diag = 1)
        return dict(k=kq, kappa=kappa, W=W, rowsum=rowsum, sq=sq, upper=E_upper, linear=False)


class LocalCKA:
    """Local CKA (eq. 3.4) scores for all (source query, target query) pairs, computed efficiently.

    ``localCKA(x, y) = CKA(K[[base_src; x]], L[[base_tgt; y]])`` with the biased estimator. Usage::

        lc = LocalCKA(src_base, tgt_base, kernel="rbf")       # precomputes the base blocks
        S = lc.score(src_query, tgt_query)                     # [N_src, N_tgt]

    ``sigma``: ``"auto"`` (default) recomputes the median-distance bandwidth for every augmented set
    exactly as the reference does (``sigma=None`` in its ``KernelCKA.calculate``); ``"base"`` fixes
    it at the base set's median distance; a number fixes it. Each side has its own bandwidth.

    For pair (i, j) with ``n = M + 1``, ``K = [[A_i, k_i], [k_i', kappa_i]]`` and likewise ``L``:
    ``tr(KCLC) = tr(KL) - 2/n (K1).(L1) + (1'K1)(1'L1)/n^2`` where ``tr(KL) = <A_i, C_j> + 2 k_i.l_j
    + kappa_i lambda_j`` and ``K1 = [A_i 1 + k_i; 1'k_i + kappa_i]``. Everything but ``<A_i, C_j>``
    factorises into per-query vectors (one [N, M] x [M, N] GEMM); ``<A_i, C_j>`` is ``W_i G V_j'`` with
    ``G`` the node-by-node inner products of the base blocks.
    """

    def __init__(self, src_base, tgt_base, *, kernel: str = "rbf", sigma="auto", n_nodes: int = 12):
        sb = _f64("src_base", src_base)
        tb = _f64("tgt_base", tgt_base)
        if sb.shape[0] != tb.shape[0]:
            raise ValueError(f"the base sets must be paired row by row; got {sb.shape[0]} and {tb.shape[0]} rows.")
        if sb.shape[0] < 3:
            raise ValueError(f"the base set needs at least 3 true pairs; got {sb.shape[0]}.")
        self.M = sb.shape[0]
        self.kernel = kernel
        self.src = _Side(sb, kernel, sigma, n_nodes)
        self.tgt = _Side(tb, kernel, sigma, n_nodes)

    def _self_terms(self, P):
        n = self.M + 1
        k, kappa, W = P["k"], P["kappa"], P["W"]
        a = W @ P["rowsum"]  # [N, M] row sums of A_i
        sumA = a.sum(axis=1)
        sumA2 = W @ P["sq"]  # [N] sum of A_i^2
        sk = k.sum(axis=1)
        K1_top = a + k  # [N, M]
        K1_last = sk + kappa
        tot = sumA + 2 * sk + kappa  # 1'K1
        fro = sumA2 + 2 * np.einsum("ij,ij->i", k, k) + kappa**2
        K1sq = np.einsum("ij,ij->i", K1_top, K1_top) + K1_last**2
        self_hsic = fro - 2.0 / n * K1sq + tot**2 / n**2
        return dict(a=a, K1_top=K1_top, K1_last=K1_last, tot=tot, self_hsic=self_hsic)

    def prepare_src(self, src_query) -> dict:
        """Per-query pieces of source queries [N, d_src] (reusable across :meth:`score_prepared` calls)."""
        return self._prepare(self.src, "source", "src_query", src_query)

    def prepare_tgt(self, tgt_query) -> dict:
        """Per-query pieces of target queries [N, d_tgt]."""
        return self._prepare(self.tgt, "target", "tgt_query", tgt_query)

    def _prepare(self, side: "_Side", which: str, arg_name: str, query) -> dict:
        q = _f64(arg_name, query)
        if q.shape[1] != side.base.shape[1]:
            raise ValueError(f"{which} query dimensions do not match the base set's encoder.")
        P = side.prepare(q)
        P["self"] = self._self_terms(P)
        return P

    def score(self, src_query, tgt_query) -> np.ndarray:
        """Local CKA [N_src, N_tgt] of every source query with every target query."""
        return self.score_prepared(self.prepare_src(src_query), self.prepare_tgt(tgt_query))

    def _base_inner(self, Ps: dict, Pt: dict) -> np.ndarray:
        """G with ``<A_i, C_j> = W_i G W_j'``: the base blocks' inner products at the nodes."""
        if Ps["linear"]:
            return np.array([[float(np.vdot(self.src.A, self.tgt.A))]])
        return 2.0 * (Ps["upper"] @ Pt["upper"].T) + self.M

    def score_prepared(self, Ps: dict, Pt: dict) -> np.ndarray:
        """Local CKA [N_src, N_tgt] from :meth:`prepare_src` / :meth:`prepare_tgt` results."""
        Ts, Tt = Ps["self"], Pt["self"]
        n = self.M + 1
        AC = Ps["W"] @ self._base_inner(Ps, Pt) @ Pt["W"].T  # <A_i, C_j> for every i, j
        trKL = AC + 2.0 * (Ps["k"] @ Pt["k"].T) + np.outer(Ps["kappa"], Pt["kappa"])
        K1L1 = Ts["K1_top"] @ Tt["K1_top"].T + np.outer(Ts["K1_last"], Tt["K1_last"])
        num = trKL - 2.0 / n * K1L1 + np.outer(Ts["tot"], Tt["tot"]) / n**2
        den = np.sqrt(np.outer(Ts["self_hsic"], Tt["self_hsic"]))
        return num / den

    def score_pairs_prepared(self, Ps: dict, Pt: dict) -> np.ndarray:
        """Local CKA of row-aligned pairs only: ``[N]`` with entry i = localCKA(src_i, tgt_i)."""
        Ts, Tt = Ps["self"], Pt["self"]
        n = self.M + 1
        def rowdot(A, B):
            return np.einsum("ij,ij->i", A, B)

        AC = rowdot(Ps["W"] @ self._base_inner(Ps, Pt), Pt["W"])
        trKL = AC + 2.0 * rowdot(Ps["k"], Pt["k"]) + Ps["kappa"] * Pt["kappa"]
        K1L1 = rowdot(Ts["K1_top"], Tt["K1_top"]) + Ts["K1_last"] * Tt["K1_last"]
        num = trKL - 2.0 / n * K1L1 + Ts["tot"] * Tt["tot"] / n**2
        return num / np.sqrt(Ts["self_hsic"] * Tt["self_hsic"])


def local_cka_scores(src_base, tgt_base, src_query, tgt_query, *, kernel: str = "rbf", sigma="auto") -> np.ndarray:
    """Local CKA scores [N_src, N_tgt] (see :class:`LocalCKA`)."""
    sb, tb, sq, tq = _check_sets(src_base, tgt_base, src_query, tgt_query)
    return LocalCKA(sb, tb, kernel=kernel, sigma=sigma).score(sq, tq)


# --------------------------------------------------------------------------------------------------
# baselines


def linear_map_scores(src_base, tgt_base, src_query, tgt_query) -> np.ndarray:
    """Least-squares linear map (no intercept) from src to tgt fitted on the base pairs; scores are
    cosine similarities between mapped source queries and target queries [N_src, N_tgt]."""
    sb, tb, sq, tq = _check_sets(src_base, tgt_base, src_query, tgt_query)
    W, *_ = np.linalg.lstsq(sb, tb, rcond=None)
    return _rownorm(sq @ W) @ _rownorm(tq).T


def relative_scores(src_base, tgt_base, src_query, tgt_query) -> np.ndarray:
    """Relative representations: each query becomes its cosine similarities to its side's base set;
    scores are cosines between the normalised profiles [N_src, N_tgt]."""
    sb, tb, sq, tq = _check_sets(src_base, tgt_base, src_query, tgt_query)
    rs = _rownorm(_rownorm(sq) @ _rownorm(sb).T)
    rt = _rownorm(_rownorm(tq) @ _rownorm(tb).T)
    return rs @ rt.T


# --------------------------------------------------------------------------------------------------
# assignment and metrics


def assign(S) -> np.ndarray:
    """One-to-one matching maximising the total score: ``perm [N_src]`` (target index per source row)."""
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] > S.shape[1]:
        raise ValueError(f"assignment needs a score matrix with at least as many columns as rows; got {S.shape}.")
    rows, cols = linear_sum_assignment(S, maximize=True)
    perm = np.empty(S.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm


def matching_accuracy(perm, truth=None) -> float:
    """Fraction of source items matched to their true target (``truth`` defaults to the identity)."""
    perm = np.asarray(perm)
    truth = np.arange(perm.size) if truth is None else np.asarray(truth)
    return float(np.mean(perm == truth))


def retrieval_at_k(S, ks: Iterable[int] = (1, 5, 10), truth=None) -> dict[str, float]:
    """Top-k retrieval: fraction of rows whose true column is among the k highest scores.

    Ties count against the query (a true column tied with others ranks after them).
    Returns ``{"top1": ..., "top5": ..., "top10": ...}``.
    """
    S = np.asarray(S, dtype=np.float64)
    N = S.shape[0]
    truth = np.arange(N) if truth is None else np.asarray(truth)
    own = S[np.arange(N), truth]
    rank = (S >= own[:, None]).sum(axis=1)  # 1 = best; ties pessimistic
    return {f"top{k}": float(np.mean(rank <= k)) for k in ks}


# --------------------------------------------------------------------------------------------------
# the benchmark protocol


def evaluate(
    image_emb,
    text_emb,
    *,
    n_base: int = 320,
    n_query: int = 500,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    do_stretch: bool = True,
    base_selection: str = "kmeans",
    direction: str = "text->image",
    qap_restarts: int = 3,
    kernel: str = "rbf",
    progress: Progress = None,
) -> list[dict]:
    """The paper's matching/retrieval protocol on paired embeddings ``image_emb [n, di]``, ``text_emb [n, dt]``.

    Per seed: stretch both sides over all n items (if ``do_stretch``), choose ``n_base`` base pairs
    (k-means on the image embeddings, nearest item per centroid, or ``"random"``), draw ``n_query``
    query pairs at random from the rest, shuffle the target side, run each method, and score it.
    ``direction`` ``"text->image"`` retrieves images for captions (the reference's default).
    Returns one row per (seed, method): ``{"seed", "method", "matching_acc", "top1", "top5",
    "top10", "seconds"}`` (retrieval is ``None`` for QAP, which only matches).
    """
    img = _f64("image_emb", image_emb)
    txt = _f64("text_emb", text_emb)
    if img.shape[0] != txt.shape[0]:
        raise ValueError(f"image and text embeddings must be paired; got {img.shape[0]} and {txt.shape[0]} rows.")
    n = img.shape[0]
    if n_base + n_query > n:
        raise ValueError(f"{n_base} base + {n_query} query pairs need more than the {n} pairs available.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}.")
    if direction not in ("text->image", "image->text"):
        raise ValueError(f"direction must be 'text->image' or 'image->text'; got {direction!r}.")
    img_s = stretch(img) if do_stretch else img
    txt_s = stretch(txt) if do_stretch else txt
    src, tgt = (txt_s, img_s) if direction == "text->image" else (img_s, txt_s)
    rows = []
    steps = len(seeds) * len(methods)
    done = 0
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if base_selection == "kmeans":
            base = kmeans_base(img, n_base, seed=seed)
        elif base_selection == "random":
            base = rng.choice(n, size=n_base, replace=False)
        else:
            raise ValueError(f"base_selection must be 'kmeans' or 'random'; got {base_selection!r}.")
        rest = np.setdiff1d(np.arange(n), base)
        query = rng.choice(rest, size=n_query, replace=False)
        shuffle = rng.permutation(n_query)  # target query k is true partner of source query shuffle[k]
        truth = np.argsort(shuffle)  # source i's partner sits at position truth[i]
        sb, tb = src[base], tgt[base]
        sq, tq = src[query], tgt[query][shuffle]
        for method in methods:
            t0 = time.perf_counter()
            S = None
            if method == "qap":
                perm = qap_match(sb, tb, sq, tq, kernel=kernel, restarts=qap_restarts, seed=seed)
            else:
                if method == "local_cka":
                    S = LocalCKA(sb, tb, kernel=kernel).score(sq, tq)
                elif method == "linear":
                    S = linear_map_scores(sb, tb, sq, tq)
                else:
                    S = relative_scores(sb, tb, sq, tq)
                perm = assign(S)
            secs = time.perf_counter() - t0
            row = {"seed": int(seed), "method": method, "matching_acc": matching_accuracy(perm, truth)}
            if S is None:
                row.update({"top1": None, "top5": None, "top10": None})
            else:
                row.update(retrieval_at_k(S, truth=truth))
            row["seconds"] = secs
            rows.append(row)
            done += 1
            if progress is not None:
                progress(done / steps)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds per method: ``[{"method", "matching_acc", "matching_acc_std", "top1", ...}]``."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        agg = {"method": method, "n_seeds": len(rs)}
        for key in ("matching_acc", "top1", "top5", "top10", "seconds"):
            vals = [r[key] for r in rs if r[key] is not None]
            agg[key] = float(np.mean(vals)) if vals else None
            agg[key + "_std"] = float(np.std(vals)) if vals else None
        out.append(agg)
    return out


# --------------------------------------------------------------------------------------------------
# label-free suspicious pairs

SUSPICIOUS_METHODS = ("rank", "agreement", "loo_cka")


def suspicious_pair_scores(
    image_emb,
    text_emb,
    *,
    method: str = "rank",
    n_base: int = 320,
    pool: int = 1000,
    groups=None,
    do_stretch: bool = True,
    base_selection: str = "random",
    seed: int = 0,
    progress: Progress = None,
) -> np.ndarray:
    """Label-free suspicion score per pair, ``[N]`` float64, **higher = more suspicious**.

    ``image_emb [N, di]`` and ``text_emb [N, dt]`` are paired row by row (e.g. a workspace's anchor
    pairs; any encoders, L2-normalised or not). No labels are used: the score asks how well a pair's
    image neighbourhood agrees with its caption neighbourhood, measured against a base set of other
    pairs from the same data.

    Methods
    -------
    ``"rank"`` (default)
        Local-CKA retrieval rank of the pair's own partner. A base set of ``n_base`` pairs is drawn
        (two disjoint base sets are used, so no pair is ever scored against a base that contains
        itself or its image); each image is scored against its own caption and a random pool
        of ``pool`` other captions by local CKA, and vice versa. The score is the mean of the two
        fractions of pool items that beat the true partner (0 = own partner best, 1 = worst).
    ``"agreement"``
        ``-localCKA(image_i, caption_i)`` standardised per row and column against the pools (cheaper
        to read, a little less robust to "hub" items).
    ``"loo_cka"``
        How much the global linear CKA of all pairs rises when the pair is left out (exact, O(N d^2)).

    ``groups [N]`` (optional) marks pairs that share an item, e.g. the same image with several
    captions; pool candidates from the same group as the pair are ignored (a sibling caption is not
    evidence against a pair). By default pairs with byte-identical image embeddings form a group.
    ``base_selection``: ``"random"`` (default) or ``"kmeans"`` (nearest pair to each of ``n_base``
    centroids, as the paper picks bases; slower here and no better at this task: docs/RESULTS.md,
    "Figures behind code constants").
    ``progress`` receives a fraction in [0, 1].
    """
    img = _f64("image_emb", image_emb)
    txt = _f64("text_emb", text_emb)
    if img.shape[0] != txt.shape[0]:
        raise ValueError(f"image and text embeddings must be paired; got {img.shape[0]} and {txt.shape[0]} rows.")
    N = img.shape[0]
    if method not in SUSPICIOUS_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(SUSPICIOUS_METHODS)}.")
    if method == "loo_cka":
        return _loo_linear_cka_gain(img, txt)
    if N < 8:
        raise ValueError(f"scoring needs at least 8 pairs; got {N}.")
    if groups is None:
        _, groups = np.unique(np.ascontiguousarray(img).view(np.dtype((np.void, img.dtype.itemsize * img.shape[1]))),
                              return_inverse=True)
        groups = groups.ravel()
    groups = np.asarray(groups)
    if groups.shape != (N,):
        raise ValueError(f"groups must have one entry per pair ({N}); got shape {groups.shape}.")
    img_s = stretch(img) if do_stretch else img
    txt_s = stretch(txt) if do_stretch else txt
    rng = np.random.default_rng(seed)
    # one representative per image group for the base sets, so a base never repeats an image
    reps = first_pair_per_image(groups)
    m = int(min(n_base, max(3, len(reps) // 3)))
    if base_selection == "kmeans":
        base1 = reps[kmeans_base(img[reps], m, seed=seed)]
        remaining = np.setdiff1d(reps, base1)
        base2 = remaining[kmeans_base(img[remaining], m, seed=seed + 1)]
    elif base_selection == "random":
        two = rng.choice(reps, size=2 * m, replace=False)
        base1, base2 = two[:m], two[m:]
    else:
        raise ValueError(f"base_selection must be 'kmeans' or 'random'; got {base_selection!r}.")
    g1 = set(groups[base1].tolist())
    in_b1 = np.array([g in g1 for g in groups])  # pairs whose image is in base1 are scored with base2
    P = int(min(pool, N - 1))
    pool_idx = rng.choice(N, size=P, replace=False)
    scores = np.empty(N)
    jobs = [(np.flatnonzero(~in_b1), base1), (np.flatnonzero(in_b1), base2)]
    total = sum(len(j[0]) for j in jobs)
    done = 0
    for idx_all, base in jobs:
        if idx_all.size == 0:
            continue
        lc = LocalCKA(img_s[base], txt_s[base])  # image (src) x caption (tgt)
        pool_img = lc.prepare_src(img_s[pool_idx])
        pool_txt = lc.prepare_tgt(txt_s[pool_idx])
        for start in range(0, idx_all.size, 1024):
            idx = idx_all[start:start + 1024]
            q_img = lc.prepare_src(img_s[idx])
            q_txt = lc.prepare_tgt(txt_s[idx])
            own_it = lc.score_pairs_prepared(q_img, q_txt)
            Pit = lc.score_prepared(q_img, pool_txt)  # [b, P]: image idx vs pool captions
            S_ti = lc.score_prepared(pool_img, q_txt).T  # [b, P]: caption idx vs pool images
            S_ti_own = own_it
            valid = groups[pool_idx][None, :] != groups[idx][:, None]  # ignore same-group candidates
            nvalid = np.maximum(valid.sum(axis=1), 1)
            if method == "rank":
                beat_it = ((Pit > own_it[:, None]) & valid).sum(axis=1) / nvalid
                beat_ti = ((S_ti > S_ti_own[:, None]) & valid).sum(axis=1) / nvalid
                scores[idx] = 0.5 * (beat_it + beat_ti)
            else:
                def z(own, S):
                    Sm = np.where(valid, S, np.nan)
                    mu = np.nanmean(Sm, axis=1)
                    sd = np.nanstd(Sm, axis=1) + 1e-12
                    return (own - mu) / sd
                scores[idx] = -0.5 * (z(own_it, Pit) + z(S_ti_own, S_ti))
            done += idx.size
            if progress is not None:
                progress(done / total)
    return scores


def suspicion_rank(scores) -> np.ndarray:
    """Rank of every score among all of them, ``[N]`` int64, 1 = most suspicious; tied scores share
    the best rank of their group (competition ranking), so a tie is visible, never hidden by order.

    >>> suspicion_rank([0.2, 0.9, 0.5, 0.9]).tolist()
    [4, 1, 3, 1]
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    desc = np.sort(-s)
    return (np.searchsorted(desc, -s, side="left") + 1).astype(np.int64)


def _loo_linear_cka_gain(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``CKA(without pair i) - CKA(all)`` for every i, linear kernel, biased estimator, exact.

    Removing row i from n rows changes the centred scatter matrices by a rank-one downdate
    ``S -> S - n/(n-1) x~ y~'`` (``x~ = x_i - mean``), so each leave-one-out CKA costs O(d^2).
    """
    n = X.shape[0]
    if n < 3:
        raise ValueError("leave-one-out CKA needs at least 3 pairs.")
    Xc = X - X.mean(axis=0)
    Yc = Y - Y.mean(axis=0)
    Cxy = Xc.T @ Yc
    Cxx = Xc.T @ Xc
    Cyy = Yc.T @ Yc
    c = n / (n - 1.0)
    nx = np.einsum("ij,ij->i", Xc, Xc)
    ny = np.einsum("ij,ij->i", Yc, Yc)
    xy = np.einsum("ij,ij->i", Xc @ Cxy, Yc)  # x~' Cxy y~
    xx = np.einsum("ij,ij->i", Xc @ Cxx, Xc)
    yy = np.einsum("ij,ij->i", Yc @ Cyy, Yc)
    fxy = float(np.vdot(Cxy, Cxy))
    fxx = float(np.vdot(Cxx, Cxx))
    fyy = float(np.vdot(Cyy, Cyy))
    full = fxy / np.sqrt(fxx * fyy)
    loo_xy = fxy - 2 * c * xy + c * c * nx * ny
    loo_xx = fxx - 2 * c * xx + c * c * nx * nx
    loo_yy = fyy - 2 * c * yy + c * c * ny * ny
    return loo_xy / np.sqrt(loo_xx * loo_yy) - full


# --------------------------------------------------------------------------------------------------
# loading paired embeddings (used by the CLI, the Align page and the benchmarks)


def pair_embeddings(
    source=None,
    image_encoder: str = "efficientnet-lite0",
    text_encoder: str = "minilm",
    *,
    cache,
    one_caption_per_image: bool = True,
    limit: int | None = None,
    first_images: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
):
    """The pairs to align, embedded through ``cache`` (a :class:`core.cache.EmbeddingCache`).

    ``source``: anything :func:`core.data.load_pairs` accepts (default: the demo Flickr8k folder).
    With ``one_caption_per_image`` the first caption of each image is kept (so no two pairs share
    an image, as in the paper's 5k COCO pairs); ``first_images`` keeps only the pairs of the first
    that many images; ``limit`` keeps a random subset of that many pairs (seeded, order preserved).
    The selection is made before embedding, so only what is kept is encoded. Returns a
    :class:`core.embedded.EmbeddedPairs` (``pair_image_vectors [P, di]``, ``text_vectors [P, dt]``,
    captions, paths and ids for display).
    """
    from core import data as _data
    from core.embedded import EmbeddedPairs, first_pair_per_image

    if source is None:
        source = _data.demo_sources(required=True)["flickr8k"]
        if source is None:
            raise ValueError("the demo Flickr8k pairs are missing.\n" + _data.EXPECTED_LAYOUT)
    pairs = _data.load_pairs(source)
    if first_images is not None:
        pairs = pairs.first_images(int(first_images))
    if len(pairs) == 0:
        raise ValueError("the pair set is empty: nothing to align.")
    sel = first_pair_per_image(pairs.pair_image) if one_caption_per_image else np.arange(len(pairs))
    if limit is not None and limit < sel.size:
        rng = np.random.default_rng(seed)
        sel = np.sort(rng.choice(sel, size=int(limit), replace=False))
    if sel.size != len(pairs):
        pairs = pairs.subset(sel)
    return EmbeddedPairs.from_pairset(pairs, image_encoder, text_encoder, cache=cache,
                                      progress=progress)
