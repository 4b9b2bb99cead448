"""Top-k inner-product search: exact chunked matmul + top-k (CPU / CUDA) and FAISS backends.

Everything here works on L2-normalised float32 arrays, so inner product = cosine similarity.

Public API
----------
``exact_topk(queries [Q, d], base [N, d], k)`` -> ``(indices [Q, k] int64, similarities [Q, k] float32)``
    Exact, memory-bounded (a block of ``memory_bytes`` for the similarity tile), deterministic:
    results are sorted by similarity descending and **ties are broken by the lower base index**
    (the canonical order every other module relies on, so incremental and full recomputes agree).
``topk(queries, base, k, backend="exact" | "faiss-flat" | "faiss-ivf" | "faiss-ivfpq" | "faiss-hnsw", ...)``
    One call for every backend; same output format.
``build_faiss_index(base, kind, ...)`` / ``faiss_search(index, queries, k)``
    When you want to reuse a FAISS index across calls.
``recall_at_k(approx_indices, exact_indices)``
    Mean fraction of the exact top-k found by an approximate search.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

ProgressFn = Callable[[float, str], None]

DEFAULT_MEMORY_BYTES = 256 * 1024 ** 2
TIE_EXTRA = 16
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")


def _as_float32_2d(name: str, array, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d]; got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: give at least one vector.")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero-dimensional vectors.")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]} but the other side has {dim}: were they made by "
            "the same encoder?")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"{name} has NaN or infinite values in rows {bad[:10].tolist()}"
                         f"{' …' if len(bad) > 10 else ''}; re-embed or drop them.")
    return arr


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (float32). Zero rows stay zero. Rows already of unit norm (within
    1e-6) are left bit-for-bit unchanged, so normalising twice is a no-op (exact reproducibility)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    norms[(norms == 0) | (np.abs(norms - 1.0) <= 1e-6)] = 1.0
    if np.all(norms == 1.0):
        return x
    return (x / norms).astype(np.float32, copy=False)


def resolve_device(device: str | None) -> str:
    """``None``/"auto" -> "cuda" when available else "cpu"; "cuda" without a GPU raises."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA GPU is available; use 'cpu'.")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'.")
    return device


MIN_GEMM_ROWS = 16
#: Below this many multiply-adds a product runs on one thread: on a busy machine a 2-thread OpenMP
#: barrier costs tens of ms, far more than the work (results are bit-identical either way).
SMALL_WORK = 50_000_000


class _threads_for:
    """Context manager: one torch thread for small work, the default otherwise."""

    def __init__(self, work: float):
        self.small = work < SMALL_WORK

    def __enter__(self):
        if self.small:
            self.saved = torch.get_num_threads()
            if self.saved != 1:
                torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.small and self.saved != 1:
            torch.set_num_threads(self.saved)
        return False


def _pad_rows(t: torch.Tensor, n: int = MIN_GEMM_ROWS) -> torch.Tensor:
    if t.shape[0] >= n:
        return t
    return torch.cat([t, t.new_zeros((n - t.shape[0], t.shape[1]))])


def similarity_block(a, b) -> np.ndarray:
    """``a [m, d] @ b [n, d].T`` as float32 numpy, bit-identical to the same entries of a larger
    product: both operands are padded to at least 64 rows so the BLAS GEMM kernel (not GEMV) runs,
    whose per-entry summation order does not depend on the block. The incremental edit path relies
    on this to reproduce a full recompute exactly (including exact ties between duplicate anchors)."""
    at = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    bt = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    with torch.no_grad(), _threads_for(max(a.shape[0], MIN_GEMM_ROWS) * max(b.shape[0], MIN_GEMM_ROWS) * a.shape[1]):
        out = _pad_rows(at) @ _pad_rows(bt).T
    return out[:a.shape[0], :b.shape[0]].numpy().copy()


BLOCK = 8


def _block_topk(sims: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact unsorted top-``kk`` per row, ~1.5x faster than ``torch.topk`` on long rows.

    Columns are split into ``BLOCK`` contiguous slices of width M; "block" b is the strided set
    {b, b+M, …, b+7M}, whose maximum is an elementwise max of the slices (cheap, vectorised). The kk
    blocks with the largest maxima hold every element of the top-kk: the kk largest block maxima are
    kk distinct elements ≥ the kk-th block maximum t, so the kk-th element is ≥ t, and an element > t
    only lives in a block whose max is > t, all of which are kept. Exact ties at the boundary are
    resolved by the caller's tie check."""
    qn, n = sims.shape
    if n < 2 * BLOCK * kk:
        return torch.topk(sims, kk, dim=1, sorted=False)
    pad = (-n) % BLOCK
    s = sims if pad == 0 else torch.cat([sims, sims.new_full((qn, pad), float("-inf"))], 1)
    m = s.shape[1] // BLOCK
    bmax = s[:, :m].clone()
    for j in range(1, BLOCK):
        torch.maximum(bmax, s[:, j * m:(j + 1) * m], out=bmax)
    _, bi = torch.topk(bmax, kk, dim=1, sorted=False)
    cols = (bi[:, None, :] + (torch.arange(BLOCK, device=s.device) * m)[None, :, None]).reshape(qn, -1)
    v, j = torch.topk(s.gather(1, cols), kk, dim=1, sorted=False)
    return v, cols.gather(1, j)


def canonical_order(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by value descending, then index ascending. Returns (indices, values)."""
    vt = torch.from_numpy(np.ascontiguousarray(values))
    sv, order = torch.sort(vt, dim=-1, descending=True)
    out_v = sv.numpy()
    out_i = np.take_along_axis(indices, order.numpy(), -1)
    if out_v.shape[-1] > 1:
        tied = np.flatnonzero((out_v[:, 1:] == out_v[:, :-1]).any(axis=1))
        if tied.size:  # equal values: order by index (rare except for duplicate anchors)
            o = np.lexsort((out_i[tied], -out_v[tied]), axis=-1)
            out_i[tied] = np.take_along_axis(out_i[tied], o, -1)
            out_v[tied] = np.take_along_axis(out_v[tied], o, -1)
    return out_i, out_v


def _canonical_rows_exact(q: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = similarity_block(q, base)
    idx = np.broadcast_to(np.arange(base.shape[0]), sims.shape)
    order = np.lexsort((idx, -sims), axis=-1)[:, :k]
    return order.astype(np.int64), np.take_along_axis(sims, order, -1).astype(np.float32)


def exact_topk(queries, base, k: int, *, device: str | None = "cpu",
               memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` [Q, d] against ``base`` [N, d].

    Computed as chunked ``matmul`` + ``topk`` so that at most ``memory_bytes`` of similarities exist
    at once (1M anchors x 10k queries fit in a few hundred MB besides the inputs). On CUDA the base
    is moved to the GPU once (in slices if it does not fit in ``memory_bytes``... it always streams
    in anchor blocks); the queries stream in blocks.

    Returns ``(indices [Q, k] int64, similarities [Q, k] float32)``, each row sorted by similarity
    descending with ties broken by the lower base index. ``k`` must be in ``1..N``.
    """
    q = _as_float32_2d("queries", queries)
    b = _as_float32_2d("base", base, q.shape[1])
    n = b.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1 or k > n:
        raise ValueError(f"k must be an integer between 1 and the number of base vectors ({n}); got {k}.")
    k = int(k)
    dev = resolve_device(device)
    kk = min(n, k + TIE_EXTRA)
    n_q = q.shape[0]
    # Tile sizes: a query block of qb rows against an anchor block of nb columns.
    max_floats = max(memory_bytes // 4, 1)
    if n * 256 <= max_floats:
        nb = n
        qb = max(1, min(n_q, max_floats // n))
    else:
        qb = min(n_q, 256)
        nb = max(kk, max_floats // qb)
    out_idx = np.empty((n_q, kk), dtype=np.int64)
    out_val = np.empty((n_q, kk), dtype=np.float32)
    bt = torch.from_numpy(b)
    if dev != "cpu" and nb == n:
        bt = bt.to(dev)
    n_steps = math.ceil(n_q / qb)
    work = float(max(n_q, 64)) * max(n, 64) * q.shape[1] if dev == "cpu" else float("inf")
    with torch.no_grad(), _threads_for(work):
        for step, q0 in enumerate(range(0, n_q, qb)):
            n_rows = min(qb, n_q - q0)
            qt = _pad_rows(torch.from_numpy(q[q0:q0 + qb])).to(dev)
            best_v = best_i = None
            for a0 in range(0, n, nb):
                blk = bt[a0:a0 + nb]
                if blk.device.type != dev.split(":")[0]:
                    blk = blk.to(dev, non_blocking=True)
                n_cols = blk.shape[0]
                sims = (qt @ _pad_rows(blk).T)[:n_rows, :n_cols]
                kb = min(kk, sims.shape[1])
                v, i = _block_topk(sims, kb)
                i = i + a0
                if best_v is None:
                    best_v, best_i = v, i
                else:
                    cv = torch.cat([best_v, v], 1)
                    ci = torch.cat([best_i, i], 1)
                    best_v, sel = torch.topk(cv, min(kk, cv.shape[1]), dim=1, sorted=False)
                    best_i = ci.gather(1, sel)
                del sims
            out_val[q0:q0 + qb] = best_v.cpu().numpy()
            out_idx[q0:q0 + qb] = best_i.cpu().numpy()
            if progress is not None:
                progress((step + 1) / n_steps, "top-k search")
    out_idx, out_val = canonical_order(out_idx, out_val)
    if kk > k:
        # A tie group that reaches the end of the extra candidates may hide lower indices: redo those
        # rows exactly (rare: needs more than TIE_EXTRA equal similarities at the k-th place).
        bad = np.flatnonzero(out_val[:, k - 1] == out_val[:, kk - 1]) if kk < n else np.empty(0, int)
        if bad.size:
            ri, rv = _canonical_rows_exact(q[bad], b, k)
            out_idx[bad, :k], out_val[bad, :k] = ri, rv
    return np.ascontiguousarray(out_idx[:, :k]), np.ascontiguousarray(out_val[:, :k])


# ----------------------------------------------------------------------------------------------
# FAISS
# ----------------------------------------------------------------------------------------------

def _faiss():
    try:
        import faiss  # noqa: WPS433
    except ImportError as error:  # pragma: no cover - faiss-cpu is in requirements
        raise ValueError("FAISS is not installed: pip install faiss-cpu") from error
    return faiss


def build_faiss_index(base, kind: str = "flat", *, nlist: int | None = None, pq_m: int | None = None,
                      pq_bits: int = 8, hnsw_m: int = 32, ef_construction: int = 80,
                      train_size: int | None = 100_000, seed: int = 0):
    """Build a FAISS inner-product index over ``base`` [N, d] (L2-normalised float32).

    ``kind``: "flat" (IndexFlatIP, exact), "ivf" (IndexIVFFlat, ``nlist`` lists, default
    ≈ 4·sqrt(N)), "ivfpq" (IndexIVFPQ with ``pq_m`` sub-quantisers of ``pq_bits`` bits; ``pq_m``
    defaults to the largest divisor of d that is ≤ d/4 and ≤ 64), "hnsw" (IndexHNSWFlat, inner
    product, ``hnsw_m`` links). Training uses at most ``train_size`` base vectors (seeded).
    """
    faiss = _faiss()
    b = _as_float32_2d("base", base)
    n, d = b.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind in ("ivf", "ivfpq"):
        nlist = int(nlist or max(1, min(n // 39, int(4 * math.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if pq_m is None:
                pq_m = max(m for m in range(1, min(64, max(1, d // 4)) + 1) if d % m == 0)
            if d % pq_m:
                raise ValueError(f"pq_m={pq_m} must divide the dimension {d}.")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = b if train_size is None or n <= train_size else b[rng.choice(n, train_size, replace=False)]
        index.train(train)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"unknown FAISS index kind {kind!r}; use flat, ivf, ivfpq or hnsw.")
    index.add(b)
    return index


def faiss_search(index, queries, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Search a FAISS index; returns ``(indices [Q, k] int64, similarities [Q, k] float32)``.

    ``nprobe`` (IVF kinds, default 16) and ``ef_search`` (HNSW, default max(2k, 64)) trade speed for
    recall. Missing results (fewer than k reachable) are -1 with similarity -inf.
    """
    faiss = _faiss()
    q = _as_float32_2d("queries", queries, index.d)
    if k < 1 or k > index.ntotal:
        raise ValueError(f"k must be between 1 and the index size ({index.ntotal}); got {k}.")
    inner = faiss.extract_index_ivf(index) if hasattr(index, "nprobe") or "IVF" in type(index).__name__ else None
    if inner is not None:
        inner.nprobe = int(nprobe or 16)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(ef_search or max(2 * k, 64))
    values, indices = index.search(q, int(k))
    values = np.where(indices < 0, -np.inf, values).astype(np.float32)
    return indices.astype(np.int64), values


def topk(queries, base, k: int, *, backend: str = "exact", device: str | None = "cpu",
         memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
         **index_params) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search behind one call.

    ``backend``: "exact" (:func:`exact_topk`, CPU or CUDA), "faiss-flat" (exact, FAISS),
    "faiss-ivf", "faiss-ivfpq", "faiss-hnsw" (approximate; ``index_params`` go to
    :func:`build_faiss_index` and :func:`faiss_search`, e.g. ``nlist``, ``nprobe``, ``pq_m``,
    ``hnsw_m``, ``ef_search``). Returns ``(indices [Q, k] int64, similarities [Q, k] float32)``
    sorted by similarity descending.
    """
    if backend == "exact":
        return exact_topk(queries, base, k, device=device, memory_bytes=memory_bytes, progress=progress)
    if not backend.startswith("faiss-") or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    search_keys = {"nprobe", "ef_search"}
    build_params = {key: v for key, v in index_params.items() if key not in search_keys}
    search_params = {key: v for key, v in index_params.items() if key in search_keys}
    index = build_faiss_index(base, backend[len("faiss-"):], **build_params)
    return faiss_search(index, queries, k, **search_params)


def recall_at_k(approx_indices: np.ndarray, exact_indices: np.ndarray) -> float:
    """Mean over queries of |approx ∩ exact| / k (both ``[Q, k]``)."""
    a = np.asarray(approx_indices)
    e = np.asarray(exact_indices)
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {e.shape}")
    hits = 0
    for row_a, row_e in zip(a, e):
        hits += np.intersect1d(row_a, row_e, assume_unique=False).size
    return hits / e.size


class DedupIndex:
    """Exact top-k over a base with many identical rows (e.g. Flickr8k: 5 captions per image, so
    every anchor image appears 5 times): similarities are computed once per distinct row, then each
    distinct row is expanded into its copies. Results are identical to :func:`exact_topk` on the
    full base (same canonical order: similarity desc, position asc).

    ``DedupIndex(base [N, d])``; ``.useful`` says whether it pays (≤ 80 % distinct rows and at most
    ``max_copies`` copies of any row); ``.topk(queries, k)`` -> ``(indices [Q, k], sims [Q, k])``.
    """

    def __init__(self, base, max_copies: int = 16):
        b = _as_float32_2d("base", base)
        self.n, self.d = b.shape
        view = np.ascontiguousarray(b).view(np.dtype((np.void, b.dtype.itemsize * self.d))).ravel()
        _, first, inverse, counts = np.unique(view, return_index=True, return_inverse=True,
                                              return_counts=True)
        order = np.argsort(first)  # distinct rows in order of first occurrence
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        self.unique = np.ascontiguousarray(b[first[order]])
        self.counts = counts[order]
        self.max_copies = int(self.counts.max())
        self.useful = self.unique.shape[0] <= 0.8 * self.n and self.max_copies <= max_copies
        inv = rank[inverse.ravel()]
        # groups[u, c] = position of the c-th copy of distinct row u (ascending), -1 padding
        pos_sorted = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.groups = np.full((self.unique.shape[0], self.max_copies), -1, dtype=np.int64)
        col = np.arange(self.n) - np.repeat(starts, self.counts)
        self.groups[inv[pos_sorted], col] = pos_sorted

    def topk(self, queries, k: int, *, device: str | None = "cpu",
             memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        q = _as_float32_2d("queries", queries, self.d)
        if not isinstance(k, (int, np.integer)) or k < 1 or k > self.n:
            raise ValueError(f"k must be an integer between 1 and the number of base vectors ({self.n}); got {k}.")
        n_u = self.unique.shape[0]
        ku = min(n_u, int(k) + 1)  # one extra distinct row to see a tie at the boundary
        ui, us = exact_topk(q, self.unique, ku, device=device, memory_bytes=memory_bytes, progress=progress)
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        out_v = np.empty((q.shape[0], k), dtype=np.float32)
        step = max(1, (64 * 1024 ** 2) // max(1, ku * self.max_copies * 8))
        for s0 in range(0, q.shape[0], step):
            gi = self.groups[ui[s0:s0 + step]]                       # [b, ku, c]
            gv = np.broadcast_to(us[s0:s0 + step, :, None], gi.shape)
            b = gi.shape[0]
            gi = gi.reshape(b, -1)
            gv = gv.reshape(b, -1)
            valid = gi >= 0
            keep = valid & (np.cumsum(valid, axis=1) <= k)
            out_i[s0:s0 + b] = gi[keep].reshape(b, k)
            out_v[s0:s0 + b] = gv[keep].reshape(b, k)
        # Distinct rows with exactly equal similarity would interleave their copies by position:
        # recompute those (rare) rows on the full base.
        bad = np.flatnonzero((us[:, 1:] == us[:, :-1]).any(axis=1)) if ku > 1 else np.empty(0, int)
        if bad.size:
            base_rows = np.empty((self.n, self.d), dtype=np.float32)
            valid = self.groups >= 0
            base_rows[self.groups[valid]] = np.repeat(self.unique, self.counts, axis=0)
            ri, rv = exact_topk(q[bad], base_rows, k, device=device, memory_bytes=memory_bytes)
            out_i[bad], out_v[bad] = ri, rv
        return out_i, out_v
