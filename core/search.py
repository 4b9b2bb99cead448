"""Top-k inner-product search: exact chunked matmul + top-k (CPU / CUDA) and FAISS backends.

Everything here works on L2-normalised float32 arrays, so inner product = cosine similarity.

Public API
----------
``exact_topk(queries [Q, d], base [N, d], k)`` -> ``(indices [Q, k] int64, similarities [Q, k] float32)``
    Exact, memory-bounded (a block of ``memory_bytes`` for the similarity tile), deterministic:
    results are sorted by similarity descending and **ties are broken by the lower base index**
    (the canonical order every other module relies on, so incremental and full recomputes agree).
``ExactIndex(base).topk(queries, k)``
    The same results for a base searched many times (an ASIF model's anchors): validated once,
    and rows that repeat (one image with 5 captions) are searched once (``DedupIndex``).
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

from core.arrays import as_float32_2d

ProgressFn = Callable[[float, str], None]

DEFAULT_MEMORY_BYTES = 256 * 1024 ** 2
TIE_EXTRA = 16
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")


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
    """``a [m, d] @ b [n, d].T`` as float32 numpy. Both operands are padded to at least
    ``MIN_GEMM_ROWS`` rows so the BLAS GEMM kernel (not GEMV) runs. An entry can still differ in the
    last bit from the same entry of a product of another shape or thread count (how often:
    docs/RESULTS.md, "Figures behind code constants"), so the edit engine never compares such
    values for exact ties: duplicate anchors take their twin's stored similarity
    (:class:`core.edits.neighbours.NeighbourLists`)."""
    at = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    bt = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    with torch.no_grad(), _threads_for(max(a.shape[0], MIN_GEMM_ROWS) * max(b.shape[0], MIN_GEMM_ROWS) * a.shape[1]):
        out = _pad_rows(at) @ _pad_rows(bt).T
    return out[:a.shape[0], :b.shape[0]].numpy().copy()


def _block_max(sims: torch.Tensor, blocks: int) -> torch.Tensor:
    """``[r, n // blocks]``: entry j is the maximum of the strided block {j, j+m, …, j+(blocks-1)m}
    (m = n // blocks), an elementwise max of the ``blocks`` contiguous column slices (blocks ≥ 2)."""
    m = sims.shape[1] // blocks
    bmax = torch.maximum(sims[:, :m], sims[:, m:2 * m])
    for j in range(2, blocks):
        torch.maximum(bmax, sims[:, j * m:(j + 1) * m], out=bmax)
    return bmax


def _block_topk(sims: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact unsorted top-``kk`` per row; on long rows faster than ``torch.topk`` alone.

    The first ``B * M`` columns are split into ``B`` contiguous slices of width M; "block" b is the
    strided set {b, b+M, …, b+(B-1)M}, whose maximum is an elementwise max of the slices (cheap,
    vectorised). The kk blocks with the largest maxima hold every element of the top-kk: the kk
    largest block maxima are kk distinct elements ≥ the kk-th block maximum t, so the kk-th element
    is ≥ t, and an element > t only lives in a block whose max is > t, all of which are kept. The
    last ``n mod B`` columns are always candidates. Exact ties at the boundary are resolved by the
    caller's tie check. B = 8 once rows are ≥ 128·kk long and 4 from 32·kk (measured:
    docs/RESULTS.md, "Figures behind code constants"); shorter rows go straight to ``torch.topk``."""
    qn, n = sims.shape
    blocks = 8 if n >= 128 * kk else 4 if n >= 32 * kk else 1
    if blocks == 1:
        return torch.topk(sims, kk, dim=1, sorted=False)
    m = n // blocks
    _, bi = torch.topk(_block_max(sims, blocks), kk, dim=1, sorted=False)
    cols = (bi[:, None, :] + (torch.arange(blocks, device=sims.device) * m)[None, :, None]).reshape(qn, -1)
    if n > blocks * m:
        cols = torch.cat([cols, torch.arange(blocks * m, n, device=sims.device).expand(qn, -1)], 1)
    v, j = torch.topk(sims.gather(1, cols), kk, dim=1, sorted=False)
    return v, cols.gather(1, j)


def _above(sims: torch.Tensor, threshold: torch.Tensor, blocks: int = 8,
           ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Candidates ``(values, columns) [r, w]`` (padding: -inf) that include every element of
    ``sims [r, n]`` above its row's ``threshold [r]``, the k-th best value of the tiles searched
    before; None when more than a quarter of the columns could qualify (a top-k is cheaper then).

    Later tiles of a long base rarely hold many new top-k values, so instead of a top-k over the
    tile this keeps the strided blocks (as in :func:`_block_topk`) whose maximum beats the
    threshold, found by one comparison and a ``nonzero`` compaction. Elements equal to the
    threshold are dropped: the k values kept so far already include one that large, so the result
    is still a valid top-k by value, and ties at the k-th place are the caller's tie check."""
    r, n = sims.shape
    m = n // blocks
    if m == 0:
        return None
    rows, block = (_block_max(sims, blocks) > threshold[:, None]).nonzero(as_tuple=True)
    per_row = torch.bincount(rows, minlength=r)
    width = int(per_row.max())
    if width * blocks > n // 4:
        return None
    slot = torch.arange(rows.numel(), device=sims.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
    chosen = torch.full((r, max(width, 1)), -1, dtype=torch.long, device=sims.device)
    chosen[rows, slot] = block
    cols = (chosen[:, None, :] + (torch.arange(blocks, device=sims.device) * m)[None, :, None]).reshape(r, -1)
    tail = torch.arange(blocks * m, n, device=sims.device).expand(r, -1)
    cols = torch.cat([cols.clamp(min=0), tail], 1)
    values = sims.gather(1, cols)
    values[:, :chosen.shape[1] * blocks].masked_fill_((chosen < 0).repeat(1, blocks), float("-inf"))
    return values, cols


def _merge_topk(parts: list[tuple[torch.Tensor, torch.Tensor]], kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``kk`` (values, indices) per row of candidate pieces laid side by side."""
    if len(parts) == 1 and parts[0][0].shape[1] == kk:
        return parts[0]
    values, sel = torch.topk(torch.cat([v for v, _ in parts], 1), kk, dim=1, sorted=False)
    return values, torch.cat([i for _, i in parts], 1).gather(1, sel)


def canonical_order(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by value descending, then index ascending. Returns (indices, values).

    One sort of a composite int64 key: the high 32 bits are the float32 value's bits made monotone
    (negative floats have their magnitude bits flipped; -0.0 counts as 0.0), the low 32 bits are
    ``2**32 - 1 - index``. As fast as a plain value sort, and as fast with many ties (duplicate
    anchors) as without.

    >>> canonical_order(np.array([[7, 3, 5]]), np.array([[0.5, -0.25, 0.5]], dtype=np.float32))
    (array([[5, 7, 3]]), array([[ 0.5 ,  0.5 , -0.25]], dtype=float32))
    """
    idx = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= 2 ** 32):
        raise ValueError("canonical_order needs indices in [0, 2**32).")
    vals = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)) + 0.0  # -0.0 -> 0.0
    bits = vals.view(torch.int32)
    monotone = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    _, order = torch.sort(monotone * 2 ** 32 + (2 ** 32 - 1 - idx), dim=-1, descending=True)
    return idx.gather(-1, order).numpy(), vals.gather(-1, order).numpy()


def _canonical_rows_exact(q: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = similarity_block(q, base)
    idx = np.broadcast_to(np.arange(base.shape[0]), sims.shape)
    order = np.lexsort((idx, -sims), axis=-1)[:, :k]
    return order.astype(np.int64), np.take_along_axis(sims, order, -1).astype(np.float32)


#: Tiles hold at least this many query rows: thin tiles starve the GEMM kernel (measured:
#: docs/RESULTS.md, "Figures behind code constants").
MIN_QUERY_ROWS = 1024
QUERY_TILE_ROWS = 2048


def tile_shape(n_queries: int, n_base: int, memory_bytes: int = DEFAULT_MEMORY_BYTES,
               min_cols: int = 1) -> tuple[int, int]:
    """``(query rows, base rows)`` of one similarity tile holding at most ``memory_bytes``: the
    whole base against as many queries as fit when that is at least ``MIN_QUERY_ROWS``, else
    ``QUERY_TILE_ROWS`` queries against as many base rows as fit (at least ``min_cols``).

    >>> tile_shape(10_000, 35_000), tile_shape(10_000, 1_000_000)
    ((1917, 35000), (2048, 32768))
    """
    max_floats = max(memory_bytes // 4, 1)
    if n_base * MIN_QUERY_ROWS <= max_floats:
        return max(1, min(n_queries, max_floats // n_base)), n_base
    qb = min(n_queries, QUERY_TILE_ROWS)
    return qb, min(n_base, max(min_cols, max_floats // qb))


def _check_k(k, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k > n:
        raise ValueError(f"k must be an integer between 1 and the number of base vectors ({n}); got {k}.")


def exact_topk(queries, base, k: int, *, device: str | None = "cpu",
               memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` [Q, d] against ``base`` [N, d].

    Computed as chunked ``matmul`` + ``topk`` over tiles of :func:`tile_shape`, so that at most
    ``memory_bytes`` of similarities exist at once (1M anchors x 10k queries fit in a few hundred MB
    besides the inputs). On CUDA the base moves to the GPU once when one tile spans it, else it
    streams block by block; the queries stream in blocks.

    Returns ``(indices [Q, k] int64, similarities [Q, k] float32)``, each row sorted by similarity
    descending with ties broken by the lower base index. ``k`` must be in ``1..N``.
    """
    q = as_float32_2d("queries", queries)
    b = as_float32_2d("base", base, q.shape[1])
    _check_k(k, b.shape[0])
    return _exact_topk_checked(q, b, int(k), resolve_device(device), memory_bytes, progress)


def _exact_topk_checked(q: np.ndarray, b: np.ndarray, k: int, dev: str,
                        memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_topk` on inputs already validated (contiguous finite float32, 1 <= k <= N)."""
    n = b.shape[0]
    kk = min(n, k + TIE_EXTRA)
    n_q = q.shape[0]
    qb, nb = tile_shape(n_q, n, memory_bytes, min_cols=kk)
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
            pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # candidates not merged yet
            for a0 in range(0, n, nb):
                blk = bt[a0:a0 + nb]
                if blk.device.type != dev.split(":")[0]:
                    blk = blk.to(dev, non_blocking=True)
                sims = (qt @ _pad_rows(blk).T)[:n_rows, :blk.shape[0]]
                # the kk-th best value merged so far bounds the final kk-th best from below
                found = None if best_v is None else _above(sims, best_v.amin(dim=1))
                v, i = found if found is not None else _block_topk(sims, min(kk, sims.shape[1]))
                pending.append((v, i + a0))
                if best_v is None or sum(c.shape[1] for c, _ in pending) >= kk or a0 + nb >= n:
                    best_v, best_i = _merge_topk(([(best_v, best_i)] if best_v is not None else []) + pending, kk)
                    pending = []
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
    b = as_float32_2d("base", base)
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
    q = as_float32_2d("queries", queries, index.d)
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


def _probe_hashes(base: np.ndarray) -> np.ndarray:
    """One uint64 per row of ``base [N, d]`` (float32), mixed from the bits of 16 probe columns:
    bit-identical rows hash equal; different rows almost never do."""
    probe = np.unique(np.linspace(0, base.shape[1] - 1, 16).astype(int))
    bits = np.ascontiguousarray(base[:, probe]).view(np.uint32)
    hashes = np.zeros(base.shape[0], dtype=np.uint64)
    for j in range(bits.shape[1]):
        hashes = (hashes ^ bits[:, j]) * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2**64
    return hashes


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    as_bytes = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    _, first, inverse = np.unique(as_bytes.ravel(), return_index=True, return_inverse=True)
    return first, inverse.ravel()


def distinct_rows(base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group bit-identical rows of ``base [N, d]``.

    Returns ``(first [U], inverse [N])``: ``first`` the position of each distinct row's first
    occurrence (ascending) and ``inverse`` which distinct row every position holds, so
    ``base[first][inverse] == base``. Rows are first grouped by a hash of 16 probe columns (fast),
    and the grouping is verified on every column; when rows of one group differ anywhere, all
    columns are compared.

    >>> distinct_rows(np.array([[1, 2], [3, 4], [1, 2]], dtype=np.float32))
    (array([0, 1]), array([0, 1, 0]))
    """
    _, first, inverse = np.unique(_probe_hashes(base), return_index=True, return_inverse=True)
    representative = first[inverse]
    bits = np.ascontiguousarray(base).view(np.uint8)
    step = max(1, 2 ** 22 // bits.shape[1])  # verify the bytes in cache-sized blocks of rows
    if not all(np.array_equal(bits[r0:r0 + step], bits[representative[r0:r0 + step]])
               for r0 in range(0, base.shape[0], step)):
        first, inverse = _unique_rows(base)
    order = np.argsort(first)  # distinct rows in order of first occurrence
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first[order], rank[inverse]


def dedup_index(base: np.ndarray, *, max_distinct_fraction: float = 0.8, min_rows: int = 1000,
                ) -> DedupIndex | None:
    """A :class:`DedupIndex` over ``base [N, d]`` (validated float32) when it pays, else None
    (search ``base`` itself): it pays from ``min_rows`` rows of which at most
    ``max_distinct_fraction`` are distinct."""
    if base.shape[0] < min_rows:
        return None
    # bit-identical rows hash equal, so there are at least as many distinct rows as distinct
    # hashes: one cheap pass settles the common case of (nearly) all-distinct rows
    hashes = np.sort(_probe_hashes(base))
    if 1 + np.count_nonzero(hashes[1:] != hashes[:-1]) > max_distinct_fraction * base.shape[0]:
        return None
    first, inverse = distinct_rows(base)
    if first.size > max_distinct_fraction * base.shape[0]:
        return None
    return DedupIndex(base, first, inverse)


class ExactIndex:
    """Exact top-k over a fixed base, built once and searched many times: the base is validated
    once, and when many rows repeat (:func:`dedup_index`) each distinct row is searched once.
    ``ExactIndex(base [N, d]).topk(queries, k)`` equals ``exact_topk(queries, base, k)``."""

    def __init__(self, base):
        self.base = as_float32_2d("base", base)
        self.dedup = dedup_index(self.base)

    def topk(self, queries, k: int, *, device: str | None = "cpu",
             memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(indices [Q, k] int64, similarities [Q, k] float32)``, as :func:`exact_topk`."""
        if self.dedup is not None:
            return self.dedup.topk(queries, k, device=device, memory_bytes=memory_bytes, progress=progress)
        q = as_float32_2d("queries", queries, self.base.shape[1])
        _check_k(k, self.base.shape[0])
        return _exact_topk_checked(q, self.base, int(k), resolve_device(device), memory_bytes, progress)


class DedupIndex:
    """Exact top-k over a base with many identical rows (e.g. Flickr8k: 5 captions per image, so
    every anchor image appears 5 times): similarities are computed once per distinct row, then each
    distinct row is expanded into its copies. Results are identical to :func:`exact_topk` on the
    full base (same canonical order: similarity desc, position asc).

    ``DedupIndex(base [N, d])`` (``first``, ``inverse`` from :func:`distinct_rows` when already
    known); ``.topk(queries, k)`` -> ``(indices [Q, k], sims [Q, k])``. :func:`dedup_index` builds
    one only when it pays.
    """

    def __init__(self, base, first: np.ndarray | None = None, inverse: np.ndarray | None = None):
        b = as_float32_2d("base", base)
        self.n, self.d = b.shape
        if first is None or inverse is None:
            first, inverse = distinct_rows(b)
        self.base = b
        self.unique = np.ascontiguousarray(b[first])
        self.counts = np.bincount(inverse, minlength=first.size)
        # The copies of distinct row u are packed[starts[u] : starts[u] + counts[u]], ascending.
        self.packed = np.argsort(inverse, kind="stable")
        self.starts = np.cumsum(self.counts) - self.counts
        self._rarest_counts_cumsum = np.cumsum(np.sort(self.counts))

    def distinct_rows_needed(self, k: int) -> int:
        """How many distinct rows surely hold the top-``k`` positions, plus one to see a tie at the
        boundary: the m best distinct rows have at least as many copies as the m rarest rows, so m
        rows suffice once those rarest counts add up to ``k``. Flickr8k (5 copies each, k = 800):
        161 instead of 801.

        >>> DedupIndex(np.repeat(np.eye(4, dtype=np.float32), 5, axis=0)).distinct_rows_needed(8)
        3
        """
        m = int(np.searchsorted(self._rarest_counts_cumsum, k)) + 1
        return min(self.unique.shape[0], m + 1)

    def _copies(self, ranked: np.ndarray, sims: np.ndarray):
        """Every copy of each query's ranked distinct rows ``[b, ku]``, query by query, flat:
        ``(positions, similarities, query, slot)`` with ``slot`` the copy's place in its query's list."""
        counts = self.counts[ranked].ravel()                      # copies per (query, rank)
        n_copies = int(counts.sum())
        copy_offset = np.arange(n_copies) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = self.packed[np.repeat(self.starts[ranked.ravel()], counts) + copy_offset]
        per_query = counts.reshape(ranked.shape).sum(axis=1)
        slot = np.arange(n_copies) - np.repeat(np.cumsum(per_query) - per_query, per_query)
        query = np.repeat(np.arange(ranked.shape[0]), per_query)
        return positions, np.repeat(sims.ravel(), counts), query, slot

    def _expand(self, ranked: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` copies of each query's ranked distinct rows (no two rows tie exactly)."""
        positions, values, _, slot = self._copies(ranked, sims)
        keep = slot < k
        return positions[keep].reshape(-1, k), values[keep].reshape(-1, k)

    def _expand_tied(self, ranked: np.ndarray, sims: np.ndarray, k: int):
        """Like :meth:`_expand` for queries where distinct rows tie exactly: copies of tied rows
        interleave by position, so all copies are sorted by (similarity desc, position asc).
        Returns the top-``k`` and a mask of the queries that need the full base: those whose k-th
        value equals their last ranked row's, which may tie with an unranked row at a lower position."""
        positions, values, query, slot = self._copies(ranked, sims)
        width = int(slot.max()) + 1
        pos = np.full((ranked.shape[0], width), self.n, dtype=np.int64)
        val = np.full((ranked.shape[0], width), -np.inf, dtype=np.float32)
        pos[query, slot], val[query, slot] = positions, values
        order = np.lexsort((pos, -val), axis=-1)[:, :k]
        out_i, out_v = np.take_along_axis(pos, order, -1), np.take_along_axis(val, order, -1)
        return out_i, out_v, out_v[:, -1] == sims[:, -1]

    def topk(self, queries, k: int, *, device: str | None = "cpu",
             memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        q = as_float32_2d("queries", queries, self.d)
        _check_k(k, self.n)
        k = int(k)
        ku = self.distinct_rows_needed(k)
        dev = resolve_device(device)
        ui, us = _exact_topk_checked(q, self.unique, ku, dev, memory_bytes, progress)
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        out_v = np.empty((q.shape[0], k), dtype=np.float32)
        step = max(1, 2 ** 18 // (ku * int(self.counts.max())))  # cache-sized chunks of copies
        for s0 in range(0, q.shape[0], step):
            out_i[s0:s0 + step], out_v[s0:s0 + step] = self._expand(ui[s0:s0 + step], us[s0:s0 + step], k)
        # About 1 % of queries (k = 800 on Flickr8k) see two distinct rows at exactly the same
        # similarity; their copies interleave by position.
        tied = np.flatnonzero((us[:, 1:] == us[:, :-1]).any(axis=1)) if ku > 1 else np.empty(0, int)
        redo = [tied[:0]]
        for s0 in range(0, tied.size, step):
            rows = tied[s0:s0 + step]
            out_i[rows], out_v[rows], unsure = self._expand_tied(ui[rows], us[rows], k)
            redo.append(rows[unsure])
        redo = np.concatenate(redo)
        if redo.size:
            out_i[redo], out_v[redo] = _exact_topk_checked(q[redo], self.base, k, dev, memory_bytes)
        return out_i, out_v


class RowSubsetIndex:
    """Top-k among chosen rows without a copy of them: the rows ``rows`` (sorted, distinct) of a
    base searched by ``index`` (``n_base`` rows, positions ``0..n_base-1``) followed by the small
    block ``extra [m, d]`` (positions ``n_base..n_base+m-1``, searched exactly). Results are
    positions into ``rows``, in the canonical order (similarity desc, position asc), as ``index``
    would give over the gathered rows ``concat(base, extra)[rows]``. The base is searched
    ``k + (rows it leaves out)`` deep and the left-out rows dropped (the edit session's way,
    :mod:`core.edits.neighbours`), so this pays while few base rows are left out.

    >>> base = np.eye(3, dtype=np.float32)
    >>> ix = RowSubsetIndex(ExactIndex(base), 3, np.array([[0.6, 0.8, 0]], np.float32), np.array([1, 2, 3]))
    >>> ix.topk(np.array([[1, 0.5, 0]], np.float32), 2)[0]
    array([[2, 0]])
    """

    def __init__(self, index, n_base: int, extra: np.ndarray, rows: np.ndarray):
        self.index, self.n_base = index, int(n_base)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.live_base = int(np.searchsorted(self.rows, self.n_base))
        self.extra_rows = self.rows[self.live_base:] - self.n_base
        self.extra = ExactIndex(extra[self.extra_rows]) if self.extra_rows.size else None
        self.kept = np.zeros(self.n_base, dtype=bool)
        self.kept[self.rows[:self.live_base]] = True

    @property
    def n(self) -> int:
        return self.rows.size

    def topk(self, queries, k: int, *, device: str | None = "cpu",
             memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(positions [Q, k] into rows, similarities [Q, k] float32)``."""
        _check_k(k, self.n)
        k = int(k)
        parts = []
        if self.live_base:
            deep = min(self.n_base, k + self.n_base - self.live_base)
            idx, sims = self.index.topk(queries, deep, device=device, memory_bytes=memory_bytes,
                                        progress=progress)
            take = min(k, self.live_base)
            order = np.argsort(~self.kept[idx], axis=1, kind="stable")[:, :take]
            idx, sims = np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1)
            parts.append((np.searchsorted(self.rows[:self.live_base], idx), sims))
        if self.extra is not None:
            idx, sims = self.extra.topk(queries, min(k, self.extra_rows.size), device=device,
                                        memory_bytes=memory_bytes)
            parts.append((idx + self.live_base, sims))
        pos = np.concatenate([p for p, _ in parts], axis=1)
        sims = np.concatenate([s for _, s in parts], axis=1)
        order = np.lexsort((pos, -sims), axis=-1)[:, :k]
        return np.take_along_axis(pos, order, 1), np.take_along_axis(sims, order, 1)
