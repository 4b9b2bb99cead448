"""2-D maps of a collection of anchor pairs: an instant PCA layout and a UMAP layout, cached on disk.

Not a step of the ASIF paper: a curator's view of the anchors ASIF votes with (its Sec. 3 "anchor
pairs"), so that clusters of bad captions or floods of near-identical photos can be seen and lassoed.

Public API
----------
``pca_2d(x [n, d])`` -> ``[n, 2]`` float32
    The first two principal components (milliseconds at 35,000 rows); shown while UMAP runs.
``umap_2d(x [n, d], n_neighbors=15, ...)`` -> ``[n, 2]`` float32
    UMAP (``umap-learn``) on cosine distance, fed the exact k-nearest-neighbour graph from
    :func:`core.search.exact_topk` (measured faster than UMAP's own NN-descent here, see
    docs/RESULTS.md "Map"); ``progress(fraction, message)`` reports the neighbour search and the
    layout stage.
``relative_features(image [n, di], caption [n, dt], k, p, dims)`` -> ``[n, dims]``
    The ASIF relative representation of each pair (its image's and its caption's sparse similarity
    vectors to all pairs, summed), reduced by truncated SVD: input for a map "as ASIF sees it".
``layout(x, method, cache_dir=None, progress=None, **params)`` -> ``[n, 2]``
    Either method on the *distinct* rows of ``x`` (a photo with five captions is laid out once),
    broadcast back to every row, copies spread on a small ring so each pair stays selectable; cached
    as ``cache_dir/layout-<key>.npy`` where the key is a content fingerprint of ``x`` + method +
    params (no pickles). :func:`cached_layout` reads the cache without computing.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import sparse
from sklearn.decomposition import TruncatedSVD   # imported here, in the importing thread: the map's
from sklearn.utils.extmath import randomized_svd  # worker threads importing sklearn at once saw it half-made

from core.arrays import as_float32_2d, l2_normalize
from core.search import distinct_rows, exact_topk

Progress = Callable[[float, str], None] | None

METHODS = ("pca", "umap")
#: UMAP settings chosen by measurement on 35,000 Flickr8k pairs (docs/RESULTS.md "Map").
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "n_epochs": 200, "init": "pca", "seed": 0}
#: Copies of one row (a photo with several captions) are spread on a ring of this radius, as a
#: fraction of the map's extent: visible as separate points when zoomed in, one blob when not.
SPREAD = 0.004
#: ``import umap`` (numba; heavy, so only when a UMAP is asked for) one thread at a time: two map
#: jobs importing it at once can find its package half-initialised (an ImportError).
_UMAP_IMPORT = threading.Lock()


def _check(x) -> np.ndarray:
    return as_float32_2d("The vectors to lay out", x)


def pca_2d(x) -> np.ndarray:
    """``[n, 2]`` float32: ``x [n, d]`` centred and projected on its two leading principal axes
    (randomized SVD, ``sklearn.utils.extmath.randomized_svd`` with 10 oversamples and 4 power
    iterations, seeded: equal to the exact axes to ~1e-4 on our embeddings and ~10x cheaper than
    the exact ``d x d`` eigenproblem at d = 1280; a single row maps to the origin)."""
    arr = _check(x)
    if arr.shape[0] < 2:
        return np.zeros((arr.shape[0], 2), np.float32)
    centred = arr - arr.mean(axis=0, dtype=np.float64).astype(np.float32)
    rank = min(2, *centred.shape)
    u, sv, _ = randomized_svd(centred, rank, n_oversamples=10, n_iter=4, random_state=0)
    out = np.zeros((arr.shape[0], 2), np.float32)
    out[:, :rank] = u * sv
    out *= np.where(out.sum(axis=0) < 0, -1.0, 1.0).astype(np.float32)  # a deterministic sign per axis
    return out


def knn_graph(x, n_neighbors: int, progress: Progress = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of every row of ``x [n, d]`` among all rows (itself first):
    ``(indices [n, n_neighbors] int64, distances [n, n_neighbors] float32)``, distance = 1 - cos."""
    xn = l2_normalize(_check(x))
    idx, sims = exact_topk(xn, xn, n_neighbors, progress=None if progress is None
                           else lambda f, m: progress(f, "Finding each point's nearest neighbours"))
    return idx, np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)


def umap_2d(x, n_neighbors: int = UMAP_DEFAULTS["n_neighbors"], min_dist: float = UMAP_DEFAULTS["min_dist"],
            n_epochs: int = UMAP_DEFAULTS["n_epochs"], init: str = UMAP_DEFAULTS["init"],
            seed: int = UMAP_DEFAULTS["seed"], knn: str = "exact", progress: Progress = None) -> np.ndarray:
    """``[n, 2]`` float32 UMAP of ``x [n, d]`` under cosine distance.

    ``knn="exact"`` feeds UMAP the exact neighbour graph of :func:`knn_graph`; ``"nndescent"``
    lets UMAP find approximate neighbours itself (kept for the benchmark's comparison). Fewer than
    4 rows, or rows that are all equal, have no neighbourhood structure: their PCA is returned.
    """
    with _UMAP_IMPORT:
        import umap  # noqa: WPS433 - heavy import (numba), only when a UMAP is asked for

    arr = _check(x)
    report = progress or (lambda f, m: None)
    n = arr.shape[0]
    if n < 4:
        return pca_2d(arr)
    nn = int(min(max(2, n_neighbors), n - 1))
    kwargs = dict(n_neighbors=nn, min_dist=float(min_dist), n_epochs=int(n_epochs), metric="cosine",
                  random_state=int(seed), init=init, low_memory=True, n_jobs=1)
    if knn == "exact":
        idx, dist = knn_graph(arr, nn, lambda f, m: report(0.4 * f, m))
        kwargs["precomputed_knn"] = (idx, dist, None)
    elif knn != "nndescent":
        raise ValueError(f"knn must be 'exact' or 'nndescent'; got {knn!r}.")
    report(0.4, f"Laying out {n:,} points (UMAP, {int(n_epochs)} epochs)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that random_state disables parallelism
        out = umap.UMAP(**kwargs).fit_transform(arr)
    report(1.0, "Layout ready")
    return np.asarray(out, dtype=np.float32)


def relative_features(image, caption, k: int, p: float, dims: int = 64, seed: int = 0) -> np.ndarray:
    """``[n, dims]`` float32: each pair's ASIF relative representation, reduced for layout.

    ``image [n, di]`` and ``caption [n, dt]`` are the pairs' vectors, which are also the anchors.
    Row i is the sparse vector ``rr(image_i) + rr(caption_i)`` over the ``n`` anchors (top ``k``
    similarities, power ``p``, unit norm, as :func:`core.asif.relative_representation`; repeated
    rows, a photo with several captions, are searched once), projected on its ``dims`` leading
    singular vectors (``sklearn`` randomized truncated SVD).
    """
    from core.asif import process_similarities
    from core.search import ExactIndex

    img, cap = _check(image), _check(caption)
    if img.shape[0] != cap.shape[0]:
        raise ValueError(f"image and caption rows must be paired; got {img.shape[0]} and {cap.shape[0]}.")
    n = img.shape[0]
    kk = int(min(k, n))
    rows = np.repeat(np.arange(n), kk)
    rel = sparse.csr_matrix((n, n), dtype=np.float32)
    for side in (l2_normalize(img), l2_normalize(cap)):
        first, inverse = distinct_rows(side)
        idx, sims = ExactIndex(side).topk(side[first], kk)
        val = process_similarities(sims, p)
        rel = rel + sparse.csr_matrix((val[inverse].ravel(), (rows, idx[inverse].ravel())), shape=(n, n))
    d = int(min(dims, n - 1))
    if d < 2:
        return pca_2d(rel.toarray())
    return TruncatedSVD(n_components=d, random_state=seed).fit_transform(rel).astype(np.float32)


def spread_copies(xy: np.ndarray, inverse: np.ndarray, radius: float = SPREAD) -> np.ndarray:
    """``[n, 2]``: ``xy [U, 2]`` broadcast to rows by ``inverse [n]``; the j-th of m copies of a
    row is moved ``radius * extent`` along angle ``2 pi j / m`` (a single copy stays put)."""
    inverse = np.asarray(inverse, dtype=np.int64)
    out = xy[inverse].astype(np.float32)
    counts = np.bincount(inverse, minlength=len(xy))
    if counts.max(initial=0) <= 1:
        return out
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - starts[inverse[order]]
    m = counts[inverse]
    extent = float(np.ptp(xy, axis=0).max()) if len(xy) > 1 else 1.0
    angle = 2 * np.pi * rank / m
    r = np.where(m > 1, radius * max(extent, 1e-6), 0.0)
    out[:, 0] += (r * np.cos(angle)).astype(np.float32)
    out[:, 1] += (r * np.sin(angle)).astype(np.float32)
    return out


def content_key(x, method: str, **params) -> str:
    """A 24-hex fingerprint of every byte of ``x`` (shape and dtype included), the method and its
    params: two inputs share a cached layout only when they are identical."""
    arr = np.ascontiguousarray(x)
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps([list(arr.shape), arr.dtype.str, method, params], sort_keys=True).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _path(cache_dir, key: str) -> Path:
    return Path(cache_dir) / f"layout-{key}.npy"


def _params(method: str, params: dict) -> dict:
    if method not in METHODS:
        raise ValueError(f"Unknown layout method {method!r}; choose one of {list(METHODS)}.")
    if method == "pca":
        if params:
            raise ValueError(f"PCA takes no parameters; got {sorted(params)}.")
        return {}
    unknown = set(params) - set(UMAP_DEFAULTS) - {"knn"}
    if unknown:
        raise ValueError(f"Unknown UMAP parameters {sorted(unknown)}; known: {sorted(UMAP_DEFAULTS)}.")
    return {**UMAP_DEFAULTS, "knn": "exact", **params}


def cached_layout(x, method: str, cache_dir, **params) -> np.ndarray | None:
    """The layout :func:`layout` would return, if it is cached in ``cache_dir``; else None."""
    arr = _check(x)
    first, inverse = distinct_rows(arr)
    path = _path(cache_dir, content_key(arr[first], method, **_params(method, params)))
    if not path.is_file():
        return None
    try:
        xy = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if xy.shape != (len(first), 2):
        return None
    return spread_copies(xy, inverse)


def layout(x, method: str = "umap", cache_dir=None, progress: Progress = None, **params) -> np.ndarray:
    """``[n, 2]`` float32 map of ``x [n, d]`` by ``method`` ("pca" or "umap", ``params`` as in
    :func:`umap_2d`), computed on the distinct rows and cached in ``cache_dir`` when given (a
    write failure only costs the cache)."""
    arr = _check(x)
    full = _params(method, params)
    if cache_dir is not None:
        hit = cached_layout(arr, method, cache_dir, **params)
        if hit is not None:
            if progress is not None:
                progress(1.0, "Layout read from the cache")
            return hit
    first, inverse = distinct_rows(arr)
    distinct = arr[first]
    xy = pca_2d(distinct) if method == "pca" else umap_2d(distinct, progress=progress, **full)
    if cache_dir is not None:
        path = _path(cache_dir, content_key(distinct, method, **full))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, xy, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass
    return spread_copies(xy, inverse)
