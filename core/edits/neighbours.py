"""Neighbour lists: every query's top-(k+m) live anchors, kept up to date as pairs come and go.

:class:`AnchorRows` stores the anchor pairs (rows never move); :class:`NeighbourLists` holds, for a
fixed set of queries (evaluation images, or text candidates) and one side of the anchors, the
first k+m live anchors in canonical order (similarity desc, row asc: ties between duplicate
anchors break as :func:`core.search.exact_topk` does). :meth:`NeighbourLists.add` and
:meth:`NeighbourLists.remove` return how each top-k changed, as flattened
``(query, row, signed weight)`` triples (:data:`Diff`): all that
:class:`core.edits.session.EditSession` needs to update its scores. ASIF paper, section 2, steps 1-3.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from core.arrays import StackedRows
from core.asif import signed_power64
from core.search import ExactIndex, RowSubsetIndex, canonical_order, similarity_block

#: Columns whose bytes key the index of bit-identical embeddings (:meth:`AnchorRows.twins`).
TWIN_PROBE_COLUMNS = 16


class SharedRows(StackedRows):
    """One side of the anchor rows: the model's ``[n, d]`` float32 array, shared (never copied nor
    written), then the rows added during the session in a separate block that grows: a
    :class:`core.arrays.StackedRows` whose added block is written in place (``shape`` is
    ``(capacity, d)``). At 1.6M pairs × 768 dimensions a copy of both sides would be 9.8 GB: the
    session shares the model's arrays instead.

    >>> rows = SharedRows(np.eye(2, dtype=np.float32))
    >>> rows.grow(3); rows[np.array([2])] = [[5, 5]]
    >>> rows[np.array([1, 2])], rows.shape[0] >= 3
    (array([[0., 1.],
           [5., 5.]], dtype=float32), True)
    >>> np.shares_memory(rows[:2], rows.base), np.shares_memory(rows[np.array([0])], rows.base)  # a slice is a view
    (True, False)
    """

    #: rows the added block holds at least when it first grows (it then doubles)
    MIN_EXTRA = 1024

    def __init__(self, base: np.ndarray):
        base = np.asarray(base, dtype=np.float32)
        super().__init__(base, np.zeros((16, base.shape[1]), dtype=np.float32))
        self.n0 = base.shape[0]

    def grow(self, capacity: int) -> None:
        """Room for at least ``capacity`` rows (only the added block is copied)."""
        if capacity <= self.shape[0]:
            return
        rows = max(capacity - self.n0, 2 * self.extra.shape[0], self.MIN_EXTRA)
        new = np.zeros((rows, self.base.shape[1]), dtype=np.float32)
        new[:self.extra.shape[0]] = self.extra
        self.extra = new

    def __deepcopy__(self, memo) -> "SharedRows":
        """A copy for another session (``LiveModel.influence`` works on one): the shared rows are
        still shared (they never change), only the added block is copied."""
        new = object.__new__(SharedRows)
        new.base, new.n0, new.extra = self.base, self.n0, self.extra.copy()
        memo[id(self)] = new
        return new

    def __setitem__(self, key, values) -> None:
        if isinstance(key, slice):
            idx = np.arange(*key.indices(self.shape[0]))
        else:
            idx = np.asarray(key)
            idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64, copy=False)
        if idx.size and idx.min() < self.n0:
            raise ValueError("the model's anchor rows are shared and never change; only added rows are written.")
        self.extra[idx - self.n0] = values


class AnchorRows:
    """Growable anchor storage: the image and text embeddings, id and metadata of every pair the
    session ever held, one row each. Rows never move (undo puts a pair back in its row; added pairs
    get new rows at the end); ``alive`` marks live pairs and ``id_to_row`` finds a pair by id.
    :meth:`twins` finds the rows that share a row's exact image (or text) embedding."""

    def __init__(self, img: np.ndarray, txt: np.ndarray, ids: np.ndarray, metadata):
        n = img.shape[0]
        self.img, self.txt = SharedRows(img), SharedRows(txt)   # the model's arrays, not copied
        cap = self.img.shape[0]
        self.ids = np.full(cap, -1, dtype=np.int64)
        self.ids[:n] = ids
        self.alive = np.zeros(cap, dtype=bool)
        self.alive[:n] = True
        self.size = n
        self.metadata = list(metadata) if metadata is not None else None
        self.id_to_row = {int(i): r for r, i in enumerate(ids)}
        self._twin_index: dict[str, dict[bytes, list[int]]] = {}  # per side, built on first use

    def __deepcopy__(self, memo) -> "AnchorRows":
        """A copy for another session (``LiveModel.influence`` works on one): the model's rows and
        the per-pair metadata dicts (never changed) are shared, the bookkeeping copied; the twin
        index is built again on first use. At 1.6M pairs a deep copy took most of 20 s."""
        import copy

        new = object.__new__(AnchorRows)
        memo[id(self)] = new
        new.img, new.txt = copy.deepcopy(self.img, memo), copy.deepcopy(self.txt, memo)
        new.ids, new.alive, new.size = self.ids.copy(), self.alive.copy(), self.size
        new.metadata = None if self.metadata is None else list(self.metadata)
        new.id_to_row = dict(self.id_to_row)
        new._twin_index = {}
        return new

    def emb(self, side: str) -> SharedRows:
        """The ``"img"`` or ``"txt"`` embeddings (all allocated rows)."""
        return self.img if side == "img" else self.txt

    def _probe(self, side: str, rows: np.ndarray) -> list[bytes]:
        emb = self.emb(side)
        cols = np.unique(np.linspace(0, emb.shape[1] - 1, TWIN_PROBE_COLUMNS).astype(int))
        step = 65_536                                   # gathered in blocks: never a copy of a side
        return [row.tobytes() for r0 in range(0, rows.size, step)
                for row in np.ascontiguousarray(emb[rows[r0:r0 + step]][:, cols])]

    def _index_rows(self, side: str, rows: np.ndarray) -> None:
        index = self._twin_index[side]
        for r, key in zip(rows.tolist(), self._probe(side, rows)):
            index.setdefault(key, []).append(r)

    def _index_all(self, side: str) -> None:
        """The twin index of every row held: the probe columns read a block of rows at a time
        straight from the shared array (a view, no gather of whole rows: at 1.6M rows of 1,280
        floats that gather moved 8 GB), the added rows as :meth:`_index_rows` does."""
        emb, index = self.emb(side), self._twin_index[side]
        cols = np.unique(np.linspace(0, emb.shape[1] - 1, TWIN_PROBE_COLUMNS).astype(int))
        n0 = min(emb.n0, self.size)
        for r0 in range(0, n0, 65_536):
            keys = np.ascontiguousarray(emb.base[r0:min(n0, r0 + 65_536), cols])
            for r, key in enumerate(keys, start=r0):
                index.setdefault(key.tobytes(), []).append(r)
        if self.size > n0:
            self._index_rows(side, np.arange(n0, self.size))

    def twins(self, side: str, row: int) -> np.ndarray:
        """Other rows, live or not, whose ``side`` embedding is bit-identical to ``row``'s (one
        Flickr8k image has five captions, so five rows share it).

        >>> rows = AnchorRows(np.array([[1, 0], [0, 1], [1, 0]], np.float32), np.eye(3, dtype=np.float32),
        ...                   np.arange(3), None)
        >>> rows.twins("img", 0), rows.twins("txt", 0)
        (array([2]), array([], dtype=int64))
        """
        if side not in self._twin_index:
            self._twin_index[side] = {}
            self._index_all(side)
        found = [t for t in self._twin_index[side].get(self._probe(side, np.asarray([row]))[0], ())
                 if t != row]
        if not found:
            return np.empty(0, dtype=np.int64)
        found = np.asarray(found, dtype=np.int64)
        emb = self.emb(side)
        return found[(emb[found] == emb[row]).all(axis=1)]

    @property
    def n_alive(self) -> int:
        return int(self.alive[:self.size].sum())

    def alive_rows(self) -> np.ndarray:
        return np.flatnonzero(self.alive[:self.size])

    def append(self, img, txt, ids, metadata) -> np.ndarray:
        m = img.shape[0]
        if self.size + m > self.img.shape[0]:
            for side in (self.img, self.txt):
                side.grow(self.size + m)
            cap = self.img.shape[0]
            ids_new = np.full(cap, -1, dtype=np.int64)
            ids_new[:self.size] = self.ids[:self.size]
            self.ids = ids_new
            alive_new = np.zeros(cap, dtype=bool)
            alive_new[:self.size] = self.alive[:self.size]
            self.alive = alive_new
        rows = np.arange(self.size, self.size + m)
        self.img[rows], self.txt[rows], self.ids[rows] = img, txt, ids
        self.alive[rows] = True
        for r, i in zip(rows, ids):
            self.id_to_row[int(i)] = int(r)
        if self.metadata is not None:
            self.metadata.extend(dict(x) for x in (metadata or [{} for _ in range(m)]))
        self.size += m
        for side in self._twin_index:
            self._index_rows(side, rows)
        return rows


#: Edits of at most this many pairs go one pair at a time (binary search + shift in the sorted lists,
#: O(touched queries) besides the shift); larger ones merge or filter whole lists at once.
#: Positions looked at after the binary search for a twin's place in a list.
TWIN_WINDOW = 16
SEQUENTIAL_MAX = 8
#: Similarity columns (every query against one anchor row) kept for reuse: an undo, a redo and the
#: text side of an edit ask again for the columns the edit just computed.
COLUMN_CACHE_BYTES = 32 * 1024 ** 2
#: Up to this many anchors, :meth:`NeighbourLists.topk_similarities` computes their similarities with
#: every holding query (one product); beyond, scanning the lists is cheaper (the crossover:
#: docs/RESULTS.md, "Figures behind code constants").
PRODUCT_MAX_ANCHORS = 256

#: How top-k sets changed: ``(query, row, signed raw weight, squared-norm change)`` of every anchor
#: that entered (weight w, norm change +w²) or left (-w, -w²) a top-k, flattened; additive across
#: consecutive edits. (The norm change is not ``weight * |weight|``: a negative similarity's
#: weight is negative whether it enters or leaves.)
Diff = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _change(qs: np.ndarray, rows: np.ndarray, sims: np.ndarray, p: float, sign: int) -> Diff:
    """The :data:`Diff` of anchor ``rows`` entering (``sign`` +1) or leaving (-1) the top-k of
    queries ``qs``, at similarities ``sims``."""
    w = signed_power64(sims, p)
    return qs, rows, sign * w, sign * w * w


def concat_diffs(parts: Sequence[Diff]) -> Diff:
    """One :data:`Diff` of several."""
    if not parts:
        e = np.empty(0, dtype=np.int64)
        return e, e, np.empty(0), np.empty(0)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(4))  # type: ignore[return-value]


def _move_in_rows(arrays: Sequence[np.ndarray], qs: np.ndarray, start: np.ndarray, stop: np.ndarray,
                  by: int) -> None:
    """In every C-contiguous 2-D array, move ``a[q, start:stop]`` to ``a[q, start + by:stop + by]``
    for each row ``q`` of ``qs`` (overlap-safe). A byte move through a memoryview per row avoids
    most of a numpy slice assignment's overhead (measured: docs/RESULTS.md, "Figures behind code
    constants").

    >>> a = np.arange(8).reshape(2, 4)
    >>> _move_in_rows([a], np.array([1]), np.array([1]), np.array([3]), 1); a
    array([[0, 1, 2, 3],
           [4, 5, 5, 6]])
    """
    for a in arrays:
        width, size = a.shape[1], a.itemsize
        view = memoryview(a).cast("B")
        for q, i, j in zip(qs.tolist(), start.tolist(), stop.tolist()):
            if j > i:
                src = (q * width + i) * size
                dst = src + by * size
                view[dst:dst + (j - i) * size] = view[src:src + (j - i) * size]


class NeighbourLists:
    """Top-(k+m) live-anchor lists of a fixed query set over one side (images or texts) of the
    anchor rows (paper step 2, "keep the top k", kept with m spare neighbours so edits stay local).

    Invariant: row q of ``rows``/``sims`` holds the first ``length[q]`` live anchors in canonical
    order (similarity desc, row asc); ``k ≤ length[q] ≤ K`` unless fewer than k anchors live.

    :meth:`add` and :meth:`remove` return how the top-k sets changed, as the flattened
    ``(query, anchor row, signed raw weight)`` of every anchor that entered (+) or left (−) a top-k:
    everything the scores and norms need, additive across consecutive edits.
    """

    STATE_FIELDS = ("rows", "sims", "length")

    def __init__(self, queries: np.ndarray, side: str, anchors: AnchorRows, k: int, K: int, p: float,
                 state: Mapping[str, np.ndarray] | None = None, search=None):
        self.q = queries
        self.side = side
        self.anchors = anchors
        self.k, self.K, self.p = k, K, p
        self.recomputed = 0
        self._scratch = np.zeros(0, dtype=bool)
        self._columns: dict[int, np.ndarray] = {}
        self._column_cap = max(16, COLUMN_CACHE_BYTES // (4 * queries.shape[0]))
        self._exact: tuple | None = None  # ((array id, rows held), RowSubsetIndex): see _index
        self._base_search = search
        if state is not None and state["rows"].shape == (queries.shape[0], K):
            self.rows, self.sims, self.length = (np.array(state[f]) for f in self.STATE_FIELDS)
            self._build_postings()
        else:
            self._full_init()

    def state(self) -> dict[str, np.ndarray]:
        """The lists as plain arrays (``rows``, ``sims``, ``length``), to restore with ``state=``."""
        return {f: getattr(self, f) for f in self.STATE_FIELDS}

    def emb(self) -> SharedRows:
        return self.anchors.emb(self.side)

    def _full_init(self):
        """The first lists: every query's top-(k+m) through :meth:`_index` (the model's own index,
        e.g. :class:`core.ann.AnnIndex`, over its rows: no copy of them)."""
        found, sims, K = self._search(np.arange(self.q.shape[0]), self.anchors.alive_rows())
        nq = self.q.shape[0]
        self.rows = np.full((nq, self.K), -1, dtype=np.int64)
        self.sims = np.full((nq, self.K), -np.inf, dtype=np.float32)
        self.rows[:, :K] = found
        self.sims[:, :K] = sims
        self.length = np.full(nq, K, dtype=np.int64)
        self._build_postings()

    def _build_postings(self):
        flat = self.rows.ravel()
        valid = flat >= 0
        qid = np.repeat(np.arange(self.rows.shape[0]), self.K)[valid]
        flat = flat[valid]
        order = np.argsort(flat, kind="stable")
        self.post_q = qid[order]
        self.post_ptr = np.searchsorted(flat[order], np.arange(self.anchors.size + 1))
        self.post_cap = self.anchors.size
        self.extra: dict[int, list] = {}

    def queries_holding(self, rows: np.ndarray) -> np.ndarray:
        """Queries whose current list may contain any of ``rows`` (a superset; callers verify)."""
        parts = []
        for r in rows:
            r = int(r)
            if r < self.post_cap:
                parts.append(self.post_q[self.post_ptr[r]:self.post_ptr[r + 1]])
            ex = self.extra.get(r)
            if ex:
                parts.append(np.asarray(ex, dtype=np.int64))
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate(parts))

    def _note(self, qs: np.ndarray, rows: np.ndarray):
        """Record that queries ``qs[i]`` now hold ``rows[i]`` (postings for rows added later)."""
        order = np.argsort(rows, kind="stable")
        rows, qs = rows[order], qs[order]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if rows.size else rows
        for r, chunk in zip(rows[starts].tolist(), np.split(qs, starts[1:])):
            self.extra.setdefault(r, []).extend(chunk.tolist())

    def topk_of(self, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rows[qs, :self.k].copy(), self.sims[qs, :self.k].copy()

    def similarities(self, qs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[len(qs), len(rows)]`` similarities of queries ``qs`` to anchor ``rows``, bit-identical to
        the lists' entries. When ``qs`` is most of the queries, whole columns are computed (no
        gather of query rows) and kept for reuse; anchor rows never change, so they stay valid."""
        rows = [int(r) for r in rows]
        if all(r in self._columns for r in rows):
            return np.stack([self._columns[r] for r in rows], 1)[qs]
        if 2 * qs.size <= self.q.shape[0]:
            return similarity_block(self.q[qs], self.emb()[rows])
        full = similarity_block(self.q, self.emb()[rows])
        for j, r in enumerate(rows):
            if len(self._columns) >= self._column_cap:
                del self._columns[next(iter(self._columns))]
            self._columns[r] = np.ascontiguousarray(full[:, j])
        return full[qs]

    def _rank(self, qs: np.ndarray, s: np.ndarray, r: int) -> np.ndarray:
        """How many entries of list ``qs[i]`` precede ``(s[i], r)`` in canonical order (binary
        search: O(log K) per query)."""
        lo = np.zeros(qs.size, dtype=np.int64)
        hi = self.length[qs].copy()
        row_start = qs * self.K
        sims, rows = self.sims.ravel(), self.rows.ravel()
        for _ in range(int(self.K).bit_length()):
            open_ = lo < hi
            mid = (lo + hi) // 2
            at = row_start + np.minimum(mid, self.K - 1)
            ms, mr = sims[at], rows[at]
            before = open_ & ((ms > s) | ((ms == s) & (mr < r)))
            lo = np.where(before, mid + 1, lo)
            hi = np.where(open_ & ~before, mid, hi)
        return lo

    def _diff(self, qs, old_r, old_s, new_r, new_s) -> Diff:
        """The change between the old and new top-k sets of queries ``qs`` (vectorised with a
        reusable boolean scratch table)."""
        cap = self.anchors.img.shape[0] + 1
        step = max(1, min(len(qs), (8 * 1024 ** 2) // cap))
        if self._scratch.size < step * cap:
            self._scratch = np.zeros(step * cap, dtype=bool)
        table = self._scratch
        parts = []
        for s0 in range(0, len(qs), step):
            o, n = old_r[s0:s0 + step], new_r[s0:s0 + step]
            base = (np.arange(o.shape[0]) * cap)[:, None]
            lo = base + np.where(o >= 0, o, cap - 1)
            ln = base + np.where(n >= 0, n, cap - 1)
            table[lo] = True
            came = (n >= 0) & ~table[ln]
            table[lo] = False
            table[ln] = True
            gone = (o >= 0) & ~table[lo]
            table[ln] = False
            gq, gj = np.nonzero(gone)
            cq, cj = np.nonzero(came)
            parts.append(_change(qs[s0 + gq], o[gq, gj], old_s[s0 + gq, gj], self.p, -1))
            parts.append(_change(qs[s0 + cq], n[cq, cj], new_s[s0 + cq, cj], self.p, 1))
        return concat_diffs(parts)

    def _index(self) -> RowSubsetIndex:
        """An index over every anchor row held, live or not (made again after rows are appended):
        the model's own index over its rows (``search``; else an :class:`core.search.ExactIndex`
        of them), the added block searched exactly. Nothing is copied: at 1.6M pairs a copy of one
        side would be 8 GB."""
        emb = self.emb()
        key = (id(emb), self.anchors.size)
        if self._exact is None or self._exact[0] != key:
            base = self._base_search() if self._base_search is not None else ExactIndex(emb.base)
            self._exact = (key, RowSubsetIndex(base, emb.n0, emb.extra, np.arange(self.anchors.size)))
        return self._exact[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_exact"] = None  # a copy (influence works on one) rebuilds it on first use
        return state

    def _search(self, qs: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Exact top-(k+m) of queries ``qs`` among the anchor rows ``alive`` (sorted): (rows, sims, K).
        One search over every row held, deep enough to pass every row that is not in ``alive``,
        which are then dropped: no copy of the live rows is gathered (180 MB at 35,000 x 1,280)."""
        K = min(self.K, alive.size)
        n = self.anchors.size
        idx, sims = self._index().topk(self.q[qs], min(n, K + n - alive.size))
        live = np.zeros(n, dtype=bool)
        live[alive] = True
        order = np.argsort(~live[idx], axis=1, kind="stable")[:, :K]
        return np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1), K

    def _recompute(self, qs: np.ndarray) -> Diff:
        """Refill the lists of ``qs`` exactly from every live anchor (their slack ran out)."""
        old_r, old_s = self.topk_of(qs)
        alive = self.anchors.alive_rows()
        found, sims, K = self._search(qs, alive)
        self.rows[qs] = -1
        self.sims[qs] = -np.inf
        self.rows[qs, :K] = found
        self.sims[qs, :K] = sims
        self.length[qs] = K
        self._note(np.repeat(qs, K), found.ravel())
        self.recomputed += qs.size
        return self._diff(qs, old_r, old_s, *self.topk_of(qs))

    # ------------------------------------------------------------------ removal preview
    def _dropped(self, removed: np.ndarray) -> np.ndarray:
        """Boolean lookup over anchor rows, True at ``removed``; its last slot (row -1, an empty
        list entry) stays False."""
        dropped = np.zeros(self.anchors.img.shape[0] + 1, dtype=bool)
        dropped[removed] = True
        return dropped

    def topk_without(self, qs: np.ndarray, removed: np.ndarray, n_alive_after: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(rows [n, k], sims [n, k])`` that queries ``qs`` would have if the live anchor
        rows ``removed`` were dropped, changing nothing (-1 / -inf pad a list shorter than k).
        A list keeps its canonical order when anchors leave it, so the new top-k is its first k
        entries that are not removed; a list with fewer left (its slack ran out) is searched
        again exactly among the live anchors minus ``removed``, as :meth:`remove` would."""
        dropped = self._dropped(removed)
        mask = dropped[self.rows[qs]]
        order = np.argsort(mask, axis=1, kind="stable")[:, :self.k]
        r = np.take_along_axis(self.rows[qs], order, 1)
        s = np.take_along_axis(self.sims[qs], order, 1)
        left = self.length[qs] - mask.sum(axis=1)
        blank = np.arange(self.k)[None, :] >= left[:, None]
        r[blank], s[blank] = -1, -np.inf
        short = np.flatnonzero((left < self.k) & (left < n_alive_after))
        if short.size:
            alive = self.anchors.alive_rows()
            found, sims, K = self._search(qs[short], alive[~dropped[alive]])
            kk = min(self.k, K)
            r[short], s[short] = -1, -np.inf
            r[short, :kk], s[short, :kk] = found[:, :kk], sims[:, :kk]
        return r, s

    def removal_diff(self, removed: np.ndarray, n_alive_after: int) -> tuple[Diff, int]:
        """The :data:`Diff` that :meth:`remove` would return for the live anchor rows ``removed``
        (``n_alive_after`` live anchors would remain), computed without changing anything, and how
        many lists would be searched again because their slack runs out.

        Only lists whose top-k holds a removed anchor change. In each, the removed entries of the
        top-k leave and the first entries of the slack that are not removed move up into it
        (positions shift, order does not); a list left with fewer than k entries is diffed against
        its exact top-k (:meth:`topk_without`)."""
        dropped = self._dropped(removed)
        qs = self.queries_holding(removed)
        mask = dropped[self.rows[qs]]
        hit = mask[:, :self.k].any(axis=1)
        qs, mask = qs[hit], mask[hit]
        length = self.length[qs]
        left = length - mask.sum(axis=1)
        short = (left < self.k) & (left < n_alive_after)
        pos = np.arange(self.K)[None, :]
        rank = np.cumsum(~mask, axis=1, dtype=np.int32) - 1  # place of a kept entry once they leave
        regular = ~short[:, None]
        gone = mask & (pos < self.k) & regular
        came = ~mask & (pos >= self.k) & (rank < self.k) & (pos < length[:, None]) & regular
        gq, gj = np.nonzero(gone)
        cq, cj = np.nonzero(came)
        parts = [_change(qs[gq], self.rows[qs[gq], gj], self.sims[qs[gq], gj], self.p, -1),
                 _change(qs[cq], self.rows[qs[cq], cj], self.sims[qs[cq], cj], self.p, 1)]
        sq = qs[short]
        if sq.size:
            parts.append(self._diff(sq, *self.topk_of(sq), *self.topk_without(sq, removed, n_alive_after)))
        return concat_diffs(parts), int(sq.size)

    # ------------------------------------------------------------------ removal
    def remove(self, removed: np.ndarray, n_alive_after: int) -> Diff:
        """Drop the (already dead) anchor rows ``removed``."""
        if removed.size <= SEQUENTIAL_MAX:
            return concat_diffs([self._remove_one(int(r), n_alive_after) for r in removed])
        qs = self.queries_holding(removed)
        sub_rows = self.rows[qs]
        mask = np.isin(sub_rows, removed)
        hit = mask.any(axis=1)
        qs, sub_rows, mask = qs[hit], sub_rows[hit], mask[hit]
        changed = qs[mask[:, :self.k].any(axis=1)]
        old_r, old_s = self.topk_of(changed)
        order = np.argsort(mask, axis=1, kind="stable")
        sub_sims = np.take_along_axis(self.sims[qs], order, 1)
        sub_rows = np.take_along_axis(sub_rows, order, 1)
        new_len = self.length[qs] - mask.sum(axis=1)
        tail = np.arange(self.K)[None, :] >= new_len[:, None]
        sub_rows[tail] = -1
        sub_sims[tail] = -np.inf
        self.rows[qs], self.sims[qs], self.length[qs] = sub_rows, sub_sims, new_len
        short = qs[(new_len < self.k) & (new_len < n_alive_after)]
        diff = self._diff(changed, old_r, old_s, *self.topk_of(changed))
        return concat_diffs([diff, self._recompute(short)]) if short.size else diff

    def _remove_one(self, r: int, n_alive_after: int) -> Diff:
        """Drop anchor row ``r``: find it by binary search, shift the rest of each list up by one;
        r leaves the top-k and the (k+1)-th enters."""
        qs = self.queries_holding(np.asarray([r]))
        if qs.size == 0:
            return concat_diffs([])
        pos = self._rank(qs, self.similarities(qs, np.asarray([r]))[:, 0], r)
        held = (pos < self.length[qs]) & (self.rows[qs, np.minimum(pos, self.K - 1)] == r)
        # a similarity one bit off the stored one (another BLAS) would hide r from the binary
        # search: look for it directly in the lists where the search did not land on it
        missed = np.flatnonzero(~held)
        if missed.size:
            hit = self.rows[qs[missed]] == r
            found = hit.any(axis=1)
            pos[missed[found]] = hit[found].argmax(axis=1)
            held[missed[found]] = True
        qs, pos = qs[held], pos[held]
        s = self.sims[qs, pos]
        length = self.length[qs]
        top = pos < self.k
        promoted = qs[top & (length > self.k)]
        diff = [_change(qs[top], np.full(int(top.sum()), r), s[top], self.p, -1),
                _change(promoted, self.rows[promoted, self.k], self.sims[promoted, self.k], self.p, 1)]
        _move_in_rows((self.rows, self.sims), qs, pos + 1, length, -1)
        self.rows[qs, length - 1] = -1
        self.sims[qs, length - 1] = -np.inf
        self.length[qs] = length - 1
        short = qs[(length - 1 < self.k) & (length - 1 < n_alive_after)]
        if short.size:
            diff.append(self._recompute(short))
        return concat_diffs(diff)

    # ------------------------------------------------------------------ addition
    def add(self, new_rows: np.ndarray, n_alive_before: int) -> Diff:
        """Insert live rows ``new_rows`` (fresh or revived)."""
        if new_rows.size <= SEQUENTIAL_MAX:
            return concat_diffs([self._add_one(int(r), n_alive_before + i, new_rows[i + 1:])
                                 for i, r in enumerate(new_rows)])
        s = self.similarities(np.arange(self.q.shape[0]), new_rows)  # [nq, m]
        blocked = np.zeros(s.shape, dtype=bool)
        for j, r in enumerate(new_rows.tolist()):
            first = np.flatnonzero(np.isin(new_rows, self.anchors.twins(self.side, r)))
            if first.size and first[0] < j:  # a twin earlier in this batch: the very same values
                s[:, j] = s[:, first[0]]
            blocked[:, j] = self._tie_with_twins(s[:, j], r, new_rows)
        L = self.length
        last = np.clip(L - 1, 0, None)
        last_sim = self.sims[np.arange(len(L)), last]
        last_row = self.rows[np.arange(len(L)), last]
        covering = ((L >= n_alive_before) & (L < self.K))[:, None]
        above = (s > last_sim[:, None]) | ((s == last_sim[:, None]) & (new_rows[None, :] < last_row[:, None]))
        enter = (covering | above) & ~blocked
        qs = np.flatnonzero(enter.any(axis=1))
        ent = enter[qs]
        add_rows = np.where(ent, new_rows[None, :], -1)
        add_sims = np.where(ent, s[qs], -np.inf).astype(np.float32)
        all_rows = np.concatenate([self.rows[qs], add_rows], 1)
        all_sims = np.concatenate([self.sims[qs], add_sims], 1)
        empty = 2 ** 32 - 1  # sorts after every real row at equal (-inf) similarity
        nr, ns = canonical_order(np.where(all_rows < 0, empty, all_rows), all_sims)
        nr, ns = np.where(nr[:, :self.K] == empty, -1, nr[:, :self.K]), ns[:, :self.K]
        old_r, old_s = self.topk_of(qs)
        self.rows[qs], self.sims[qs] = nr, ns
        self.length[qs] = np.minimum(self.K, self.length[qs] + ent.sum(axis=1))
        qq, jj = np.nonzero(ent)
        self._note(qs[qq], new_rows[jj])
        return self._diff(qs, old_r, old_s, *self.topk_of(qs))

    def _tie_with_twins(self, s: np.ndarray, r: int, pending: np.ndarray) -> np.ndarray:
        """Before inserting anchor row ``r`` with similarities ``s [nq]`` (changed in place): in every
        list that holds a live twin of r (a bit-identical embedding), r takes the twin's stored
        similarity, an exact tie as one full product gives (another product's rounding can differ
        in the last bit and break the tie the wrong way). Returns the mask of lists r must stay
        out of: those missing a live twin, which (and so r) ranks after the list's end. Rows in
        ``pending`` (live, not inserted yet) do not count as twins."""
        twins = self.anchors.twins(self.side, r)
        twins = twins[self.anchors.alive[twins] & ~np.isin(twins, pending)]
        blocked = np.zeros(s.shape[0], dtype=bool)
        if twins.size == 0:
            return blocked
        blocked[:] = True
        hq = self.queries_holding(twins)
        if hq.size == 0:
            return blocked
        # a twin sits where the list's similarities are within a few ulps of r's fresh one: binary
        # search there and look at a short window (a full scan of every holding list is the fallback)
        lo = np.zeros(hq.size, dtype=np.int64)
        hi = np.minimum(self.length[hq], self.K).astype(np.int64)
        bound = s[hq] + 4e-7
        while True:
            act = lo < hi
            if not act.any():
                break
            mid = (lo + hi) // 2
            go = act & (self.sims[hq, np.minimum(mid, self.K - 1)] > bound)
            lo, hi = np.where(go, mid + 1, lo), np.where(act & ~go, mid, hi)
        idx = np.minimum(lo[:, None] + np.arange(TWIN_WINDOW)[None, :], self.K - 1)
        hit = np.isin(self.rows[hq[:, None], idx], twins) & (idx < self.length[hq][:, None])
        found = hit.any(axis=1)
        slot = idx[found, hit[found].argmax(axis=1)]
        rest = hq[~found]
        if rest.size:  # not in the window (many exact ties): scan those lists
            full = np.isin(self.rows[rest], twins)
            keep = full.any(axis=1)
            hq = np.concatenate([hq[found], rest[keep]])
            slot = np.concatenate([slot, full[keep].argmax(axis=1)])
        else:
            hq = hq[found]
        s[hq] = self.sims[hq, slot]
        blocked[hq] = False
        return blocked

    def _add_one(self, r: int, n_alive_before: int, pending: np.ndarray) -> Diff:
        """Insert anchor row ``r`` at its canonical place (binary search) in every list it enters,
        shifting the rest down by one; where it enters the top-k, the old k-th leaves. ``pending``:
        rows of the same edit inserted after r."""
        all_q = np.arange(self.q.shape[0])
        s = self.similarities(all_q, np.asarray([r]))[:, 0]
        blocked = self._tie_with_twins(s, r, pending)
        pos = self._rank(all_q, s, r)
        L = self.length
        covering = (L >= n_alive_before) & (L < self.K)  # the list holds every live anchor
        qs = np.flatnonzero(((pos < L) | covering) & ~blocked)
        s, pos, length = s[qs], pos[qs], L[qs]
        top = pos < self.k
        demoted = qs[top & (length >= self.k)]
        diff = [_change(qs[top], np.full(int(top.sum()), r), s[top], self.p, 1),
                _change(demoted, self.rows[demoted, self.k - 1], self.sims[demoted, self.k - 1], self.p, -1)]
        end = np.minimum(length + 1, self.K)
        _move_in_rows((self.rows, self.sims), qs, pos, end - 1, 1)
        self.rows[qs, pos] = r
        self.sims[qs, pos] = s
        self.length[qs] = end
        self.extra.setdefault(r, []).extend(qs.tolist())
        return concat_diffs(diff)

    @staticmethod
    def computes_similarities(n_anchors: int) -> bool:
        """Whether :meth:`topk_similarities` computes the similarities of ``n_anchors`` anchors
        (one product, worth prefetching with the rest of an edit's columns) rather than scanning
        the lists."""
        return n_anchors <= PRODUCT_MAX_ANCHORS

    def topk_similarities(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(query, j, similarity)`` for every query whose top-k holds anchor row ``xs[j]``
        (``xs`` sorted, distinct). For a few anchors the similarities are computed and compared
        with each list's k-th entry (canonical order), one product instead of a scan of the
        lists; for many, the lists are scanned."""
        qs = self.queries_holding(xs)
        if qs.size == 0:
            e = np.empty(0, dtype=np.int64)
            return e, e, np.empty(0, dtype=np.float32)
        if not self.computes_similarities(xs.size):
            lookup = np.full(self.anchors.img.shape[0] + 1, -1, dtype=np.int64)  # row -1 -> slot -1
            lookup[xs] = np.arange(xs.size)
            j = lookup[self.rows[qs, :self.k]]
            qi, slot = np.nonzero(j >= 0)
            return qs[qi], j[qi, slot], self.sims[qs[qi], slot]
        S = self.similarities(qs, xs)
        kth = np.minimum(self.length[qs], self.k) - 1
        # a fresh product may round the last bit differently from the stored lists: take every
        # anchor within a few ulps of the k-th as a candidate, then find it in the list itself
        near = self.anchors.alive[xs][None, :] & (S >= self.sims[qs, kth][:, None] - 4e-7)
        qi, j = np.nonzero(near)
        hit = self.rows[qs[qi], :self.k] == xs[j][:, None]
        held = hit.any(axis=1)
        qi, j = qi[held], j[held]
        return qs[qi], j, self.sims[qs[qi], hit[held].argmax(axis=1)]
