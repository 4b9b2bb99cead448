"""The modality gap and intra-modal misalignment, array-level.

* :func:`modality_gap`: distance between the centroids of L2-normalised image and text embeddings
  (Liang et al. 2022's gap), with the centroid cosine and the mean matched-pair cosine.
* :func:`similarity_distributions` / :func:`histograms`: the data of image-image, text-image and
  inverted-image similarity histograms (Cross the Gap, Fig. 3 style), matched vs unmatched.
* :func:`mean_average_precision`: retrieval mAP from scores and relevance, chunked; with
  :func:`label_relevance` (same class) and :func:`caption_relevance` (Flickr8k protocol: first caption
  of each image is the query, its other captions are relevant, the query itself is excluded).
* :func:`recover_intra_from_inter`: the misalignment supplement's recovery of image-image
  similarities from text-image ones (SVD + least squares on ``diag(V Q V^T) = 1``), which says plainly
  when the number of images is too small for the dimension.
* :func:`class_axis_projection`: projection of image embeddings onto the top principal axes of
  class-name text embeddings (``Q Λ Qᵀ x``) with optional mean adjustment (``+ Q(I-Λ)Qᵀ μ``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from core.arrays import as_float32_2d, l2_normalize

__all__ = [
     "modality_gap", "similarity_distributions", "histograms", "mean_average_precision",
    "label_relevance", "caption_relevance", "RecoveryResult", "recover_intra_from_inter",
    "class_axis_projection",
]


def modality_gap(image_emb: np.ndarray, text_emb: np.ndarray,
                 pairs: Optional[tuple[np.ndarray, np.ndarray]] = None) -> dict:
    """Gap between normalised image ``[N, d]`` and text ``[M, d]`` embeddings of one shared space.

    Returns ``gap`` (‖mean image − mean text‖₂), ``centroid_cosine``, the two centroid norms, and
    when ``pairs = (image_rows, text_rows)`` is given the mean cosine of matched pairs.

    Two modalities that live on opposite sides of the sphere are √2 apart at the centroids:

    >>> round(modality_gap(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))["gap"], 4)
    1.4142
    """
    x = l2_normalize(as_float32_2d("Image embeddings", image_emb))
    t = l2_normalize(as_float32_2d("Text embeddings", text_emb))
    if x.shape[1] != t.shape[1]:
        raise ValueError(f"The gap needs one shared space: image dim {x.shape[1]} != text dim {t.shape[1]}.")
    mx, mt = x.mean(0), t.mean(0)
    out = {"gap": float(np.linalg.norm(mx - mt)),
           "centroid_cosine": float(mx @ mt / max(1e-12, np.linalg.norm(mx) * np.linalg.norm(mt))),
           "image_centroid_norm": float(np.linalg.norm(mx)), "text_centroid_norm": float(np.linalg.norm(mt)),
           "n_images": int(len(x)), "n_texts": int(len(t)), "dim": int(x.shape[1])}
    if pairs is not None:
        i, j = (np.asarray(p, dtype=np.int64) for p in pairs)
        out["matched_cosine"] = float((x[i] * t[j]).sum(1).mean())
    return out


def _offdiag_sample(s: np.ndarray, max_values: int, rng: np.random.Generator) -> np.ndarray:
    n = s.shape[0]
    iu = np.triu_indices(n, 1)
    v = s[iu]
    return v if len(v) <= max_values else rng.choice(v, max_values, replace=False)


def similarity_distributions(image_emb: np.ndarray, text_emb: np.ndarray,
                             inverted: Optional[np.ndarray] = None, max_values: int = 20000,
                             seed: int = 0) -> dict[str, np.ndarray]:
    """Cosine similarities for histograms, rows of the three arrays being *paired* (row i of each
    belongs to item i): image ``[N, d]``, text ``[N, d]`` and optionally inverted images ``[N, d]``
    (e.g. OTI features). Keys: ``image-image`` (distinct images), ``text-image matched`` /
    ``text-image unmatched``, ``inverted-image matched`` / ``inverted-image unmatched``; each a
    float32 array of at most ``max_values`` values (seeded subsample)."""
    x = l2_normalize(as_float32_2d("Image embeddings", image_emb))
    t = l2_normalize(as_float32_2d("Text embeddings", text_emb))
    if len(x) != len(t):
        raise ValueError("Image and text rows must be paired (same number of rows).")
    if len(x) < 2:
        raise ValueError("Need at least 2 items for similarity distributions.")
    rng = np.random.default_rng(seed)
    n = len(x)
    if n > 2000:  # subsample items: the pairwise matrices stay small
        keep = np.sort(rng.choice(n, 2000, replace=False))
        x, t = x[keep], t[keep]
        inverted = None if inverted is None else np.asarray(inverted)[keep]
        n = 2000
    out = {"image-image": _offdiag_sample(x @ x.T, max_values, rng).astype(np.float32)}
    for name, q in (("text-image", t), ("inverted-image", None if inverted is None else l2_normalize(np.asarray(inverted, np.float32)))):
        if q is None:
            continue
        s = q @ x.T
        out[f"{name} matched"] = np.diag(s).astype(np.float32)
        off = s[~np.eye(n, dtype=bool)]
        out[f"{name} unmatched"] = (off if len(off) <= max_values else rng.choice(off, max_values, replace=False)
                                    ).astype(np.float32)
    return out


def histograms(distributions: dict[str, np.ndarray], bins: int = 60,
               value_range: Optional[tuple[float, float]] = None) -> dict:
    """Shared-bin histograms (densities) of :func:`similarity_distributions` output, for plotting:
    ``{"edges": [bins+1], "centers": [bins], "density": {name: [bins]}, "mean": {name: float}}``."""
    if not distributions:
        raise ValueError("No distributions to histogram.")
    allv = np.concatenate([np.asarray(v).ravel() for v in distributions.values()])
    lo, hi = value_range or (float(allv.min()), float(allv.max()))
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    dens = {k: np.histogram(v, bins=edges, density=True)[0].astype(np.float32) for k, v in distributions.items()}
    return {"edges": edges, "centers": 0.5 * (edges[1:] + edges[:-1]), "density": dens,
            "mean": {k: float(np.mean(v)) for k, v in distributions.items()}}


def label_relevance(query_labels: Sequence, gallery_labels: Sequence):
    """Relevance function for :func:`mean_average_precision`: same label."""
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)

    def rel(lo: int, hi: int) -> np.ndarray:
        return q[lo:hi, None] == g[None, :]

    return rel


def caption_relevance(pair_image: Sequence[int]):
    """Flickr8k text->text protocol on captions grouped by image (``pair_image [P]``: image index of
    each caption). Returns ``(query_rows [Q], relevance_fn, exclude_fn)``: the first caption of each
    image is a query; the gallery is all captions; the image's other captions are relevant; the query
    caption itself is excluded from its own ranking."""
    from core.embedded import first_pair_per_image

    g = np.asarray(pair_image)
    queries = first_pair_per_image(g)

    def rel(lo: int, hi: int) -> np.ndarray:
        return g[queries[lo:hi], None] == g[None, :]

    def exclude(lo: int, hi: int) -> np.ndarray:
        m = np.zeros((hi - lo, len(g)), dtype=bool)
        m[np.arange(hi - lo), queries[lo:hi]] = True
        return m

    return queries, rel, exclude


def mean_average_precision(queries: np.ndarray, gallery: np.ndarray, relevance, exclude=None,
                           chunk: int = 256) -> dict:
    """mAP of cosine retrieval: ``queries [Q, d]`` against ``gallery [G, d]``.

    ``relevance(lo, hi) -> bool [hi-lo, G]`` (see :func:`label_relevance`, :func:`caption_relevance`)
    or a bool array ``[Q, G]``; ``exclude`` likewise marks gallery items to drop from a query's
    ranking (e.g. itself). Queries without any relevant item are skipped and counted.
    Returns ``{"mAP": %, "n_queries": …, "skipped": …}``.
    """
    q, g = l2_normalize(as_float32_2d("Queries", queries)), l2_normalize(as_float32_2d("Gallery", gallery))
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"Queries ({q.shape[1]}-d) and gallery ({g.shape[1]}-d) live in different spaces.")
    rel_fn = relevance if callable(relevance) else (lambda lo, hi: np.asarray(relevance)[lo:hi])
    exc_fn = exclude if (exclude is None or callable(exclude)) else (lambda lo, hi: np.asarray(exclude)[lo:hi])
    aps = []
    skipped = 0
    for lo in range(0, len(q), chunk):
        hi = min(len(q), lo + chunk)
        s = q[lo:hi] @ g.T
        rel = rel_fn(lo, hi).astype(bool)
        if exc_fn is not None:
            ex = exc_fn(lo, hi)
            s = np.where(ex, -np.inf, s)
            rel = rel & ~ex
        order = np.argsort(-s, axis=1, kind="stable")
        r = np.take_along_axis(rel, order, axis=1)
        hits = np.cumsum(r, axis=1)
        n_rel = r.sum(1)
        prec = hits / np.arange(1, r.shape[1] + 1)[None]
        ap = (prec * r).sum(1) / np.maximum(n_rel, 1)
        skipped += int((n_rel == 0).sum())
        aps.append(ap[n_rel > 0])
    aps = np.concatenate(aps) if aps else np.zeros(0)
    return {"mAP": float(100.0 * aps.mean()) if len(aps) else float("nan"),
            "n_queries": int(len(aps)), "skipped": skipped}


@dataclass
class RecoveryResult:
    """Output of :func:`recover_intra_from_inter`."""

    s_intra: Optional[np.ndarray]  # [N, N] recovered image-image similarities (None if refused)
    rank: int  # d used
    n_equations: int  # N (one per image: unit norm)
    n_unknowns: int  # d(d+1)/2 entries of the symmetric Q
    determined: bool  # N >= d(d+1)/2 and the system has full column rank
    column_rank: int
    residual: float  # max |diag(V Q Vᵀ) − 1|
    numerical_rank: int  # rank of S_inter (singular values above tol × the largest)
    message: str

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "s_intra"}


def recover_intra_from_inter(s_inter: np.ndarray, rank: Optional[int] = None, tol: float = 1e-6,
                             max_matrix_entries: int = 20_000_000) -> RecoveryResult:
    """Recover image-image similarities ``X_I X_Iᵀ`` ``[N, N]`` from text-image ones
    ``S_inter = X_T X_Iᵀ`` ``[M, N]`` (M texts × N images; unit-norm rows of dimension d).

    Following the misalignment supplement (eqs. 5-10): SVD ``S_inter = U Σ Vᵀ``, keep ``d`` = ``rank``
    (default: the numerical rank) right singular vectors ``V [N, d]``; ``X_I = V C`` for some ``C``; the
    unit norms give ``N`` linear equations ``v_iᵀ Q v_i = 1`` in the ``d(d+1)/2`` unknowns of the
    symmetric ``Q = C Cᵀ``; solve by least squares; ``S_intra = V Q Vᵀ``.

    When ``N < d(d+1)/2`` the system is underdetermined: the answer is then one of infinitely many
    (the minimum-norm one) and ``determined`` is False with a plain message. Refuses (``s_intra`` None)
    when the ``N × d(d+1)/2`` system would exceed ``max_matrix_entries``.
    """
    s = np.asarray(s_inter, dtype=np.float64)
    if s.ndim != 2 or min(s.shape) == 0:
        raise ValueError("S_inter must be a non-empty [texts, images] matrix.")
    if not np.isfinite(s).all():
        raise ValueError("S_inter contains NaN or infinite values.")
    n = s.shape[1]
    _, sv, vt = np.linalg.svd(s, full_matrices=False)
    numerical_rank = int((sv > tol * sv[0]).sum()) if sv[0] > 0 else 0
    d = numerical_rank if rank is None else int(rank)
    if not 1 <= d <= len(sv):
        raise ValueError(f"rank must be between 1 and {len(sv)} (got {d}).")
    unknowns = d * (d + 1) // 2
    if n * unknowns > max_matrix_entries:
        short = (f"N is too small for d: {n:,} images give {n:,} equations for {unknowns:,} unknowns "
                 f"(d = {d}); recovery would not be unique. " if n < unknowns else "")
        return RecoveryResult(None, d, n, unknowns, False, 0, float("nan"), numerical_rank,
                              f"{short}Not solved: the system is {n:,} × {unknowns:,} ({n * unknowns:,} "
                              f"entries), over the limit of {max_matrix_entries:,}; lower the rank.")
    v = vt[:d].T  # [N, d]
    ju, ku = np.triu_indices(d)
    a = v[:, ju] * v[:, ku] * np.where(ju == ku, 1.0, 2.0)[None]
    x, _, col_rank, _ = np.linalg.lstsq(a, np.ones(n), rcond=None)
    qm = np.zeros((d, d))
    qm[ju, ku] = x
    qm[ku, ju] = x
    s_intra = v @ qm @ v.T
    residual = float(np.abs(np.diag(s_intra) - 1).max())
    determined = bool(col_rank == unknowns)
    if n < unknowns:
        msg = (f"N is too small for d: {n:,} images give {n:,} equations for {unknowns:,} unknowns "
               f"(d = {d}, d(d+1)/2); the recovered similarities are one of infinitely many solutions "
               f"(minimum norm), not the true ones. Need at least {unknowns:,} images, or a smaller d.")
    elif not determined:
        msg = (f"The system has {n:,} equations but only column rank {col_rank} < {unknowns:,} unknowns "
               "(degenerate embeddings); the recovery is not unique.")
    elif d < numerical_rank:
        msg = (f"Approximate: S_inter has numerical rank {numerical_rank}, truncated to d = {d}; the "
               f"{n:,} × {unknowns:,} system is determined but the unit norms can only be met up to "
               f"max |diag − 1| = {residual:.2e}.")
    else:
        msg = (f"Determined: {n:,} equations ≥ {unknowns:,} unknowns (d = {d}) at full column rank; "
               f"max |diag − 1| = {residual:.2e}.")
    return RecoveryResult(s_intra.astype(np.float32), d, n, unknowns, determined, int(col_rank), residual,
                          numerical_rank, msg)


def class_axis_projection(image_emb: np.ndarray, class_text_emb: np.ndarray, n_axes: int,
                          mean_adjust: bool = True, renormalize: bool = True) -> np.ndarray:
    """Project image embeddings ``[N, d]`` onto the top ``n_axes`` principal axes of class-name text
    embeddings ``[C, d]`` (supplement B, eq. 11: ``x← = Q Λ Qᵀ x``), optionally adding back the cut
    part of the image mean (eq. 12: ``+ Q (I − Λ) Qᵀ μ_x``); rows renormalised by default.
    At most ``C − 1`` axes carry variance: more than that raises a ``ValueError``."""
    x = as_float32_2d("Image embeddings", image_emb).astype(np.float64)
    c = as_float32_2d("Class text embeddings", class_text_emb).astype(np.float64)
    if x.shape[1] != c.shape[1]:
        raise ValueError("Image and class text embeddings must share one space (same dimension).")
    max_axes = min(c.shape[0] - 1, c.shape[1])
    if not 1 <= n_axes <= max_axes:
        raise ValueError(f"n_axes must be between 1 and {max_axes} ({c.shape[0]} class texts give at most "
                         f"{c.shape[0] - 1} principal axes); use more class names or prompt templates.")
    cov = np.cov(c, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    q = evecs[:, np.argsort(evals)[::-1][:n_axes]]  # [d, n_axes]
    proj = (x @ q) @ q.T
    if mean_adjust:
        mu = x.mean(0)
        proj = proj + (mu - q @ (q.T @ mu))[None]
    out = proj.astype(np.float32)
    return l2_normalize(out) if renormalize else out
