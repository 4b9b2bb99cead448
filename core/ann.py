"""Approximate image-side search for large anchor sets: a FAISS IVF index with an exact re-rank.

ASIF step 1–2 (``../shared/papers/asif.md`` section 2: "cosine similarities to the N anchors, keep
the top k") costs one similarity per anchor and query. At paper scale (1.6M pairs) that is most of
the time of classifying a picture, so above :data:`ANN_MIN_ANCHORS` distinct anchor images the
model's image-side search (:meth:`core.asif.AsifModel.search_index`) goes through an
:class:`AnnIndex`:

1. the distinct anchor images (one image with several captions is searched once) are indexed by a
   FAISS ``IndexIVFScalarQuantizer`` (8-bit codes: a quarter of the float32 memory) with
   ``nlist ≈ 2·sqrt(U)`` lists, trained on a seeded sample;
2. a query probes ``nprobe`` lists and keeps a shortlist of ``shortlist · k_distinct + 64`` rows;
3. the shortlist is **re-ranked exactly** against the float32 anchors with
   :func:`core.search.similarity_block` (the same arithmetic as the exact path, so every retained
   similarity is bit-identical to exact search), in the canonical order (similarity desc, position
   asc), then expanded to every copy of each image.

The only approximation is which rows reach the shortlist; :func:`measure` gives recall@k against
exact search on a sample and the speed ratio, and :func:`prediction_agreement` the share of
identical classifications. Why IVF and not HNSW: on clustered synthetic data (100,000 × 768, k =
400) HNSW-SQ8 reached recall 0.993 at 1.5× the exact speed but took 74 s to build on this 2-core
machine (minutes at 10⁶), while IVF builds in seconds per 10⁵ rows and its recall is set by
``nprobe``; see docs/SCALING.md for the measured frontier.

An index is built once per anchor set and settings and saved under ``AnnSettings.folder`` (a
workspace's folder) with ``faiss.write_index``; later opens read it memory-mapped
(``faiss.IO_FLAG_MMAP``), so its codes live in the page cache, not in the process heap.

Public API
    ``AnnSettings``: threshold, folder, ``nprobe``, ``shortlist``.
    ``image_search_index(anchors [N, d], settings)`` -> an ``ExactIndex`` or an ``AnnIndex``.
    ``AnnIndex(anchors, settings).topk(queries [Q, d], k)`` -> ``(indices [Q, k], sims [Q, k])``.
    ``measure(index, queries, k)`` -> recall@k, seconds of both paths, speed ratio.
    ``prediction_agreement(predictions_a, predictions_b)`` -> fraction equal.
    ``report(model, queries, prompts, prompt_classes)`` -> None (exact search) or recall, speed, agreement.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.arrays import as_float32_2d
from core.search import (DEFAULT_MEMORY_BYTES, ExactIndex, canonical_order, distinct_rows, exact_topk,
                         recall_at_k, similarity_block)

ProgressFn = Callable[[float, str], None]

#: Distinct anchor images from which the image side uses an :class:`AnnIndex`: below it, whole
#: classifications gain nothing (exact search is compute-bound GEMM tiles, the re-rank gathers
#: ~1,000 rows per query). Measured by ``bench/scale.py``: docs/RESULTS.md, "## Paper scale".
ANN_MIN_ANCHORS = 100_000
#: Probed lists per query and shortlist factor (shortlist = factor · distinct rows needed + 64).
DEFAULT_NPROBE = 32
DEFAULT_SHORTLIST = 1.25
#: Queries re-ranked together: their shortlists' union is scored by one product.
RERANK_GROUP = 16
INDEX_FORMAT = "ivfsq8-v1"


@dataclass(frozen=True)
class AnnSettings:
    """How the image side may use FAISS. ``min_anchors``: distinct anchor images from which it does
    (``None`` never); ``folder``: where built indexes are saved and memory-mapped from (``None``:
    kept in memory only); ``nlist`` (default ≈ 2·sqrt(U)), ``nprobe``, ``shortlist``: see the module
    docstring; ``seed`` for the training sample."""

    min_anchors: int | None = ANN_MIN_ANCHORS
    folder: str | None = None
    nlist: int | None = None
    nprobe: int = DEFAULT_NPROBE
    shortlist: float = DEFAULT_SHORTLIST
    seed: int = 0


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise ValueError("FAISS is not installed: pip install faiss-cpu") from None
    return faiss


def _checked(base, distinct) -> np.ndarray:
    """``base`` as C-contiguous float32 with finite values. With ``distinct`` known (the model
    passes its own, already checked, anchors) a C-contiguous float32 array is taken as it is: at 1.6M
    rows the finiteness check alone reads 4.9 GB and allocates a 1.2 GB mask."""
    if distinct is not None and isinstance(base, np.ndarray) and base.dtype == np.float32 \
            and base.ndim == 2 and base.flags.c_contiguous:
        return base
    return as_float32_2d("anchors", base)


def default_nlist(n_distinct: int) -> int:
    """Inverted lists for ``n_distinct`` rows: ≈ 2·sqrt(U), at least 1, at most U // 40."""
    return int(max(1, min(n_distinct // 40, round(2 * math.sqrt(n_distinct)))))


def fingerprint(base: np.ndarray, rows: np.ndarray) -> str:
    """A short hex digest of ``base[rows]`` (``base [N, d]`` float32, ``rows [U]``): shape, 16
    probe columns of every row and every 97th row in full. Names a saved index; a changed anchor
    set gets another name."""
    h = hashlib.sha256(f"{(rows.size, base.shape[1])}".encode())
    probe = np.unique(np.linspace(0, base.shape[1] - 1, 16).astype(int))
    h.update(np.ascontiguousarray(base[np.ix_(rows, probe)]).tobytes())
    h.update(np.ascontiguousarray(base[rows[::97]]).tobytes())
    return h.hexdigest()[:16]


class AnnIndex:
    """Top-k inner products over a fixed base ``[N, d]`` through a FAISS IVF-SQ8 index of its
    distinct rows and an exact re-rank; the same ``topk`` interface as :class:`core.search.ExactIndex`
    (results in canonical order; retained similarities bit-identical to exact search).

    ``built`` tells whether this call built the index (False: opened from ``settings.folder``);
    ``path`` is the saved file (None when kept in memory); ``build_seconds`` the build or open time."""

    def __init__(self, base, settings: AnnSettings | None = None, *,
                 distinct: tuple[np.ndarray, np.ndarray] | None = None,
                 progress: ProgressFn | None = None):
        self.settings = settings or AnnSettings()
        self.base = _checked(base, distinct)
        first, inverse = distinct if distinct is not None else distinct_rows(self.base)
        self.n, self.d = self.base.shape
        self.has_copies = first.size < self.n
        self.first = np.asarray(first, dtype=np.int64)          # distinct row u is base[first[u]]
        self.n_distinct = int(self.first.size)
        self.inverse = np.asarray(inverse, dtype=np.int64)      # base row i is distinct row inverse[i]
        self.counts = np.bincount(inverse, minlength=first.size)
        self.packed = np.argsort(inverse, kind="stable")       # copies of row u: packed[starts[u]:…]
        self.starts = np.cumsum(self.counts) - self.counts
        self._rarest_cumsum = np.cumsum(np.sort(self.counts))
        self.nlist = int(self.settings.nlist or default_nlist(first.size))
        started = time.perf_counter()
        self.path, self.index, self.built = self._open_or_build(progress)
        self.build_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------ building
    def _open_or_build(self, progress: ProgressFn | None):
        faiss = _faiss()
        path = None
        if self.settings.folder is not None:
            name = f"{INDEX_FORMAT}-{fingerprint(self.base, self.first)}-nlist{self.nlist}-seed{self.settings.seed}.faiss"
            path = Path(self.settings.folder) / name
            if path.is_file():
                try:
                    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
                    if index.ntotal == self.n_distinct and index.d == self.d:
                        return path, index, False
                except RuntimeError:
                    pass  # unreadable (e.g. cut short): rebuilt below
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(self.d), self.d, self.nlist,
                                              faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        u = self.n_distinct
        rng = np.random.default_rng(self.settings.seed)
        n_train = min(u, 40 * self.nlist)
        sample = self.base[self.first if n_train == u else self.first[np.sort(rng.choice(u, n_train, replace=False))]]
        if progress:
            progress(0.0, f"training the FAISS index ({self.nlist} lists)")
        index.train(sample)
        step = 65_536
        for r0 in range(0, u, step):
            index.add(self.base[self.first[r0:r0 + step]])
            if progress:
                progress(min(1.0, (r0 + step) / u), "adding anchors to the FAISS index")
        if path is None:
            return None, index, True
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            faiss.write_index(index, str(tmp))
            os.replace(tmp, path)
        except (OSError, RuntimeError):   # a read-only or full disk: keep the index in memory
            if tmp.is_file():
                tmp.unlink()
            return None, index, True
        del index
        return path, faiss.read_index(str(path), faiss.IO_FLAG_MMAP), True

    # ------------------------------------------------------------------ search
    def distinct_rows_needed(self, k: int) -> int:
        """Distinct rows that surely hold the top-``k`` positions (the m best rows have at least as
        many copies as the m rarest), plus one to see a tie at the boundary."""
        m = int(np.searchsorted(self._rarest_cumsum, k)) + 1
        return min(self.n_distinct, m + 1)

    def shortlist_size(self, k: int) -> int:
        """Rows kept from the FAISS search for the exact re-rank."""
        return min(self.n_distinct, int(math.ceil(self.settings.shortlist * self.distinct_rows_needed(k))) + 64)

    def topk(self, queries, k: int, *, device: str | None = "cpu",
             memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: ProgressFn | None = None,
             ) -> tuple[np.ndarray, np.ndarray]:
        """``(indices [Q, k] int64, similarities [Q, k] float32)`` like :func:`core.search.exact_topk`
        (``device`` and ``memory_bytes`` are accepted for the same signature; FAISS runs on CPU)."""
        q = as_float32_2d("queries", queries, self.d)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n:
            raise ValueError(f"k must be an integer between 1 and the number of base vectors ({self.n}); got {k}.")
        k = int(k)
        ku = self.distinct_rows_needed(k)
        r = self.shortlist_size(k)
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=int(min(self.settings.nprobe, self.nlist)))
        out_i = np.empty((q.shape[0], k), dtype=np.int64)
        out_v = np.empty((q.shape[0], k), dtype=np.float32)
        # queries of one coarse list share most of their shortlists: re-ranked side by side, the
        # union their product covers is smaller (docs/RESULTS.md, "Figures behind code constants")
        _, lists = self.index.quantizer.search(q, 1)
        order = np.argsort(lists[:, 0], kind="stable")
        step = max(RERANK_GROUP, (2 ** 26 // max(1, r * 8)) // RERANK_GROUP * RERANK_GROUP)
        for q0 in range(0, q.shape[0], step):
            rows = order[q0:q0 + step]
            qs = q[rows]
            _, cand = self.index.search(qs, r, params=params)
            ui, us = self._rerank(qs, cand, ku)
            out_i[rows], out_v[rows] = self._expand(ui, us, k)
            short = np.flatnonzero(np.isneginf(us[:, -1]))      # probed lists held too few rows
            if short.size:
                out_i[rows[short]], out_v[rows[short]] = exact_topk(qs[short], self.base, k)
            if progress:
                progress(min(1.0, (q0 + step) / q.shape[0]), "approximate image search")
        return out_i, out_v

    def _rerank(self, qs: np.ndarray, cand: np.ndarray, ku: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact similarities of each query's shortlist ``cand [b, r]`` (-1 = none); the best ``ku``
        distinct rows per query in canonical order ``([b, ku], [b, ku])``."""
        b, r = cand.shape
        idx = np.empty((b, ku), dtype=np.int64)
        val = np.empty((b, ku), dtype=np.float32)
        for g0 in range(0, b, RERANK_GROUP):
            c = cand[g0:g0 + RERANK_GROUP]
            union = np.unique(c[c >= 0])
            sims = similarity_block(qs[g0:g0 + RERANK_GROUP], self.base[self.first[union]])  # [g, |union|]
            cols = np.searchsorted(union, np.maximum(c, 0))
            v = np.take_along_axis(sims, cols, 1)
            v[c < 0] = -np.inf
            rows = np.where(c >= 0, c, self.n_distinct)                           # padding sorts last
            rows, v = canonical_order(rows, v)
            idx[g0:g0 + RERANK_GROUP], val[g0:g0 + RERANK_GROUP] = rows[:, :ku], v[:, :ku]
        return idx, val

    def _expand(self, ranked: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every copy (anchor position) of each query's ranked distinct rows, canonical order, first k."""
        if not self.has_copies:
            return ranked[:, :k], sims[:, :k]
        ranked = np.minimum(ranked, self.n_distinct - 1)
        counts = self.counts[ranked]                                   # [b, ku]
        width = int(counts.sum(axis=1).max())
        flat_counts = counts.ravel()
        total = int(flat_counts.sum())
        offset = np.arange(total) - np.repeat(np.cumsum(flat_counts) - flat_counts, flat_counts)
        positions = self.packed[np.repeat(self.starts[ranked.ravel()], flat_counts) + offset]
        per_query = counts.sum(axis=1)
        slot = np.arange(total) - np.repeat(np.cumsum(per_query) - per_query, per_query)
        query = np.repeat(np.arange(ranked.shape[0]), per_query)
        pos = np.full((ranked.shape[0], width), self.n, dtype=np.int64)
        val = np.full((ranked.shape[0], width), -np.inf, dtype=np.float32)
        pos[query, slot], val[query, slot] = positions, np.repeat(sims.ravel(), flat_counts)
        pos, val = canonical_order(pos, val)
        return pos[:, :k], val[:, :k]


def image_search_index(anchors, settings: AnnSettings | None = None, *,
                       distinct: tuple[np.ndarray, np.ndarray] | None = None,
                       progress: ProgressFn | None = None) -> ExactIndex | AnnIndex:
    """The image-side search index of an ASIF model over ``anchors [N, d]``: an :class:`AnnIndex`
    from ``settings.min_anchors`` distinct rows (default :data:`ANN_MIN_ANCHORS`), else the exact
    :class:`core.search.ExactIndex`. ``distinct``: ``(first, inverse)`` of
    :func:`core.search.distinct_rows` when known (a model opened from its saved arrays), so the
    1.6M rows are not grouped again."""
    settings = settings or AnnSettings()
    base = _checked(anchors, distinct)
    if settings.min_anchors is None or base.shape[0] < settings.min_anchors:
        return ExactIndex(base)
    first, inverse = distinct if distinct is not None else distinct_rows(base)
    if first.size < settings.min_anchors:
        return ExactIndex(base)
    return AnnIndex(base, settings, distinct=(first, inverse), progress=progress)


def measure(index: AnnIndex, queries, k: int, *, sample: int = 200, seed: int = 0) -> dict:
    """Recall@k of ``index`` against exact search on a seeded sample of ``queries [Q, d]``, and the
    seconds of both paths on that sample: ``{"recall", "k", "n_queries", "ann_seconds",
    "exact_seconds", "speedup", "nprobe", "nlist", "shortlist"}``. Exact search runs over the
    distinct rows (as :class:`core.search.ExactIndex` does), so the ratio is against the best exact path."""
    q = as_float32_2d("queries", queries, index.d)
    rng = np.random.default_rng(seed)
    if q.shape[0] > sample:
        q = q[np.sort(rng.choice(q.shape[0], sample, replace=False))]
    t0 = time.perf_counter()
    ai, _ = index.topk(q, k)
    t1 = time.perf_counter()
    ei, _ = ExactIndex(index.base).topk(q, k)
    t2 = time.perf_counter()
    return {"recall": recall_at_k(np.sort(ai, axis=1), np.sort(ei, axis=1)), "k": int(k),
            "n_queries": int(q.shape[0]), "ann_seconds": t1 - t0, "exact_seconds": t2 - t1,
            "speedup": (t2 - t1) / max(t1 - t0, 1e-9), "nprobe": index.settings.nprobe,
            "nlist": index.nlist, "shortlist": index.shortlist_size(k)}


def prediction_agreement(predictions_a, predictions_b) -> float:
    """Fraction of pictures classified the same by two models (e.g. ANN vs exact image search)."""
    a, b = np.asarray(predictions_a).ravel(), np.asarray(predictions_b).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two non-empty prediction arrays of the same length; got {a.size} and {b.size}.")
    return float(np.mean(a == b))


def report(model, queries, prompt_embeddings, prompt_classes, *, n_classes: int | None = None,
           sample: int = 200, seed: int = 0) -> dict | None:
    """What a model's image search costs in accuracy, for the app: ``None`` when ``model``
    (:class:`core.asif.AsifModel`) searches its anchor images exactly; otherwise :func:`measure` on
    a seeded sample of ``queries [Q, d]`` (e.g. the labeled pictures) plus ``"agreement"``, the share
    of that sample classified the same through the index and by exact search (:func:`prediction_agreement`),
    and ``"n_distinct"`` / ``"nlist"`` / ``"nprobe"`` of the index."""
    index = model.image_index()         # after an edit: the opened model's index, searched over the live rows
    if not isinstance(index, AnnIndex):
        return None
    q = as_float32_2d("queries", queries, index.d)
    if q.shape[0] > sample:
        q = q[np.sort(np.random.default_rng(seed).choice(q.shape[0], sample, replace=False))]
    out = measure(index, q, model.k, sample=sample, seed=seed)
    exact = model.with_exact_image_search()                            # the same arrays, searched exactly
    fast = model.classify(q, prompt_embeddings, prompt_classes, n_classes=n_classes).predictions
    slow = exact.classify(q, prompt_embeddings, prompt_classes, n_classes=n_classes).predictions
    out.update(agreement=prediction_agreement(fast, slow), n_distinct=index.n_distinct)
    return out
