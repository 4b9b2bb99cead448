"""The incremental edit session: an ASIF model under curation, re-scoring a labeled evaluation set
in milliseconds after every edit (removal, addition, undo, redo, what-if).

The session keeps, besides the neighbour lists (:mod:`core.edits.neighbours`), the dense dot
products ``D [Q, P']`` between the evaluation images' and the text candidates' un-normalised sparse
vectors (paper section 2, the ASIF similarity) and their squared norms; an edit adds the change of
each top-k to them, so the predictions after it are exactly those of a full recompute.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from core.arrays import as_float32_2d, l2_normalize
from core.asif import (AsifModel, ClassReducer, ProgressFn, argmax_tolerant, class_candidates,
                       per_class_accuracy, signed_power64, sparse_scores)
from core.edits.influence import Influence, leave_one_out
from core.edits.neighbours import AnchorRows, NeighbourLists


def _scatter_add_rows(D: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                      table: np.ndarray) -> None:
    """``D[rows[i]] += weights[i] * table[:, cols[i]]`` for every i, repeated rows summed: what
    ``np.add.at(D, rows, (table[:, cols] * weights).T)`` does, as one sparse × dense product over the
    distinct columns, with no ``[n, C]`` temporary; faster than a column-by-column ``np.bincount``
    (measured: docs/RESULTS.md, "Figures behind code constants").

    >>> D = np.zeros((3, 2)); table = np.array([[1.0, 10.0], [2.0, 20.0]])
    >>> _scatter_add_rows(D, np.array([0, 2, 0]), np.array([1, 0, 0]), np.array([1.0, 1.0, -0.5]), table); D
    array([[ 9.5, 19. ],
           [ 0. ,  0. ],
           [ 1. ,  2. ]])
    """
    used, col = np.unique(cols, return_inverse=True)
    change = sp.csr_matrix((weights, (rows, col)), shape=(D.shape[0], used.size))
    D += change @ table[:, used].T


@dataclass
class EditResult:
    """Outcome of an edit (or of a what-if, when ``committed`` is False).

    ``accuracy`` overall; ``per_class_accuracy [C]``; ``accuracy_before``; ``predictions [Q]`` after
    the edit (or what-if) and ``predictions_before [Q]``, to score any part of the evaluation set
    (tuning / test); ``n_changed`` predictions that changed; ``n_anchors`` live pairs after the edit; ``elapsed_ms`` wall time of
    the re-scoring; ``kind`` "remove" | "add" | "undo" | "redo"; ``pair_ids`` the pairs involved;
    ``touched_queries`` evaluation images whose sparse vector changed; ``recomputed_queries``
    images recomputed exactly because their slack ran out.
    """
    kind: str
    pair_ids: np.ndarray
    accuracy: float
    accuracy_before: float
    per_class_accuracy: np.ndarray
    predictions: np.ndarray
    predictions_before: np.ndarray
    n_changed: int
    n_anchors: int
    elapsed_ms: float
    touched_queries: int
    recomputed_queries: int
    committed: bool = True

    @property
    def delta(self) -> float:
        """``accuracy - accuracy_before``."""
        return self.accuracy - self.accuracy_before


def _split_state(neighbours: Mapping[str, np.ndarray] | None) -> dict[str, dict[str, np.ndarray]]:
    """``{"img_rows": a, ...}`` -> ``{"img": {"rows": a, ...}}``, keeping only complete sides."""
    sides: dict[str, dict[str, np.ndarray]] = {}
    for key, array in (neighbours or {}).items():
        side, _, name = key.partition("_")
        sides.setdefault(side, {})[name] = array
    return {side: fields for side, fields in sides.items()
            if all(f in fields for f in NeighbourLists.STATE_FIELDS)}


class EditSession:
    """An ASIF model under curation, re-scoring a labeled evaluation set after every edit.

    Parameters
    ----------
    model : AsifModel — the starting anchors, ``k``, ``p`` (and template strategy default).
    eval_image_embeddings : ``[Q, d_img]`` evaluation images.
    eval_labels : ``[Q]`` int class indices.
    prompt_embeddings : ``[P, d_txt]`` text embeddings of the prompts (see
        :func:`core.asif.build_prompts`); ``prompt_classes [P]`` their classes (default one per class).
    class_names : optional names ``[C]``.
    strategy : "mean" | "per-template" (default ``model.template_strategy``).
    slack : m, extra neighbours kept per query (default ``max(16, k // 4)``).
    neighbours : the :meth:`neighbour_state` of a session built from the very same inputs, to skip
        the initial top-(k+m) searches (the caller guarantees the inputs are the same).

    Everything is exact: after any edit, ``predictions`` equal those of
    ``current_model().classify(...)`` (up to ties closer than 1e-9, broken to the lowest class).

    >>> rng = np.random.default_rng(0)
    >>> model = AsifModel(rng.normal(size=(60, 8)), rng.normal(size=(60, 6)), k=5, p=3)
    >>> s = EditSession(model, rng.normal(size=(30, 8)), rng.integers(0, 3, 30), rng.normal(size=(3, 6)))
    >>> r = s.remove([0, 1]); (r.n_anchors, r.committed)
    (58, True)
    >>> bool((s.predictions == s.full_recompute()).all())
    True
    >>> tune = np.arange(30) < 15               # choose on one half, report the other
    >>> best = s.most_harmful(1, eval_mask=tune)[0]
    >>> w = s.what_if_remove([best["pair_id"]])  # nothing committed
    >>> gain = np.mean(w.predictions[tune] == s.labels[tune]) - s.accuracy_on(tune)
    >>> bool(abs(gain - best["loo_delta"]) < 1e-12)    # influence is exact leave-one-out
    True
    >>> s.undo().n_anchors
    60
    """

    def __init__(self, model: AsifModel, eval_image_embeddings, eval_labels, prompt_embeddings,
                 prompt_classes=None, *, class_names: Sequence[str] | None = None,
                 strategy: str | None = None, slack: int | None = None,
                 neighbours: Mapping[str, np.ndarray] | None = None,
                 progress: ProgressFn | None = None):
        self.k, self.p = model.k, model.p
        self.strategy = strategy or model.template_strategy
        q = l2_normalize(as_float32_2d("evaluation image embeddings", eval_image_embeddings,
                                        model.image_embeddings.shape[1]))
        y = np.asarray(eval_labels, dtype=np.int64).ravel()
        if y.shape[0] != q.shape[0]:
            raise ValueError(f"{q.shape[0]} evaluation images but {y.shape[0]} labels.")
        pe = as_float32_2d("prompt embeddings", prompt_embeddings, model.text_embeddings.shape[1])
        pc = np.arange(pe.shape[0]) if prompt_classes is None else np.asarray(prompt_classes, dtype=np.int64)
        n_classes = len(class_names) if class_names is not None else int(max(pc.max(), y.max()) + 1)
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels must be class indices in 0..{n_classes - 1}.")
        self.cand, self.cand_classes = class_candidates(pe, pc, self.strategy, n_classes)
        self.n_classes = n_classes
        self.reducer = ClassReducer(self.cand_classes, n_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.labels = y
        self.eval_images = q
        self.info = dict(model.info)
        self.temperature = model.temperature
        self.anchors = AnchorRows(model.image_embeddings, model.text_embeddings, model.pair_ids, model.metadata)
        self.slack = int(slack if slack is not None else max(16, self.k // 4))
        if self.slack < 1:
            raise ValueError("slack must be at least 1.")
        K = self.k + self.slack
        if progress:
            progress(0.0, "neighbours of the evaluation images")
        saved = _split_state(neighbours)
        # the model's own indexes (FAISS + exact re-rank above core.ann's threshold): no copy, no rebuild
        self.img_side = NeighbourLists(q, "img", self.anchors, self.k, K, self.p, saved.get("img"),
                                       search=lambda: model.search_index("image"))
        if progress:
            progress(0.8, "neighbours of the class prompts")
        self.txt_side = NeighbourLists(self.cand, "txt", self.anchors, self.k, K, self.p, saved.get("txt"),
                                       search=lambda: model.search_index("text"))
        self._full_scores()
        self.history: list[tuple[str, np.ndarray]] = []   # committed edits: (kind, anchor rows)
        self._redo: list[tuple[str, np.ndarray]] = []
        self.accuracy_log: list[float] = [self.accuracy]
        if progress:
            progress(1.0, "ready")

    def neighbour_state(self) -> dict[str, np.ndarray]:
        """The neighbour lists of both sides as ``{"img_rows": ..., "txt_sims": ...}`` plain arrays
        (``np.savez`` them; pass them back as ``neighbours=`` to rebuild this session quickly)."""
        return {f"{side.side}_{name}": array for side in (self.img_side, self.txt_side)
                for name, array in side.state().items()}

    # ------------------------------------------------------------------ scoring
    def _full_scores(self):
        """Dense dot products D [Q, P'] and squared norms from the current lists (exact, float64);
        edits then update them by the change of each top-k."""
        cap = self.anchors.img.shape[0]
        self._cap_B = cap
        A = self._side_matrix(self.img_side, cap)
        B = self._side_matrix(self.txt_side, cap)
        self.D = np.asarray((A @ B.T).toarray(), dtype=np.float64)
        self.na2 = np.asarray(A.multiply(A).sum(axis=1), dtype=np.float64).ravel()
        self.nb2 = np.asarray(B.multiply(B).sum(axis=1), dtype=np.float64).ravel()
        self.Bd = np.asarray(B.toarray(), dtype=np.float64)  # [P', cap] raw text weights
        # how much each squared norm has moved since it was last exact (see _refresh_cancelled)
        self._moved_a, self._moved_b = self.na2.copy(), self.nb2.copy()
        self._rescore()

    def _side_matrix(self, side: NeighbourLists, cap: int) -> sp.csr_matrix:
        kk = np.minimum(side.length, self.k)
        cols = np.arange(self.k)[None, :] < kk[:, None]
        rows = side.rows[:, :self.k]
        vals = np.where(cols, signed_power64(side.sims[:, :self.k], self.p), 0.0)
        r = np.where(cols, rows, 0)
        nq = rows.shape[0]
        indptr = np.arange(0, nq * self.k + 1, self.k)
        m = sp.csr_matrix((vals.ravel(), r.ravel(), indptr), shape=(nq, cap))
        m.sum_duplicates()
        m.eliminate_zeros()
        return m

    @property
    def na(self) -> np.ndarray:
        """Norms ``[Q]`` of the evaluation images' sparse vectors."""
        return np.sqrt(self.na2)

    @property
    def nb(self) -> np.ndarray:
        """Norms ``[P']`` of the text candidates' sparse vectors."""
        return np.sqrt(self.nb2)

    def _scores(self, D: np.ndarray, na2: np.ndarray, nb2: np.ndarray):
        """(candidate scores, class scores, predictions) of dot products ``D`` and squared norms."""
        denom = np.sqrt(na2)[:, None] * np.sqrt(nb2)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(denom > 0, D / np.where(denom > 0, denom, 1.0), 0.0)
        cls = self.reducer(s)
        return s, cls, argmax_tolerant(cls)

    def _rescore(self):
        self.cand_scores, self.class_scores, self.predictions = self._scores(self.D, self.na2, self.nb2)

    @property
    def accuracy(self) -> float:
        """Current overall accuracy on the evaluation set."""
        return float(np.mean(self.predictions == self.labels))

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """Current accuracy per true class ``[C]``."""
        return per_class_accuracy(self.predictions, self.labels, self.n_classes)

    def eval_index(self, eval_mask=None) -> np.ndarray:
        """Sorted indices of the evaluation images that ``eval_mask`` selects: a boolean ``[Q]``
        array or an array of image indices; ``None`` selects every image. An empty selection, a
        mask of the wrong length or an index out of range raises ``ValueError``."""
        Q = self.labels.size
        if eval_mask is None:
            return np.arange(Q)
        m = np.asarray(eval_mask)
        if m.dtype == bool:
            if m.shape != (Q,):
                raise ValueError(f"the evaluation mask has shape {m.shape}; expected ({Q},).")
            idx = np.flatnonzero(m)
        elif np.issubdtype(m.dtype, np.integer):
            idx = np.unique(m.ravel()).astype(np.int64)
            if idx.size and (idx[0] < 0 or idx[-1] >= Q):
                raise ValueError(f"evaluation image indices must lie in 0..{Q - 1}.")
        else:
            raise ValueError("the evaluation mask must be a boolean array or an array of indices.")
        if idx.size == 0:
            raise ValueError("the evaluation mask selects no image.")
        return idx

    def accuracy_on(self, eval_mask) -> float:
        """Current accuracy on the evaluation images ``eval_mask`` selects (see :meth:`eval_index`),
        e.g. the tuning or the test part."""
        idx = self.eval_index(eval_mask)
        return float(np.mean(self.predictions[idx] == self.labels[idx]))

    def per_class_accuracy_on(self, eval_mask) -> np.ndarray:
        """Current accuracy per true class ``[C]`` on the selected images (NaN for a class with no
        selected image)."""
        idx = self.eval_index(eval_mask)
        return per_class_accuracy(self.predictions[idx], self.labels[idx], self.n_classes)

    @property
    def n_anchors(self) -> int:
        """Live anchor pairs."""
        return self.anchors.n_alive

    @property
    def pair_ids(self) -> np.ndarray:
        """Ids of the live pairs, in anchor-row order."""
        return self.anchors.ids[self.anchors.alive_rows()].copy()

    def _grow_B(self):
        cap = self.anchors.img.shape[0]
        if cap != self.Bd.shape[1]:
            nb = np.zeros((self.Bd.shape[0], cap))
            nb[:, :self.Bd.shape[1]] = self.Bd
            self.Bd = nb

    # ------------------------------------------------------------------ core update
    def _apply(self, kind: str, rows: np.ndarray) -> tuple[int, int]:
        """Apply "remove" or "add" (rows already in the anchor rows); update D, norms, predictions.
        Returns (evaluation images whose top-k changed, images recomputed for lack of slack)."""
        self._grow_B()
        rec0 = self.img_side.recomputed + self.txt_side.recomputed
        # what NeighbourLists.remove / add are told: live pairs after a removal, before an addition
        n_alive = self.anchors.n_alive - rows.size if kind == "remove" else self.anchors.n_alive
        self.anchors.alive[rows] = kind == "add"
        # The lists of both sides change first (the text side's: a few candidates, cheap) ...
        pp, xt, wt, nt = getattr(self.txt_side, kind)(rows, n_alive)
        changed, col = np.unique(xt, return_inverse=True)  # anchors the text side exchanged
        if kind == "add" and self.img_side.computes_similarities(changed.size):
            # the image side needs every image's similarity to the new rows, and step 2 below
            # those to the changed anchors: one pass over the images for both
            self.img_side.similarities(np.arange(self.labels.size), np.union1d(rows, changed))
        qq, xx, ww, nw = getattr(self.img_side, kind)(rows, n_alive)
        # ... then 1) image side: rows of D, with the OLD text weights Bd.
        if qq.size:
            _scatter_add_rows(self.D, qq, xx, ww, self.Bd)
            self.na2 += np.bincount(qq, weights=nw, minlength=self.na2.size)
            self._moved_a += np.bincount(qq, weights=np.abs(nw), minlength=self.na2.size)
        # 2) text side: columns of D, with the NEW image side.
        if pp.size:
            delta = np.zeros((self.cand.shape[0], changed.size))
            np.add.at(delta, (pp, col), wt)
            hq, hj, hs = self.img_side.topk_similarities(changed)
            if hq.size:
                _scatter_add_rows(self.D, hq, hj, signed_power64(hs, self.p), delta)
            np.add.at(self.Bd, (pp, xt), wt)
            self.nb2 += np.bincount(pp, weights=nt, minlength=self.nb2.size)
            self._moved_b += np.bincount(pp, weights=np.abs(nt), minlength=self.nb2.size)
        self._refresh_cancelled()
        self._rescore()
        rec = self.img_side.recomputed + self.txt_side.recomputed - rec0
        return int(np.unique(qq).size), int(rec)

    #: A squared norm that has moved by more than this many times its value since it was last exact
    #: (a dominant pair added, then removed) has lost digits to cancellation, and so may its scores:
    #: the row (image, cheap: one list) or column (prompt: every list holding its anchors, so only
    #: from a larger ratio) is then recomputed exactly, which also steadies the worst-case undo
    #: (measured: docs/RESULTS.md, "Figures behind code constants").
    CANCELLATION = 1e2
    CANCELLATION_TEXT = 1e6

    def _refresh_cancelled(self) -> None:
        """Recompute exactly the rows / columns of D whose norms suffered cancellation."""
        k = self.k
        rows = np.flatnonzero(self._moved_a > self.CANCELLATION * np.maximum(self.na2, 1e-300))
        if rows.size:
            n = np.minimum(self.img_side.length[rows], k)
            live = np.arange(k)[None, :] < n[:, None]
            a = np.where(live, signed_power64(self.img_side.sims[rows, :k], self.p), 0.0)
            cols = np.where(live, self.img_side.rows[rows, :k], 0)
            A = sp.csr_matrix((a.ravel(), cols.ravel(), np.arange(0, rows.size * k + 1, k)),
                              shape=(rows.size, self.Bd.shape[1]))
            self.D[rows] = A @ self.Bd.T
            self.na2[rows] = self._moved_a[rows] = (a * a).sum(axis=1)
        cand = np.flatnonzero(self._moved_b > self.CANCELLATION_TEXT * np.maximum(self.nb2, 1e-300))
        if cand.size:  # only the images holding one of these candidates' anchors contribute
            xs = np.flatnonzero((self.Bd[cand] != 0).any(axis=0))
            fresh = np.zeros((self.D.shape[0], cand.size))
            hq, hj, hs = self.img_side.topk_similarities(xs)
            if hq.size:
                _scatter_add_rows(fresh, hq, hj, signed_power64(hs, self.p), self.Bd[cand][:, xs])
            self.D[:, cand] = fresh
            self.nb2[cand] = self._moved_b[cand] = (self.Bd[cand] ** 2).sum(axis=1)

    # ------------------------------------------------------------------ public edits
    def rows_of(self, pair_ids, want_alive: bool = True) -> np.ndarray:
        """Sorted anchor rows of ``pair_ids``, which must all be live (``want_alive``) or all
        removed; an unknown id or one in the wrong state raises ``ValueError``."""
        ids = np.unique(np.asarray(pair_ids, dtype=np.int64).ravel())
        if ids.size == 0:
            raise ValueError("no pair ids given.")
        rows = []
        for i in ids:
            r = self.anchors.id_to_row.get(int(i))
            if r is None:
                raise ValueError(f"pair id {int(i)} is not in this workspace.")
            if bool(self.anchors.alive[r]) != want_alive:
                raise ValueError(f"pair id {int(i)} is {'already removed' if want_alive else 'already present'}.")
            rows.append(r)
        return np.asarray(sorted(rows), dtype=np.int64)

    def _run(self, kind: str, rows: np.ndarray, label: str, commit: bool) -> EditResult:
        t0 = time.perf_counter()
        before_acc, before_pred = self.accuracy, self.predictions
        if kind == "remove" and self.anchors.n_alive - rows.size < self.k:
            raise ValueError(f"removing {rows.size} pairs would leave {self.anchors.n_alive - rows.size} "
                             f"anchors, fewer than k={self.k}; lower k first.")
        touched, rec = self._apply(kind, rows)
        res = EditResult(kind=label, pair_ids=self.anchors.ids[rows].copy(), accuracy=self.accuracy,
                         accuracy_before=before_acc, per_class_accuracy=self.per_class_accuracy,
                         predictions=self.predictions.copy(), predictions_before=before_pred.copy(),
                         n_changed=int((self.predictions != before_pred).sum()),
                         n_anchors=self.anchors.n_alive, elapsed_ms=0.0, touched_queries=touched,
                         recomputed_queries=rec, committed=commit)
        if not commit:
            self._apply("add" if kind == "remove" else "remove", rows)
        res.elapsed_ms = (time.perf_counter() - t0) * 1000
        return res

    def remove(self, pair_ids) -> EditResult:
        """Remove pairs by id and re-score. Unknown or already-removed ids raise ``ValueError``; so
        does leaving fewer than k live pairs (nothing is changed then)."""
        rows = self.rows_of(pair_ids, True)
        res = self._run("remove", rows, "remove", True)
        self.history.append(("remove", rows))
        self._redo.clear()
        self.accuracy_log.append(self.accuracy)
        return res

    def add(self, image_embeddings, text_embeddings, pair_ids=None, metadata=None) -> EditResult:
        """Add pairs ``[m, d_img]`` / ``[m, d_txt]`` (ids default to fresh ``max+1 …``; given ids must be
        new to this session) and re-score."""
        img = l2_normalize(as_float32_2d("new image embeddings", image_embeddings, self.anchors.img.shape[1]))
        txt = l2_normalize(as_float32_2d("new text embeddings", text_embeddings, self.anchors.txt.shape[1]))
        if img.shape[0] != txt.shape[0]:
            raise ValueError(f"{img.shape[0]} new images but {txt.shape[0]} new texts.")
        m = img.shape[0]
        if pair_ids is None:
            start = int(self.anchors.ids[:self.anchors.size].max()) + 1 if self.anchors.size else 0
            ids = np.arange(start, start + m, dtype=np.int64)
        else:
            ids = np.asarray(pair_ids, dtype=np.int64).ravel()
            if ids.size != m or np.unique(ids).size != m:
                raise ValueError("give one unique id per new pair.")
            clash = [int(i) for i in ids if int(i) in self.anchors.id_to_row]
            if clash:
                raise ValueError(f"pair ids {clash[:5]} are already used in this workspace.")
        if metadata is not None and len(metadata) != m:
            raise ValueError(f"{len(metadata)} metadata rows for {m} new pairs.")
        rows = self.anchors.append(img, txt, ids, metadata)
        self.anchors.alive[rows] = False  # _apply makes them live
        res = self._run("add", rows, "add", True)
        self.history.append(("add", rows))
        self._redo.clear()
        self.accuracy_log.append(self.accuracy)
        return res

    def what_if_remove(self, pair_ids) -> EditResult:
        """Accuracy if ``pair_ids`` were removed, without committing anything (nothing is changed
        and nothing reverted: see :meth:`_preview_remove`)."""
        rows = self.rows_of(pair_ids, True)
        if self.anchors.n_alive - rows.size < self.k:
            raise ValueError(f"removing {rows.size} pairs would leave {self.anchors.n_alive - rows.size} "
                             f"anchors, fewer than k={self.k}; lower k first.")
        return self._preview_remove(rows)

    def _text_weights(self, cols: np.ndarray, changed: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Raw text weights ``[P', len(cols)]`` at anchor rows ``cols`` (sorted, distinct) after a
        change of ``delta [P', len(changed)]`` at rows ``changed`` (sorted, distinct)."""
        table = self.Bd[:, cols]
        at = np.minimum(np.searchsorted(cols, changed), max(cols.size - 1, 0))
        both = cols[at] == changed if cols.size else np.zeros(changed.size, dtype=bool)
        table[:, at[both]] += delta[:, both]
        return table

    def _preview_remove(self, rows: np.ndarray) -> EditResult:
        """The :class:`EditResult` of removing the live anchor ``rows``, computed without changing
        the session: both sides' lists give the change of every top-k as if the rows were gone
        (:meth:`NeighbourLists.removal_diff`), and the dot products become

            D' = A' B'ᵀ = D + ΔA B'ᵀ + A ΔBᵀ

        (A, B the image and text sides' sparse vectors now, Δ their change): the changed image
        rows against the text weights after the removal, then the changed text anchors against
        the image lists as they are. Rows whose squared norm would lose digits to cancellation are
        recomputed exactly from their new top-k, as :meth:`_refresh_cancelled` does; a text
        candidate that would gets its column afresh. Equal to committing the removal, up to float round-off that
        :func:`core.asif.argmax_tolerant` absorbs."""
        t0 = time.perf_counter()
        n_after = self.anchors.n_alive - rows.size
        self._grow_B()
        (pp, xt, wt, nt), rec_t = self.txt_side.removal_diff(rows, n_after)
        changed, col = np.unique(xt, return_inverse=True)
        nb2 = self.nb2 + np.bincount(pp, weights=nt, minlength=self.nb2.size)
        moved_b = self._moved_b + np.bincount(pp, weights=np.abs(nt), minlength=self.nb2.size)
        (qq, xx, ww, nw), rec_i = self.img_side.removal_diff(rows, n_after)
        delta = np.zeros((self.cand.shape[0], changed.size))
        np.add.at(delta, (pp, col), wt)
        D = self.D.copy()
        if qq.size:  # ΔA B'ᵀ
            used, inv = np.unique(xx, return_inverse=True)
            _scatter_add_rows(D, qq, inv, ww, self._text_weights(used, changed, delta))
        if pp.size:  # A ΔBᵀ
            hq, hj, hs = self.img_side.topk_similarities(changed)
            if hq.size:
                _scatter_add_rows(D, hq, hj, signed_power64(hs, self.p), delta)
        cand = np.flatnonzero(moved_b > self.CANCELLATION_TEXT * np.maximum(nb2, 1e-300))
        if cand.size:  # A' B'ᵀ afresh: a removed anchor's text weight is 0 in B', so A' = A + ΔA
            Bc = self.Bd[cand]  # cancels nothing there (ΔA only takes removed anchors out)
            Bc[:, changed] += delta[cand]
            xs = np.flatnonzero((Bc != 0).any(axis=0))
            fresh = np.zeros((self.D.shape[0], cand.size))
            hq, hj, hs = self.img_side.topk_similarities(xs)
            if hq.size:
                _scatter_add_rows(fresh, hq, hj, signed_power64(hs, self.p), Bc[:, xs])
            if qq.size:
                _scatter_add_rows(fresh, qq, xx, ww, Bc)
            D[:, cand] = fresh
            nb2[cand] = (Bc ** 2).sum(axis=1)
        na2 = self.na2 + np.bincount(qq, weights=nw, minlength=self.na2.size)
        moved_a = self._moved_a + np.bincount(qq, weights=np.abs(nw), minlength=self.na2.size)
        fresh = np.flatnonzero(moved_a > self.CANCELLATION * np.maximum(na2, 1e-300))
        if fresh.size:
            r, s = self.img_side.topk_without(fresh, rows, n_after)
            live = r >= 0
            a = np.where(live, signed_power64(s, self.p), 0.0)
            used, inv = np.unique(np.where(live, r, 0), return_inverse=True)
            A = sp.csr_matrix((a.ravel(), inv.ravel(), np.arange(0, fresh.size * self.k + 1, self.k)),
                              shape=(fresh.size, used.size))
            D[fresh] = A @ self._text_weights(used, changed, delta).T
            na2[fresh] = (a * a).sum(axis=1)
        predictions = self._scores(D, na2, nb2)[2]
        before = self.predictions
        return EditResult(kind="remove", pair_ids=self.anchors.ids[rows].copy(),
                          accuracy=float(np.mean(predictions == self.labels)), accuracy_before=self.accuracy,
                          per_class_accuracy=per_class_accuracy(predictions, self.labels, self.n_classes),
                          predictions=predictions, predictions_before=before.copy(),
                          n_changed=int((predictions != before).sum()), n_anchors=n_after,
                          elapsed_ms=(time.perf_counter() - t0) * 1000,
                          touched_queries=int(np.unique(qq).size), recomputed_queries=rec_i + rec_t,
                          committed=False)

    def what_if_add(self, image_embeddings, text_embeddings) -> EditResult:
        """Accuracy if these pairs were added, without committing anything (temporary rows are kept
        dead in the anchor rows)."""
        img = l2_normalize(as_float32_2d("new image embeddings", image_embeddings, self.anchors.img.shape[1]))
        txt = l2_normalize(as_float32_2d("new text embeddings", text_embeddings, self.anchors.txt.shape[1]))
        start = int(self.anchors.ids[:self.anchors.size].max()) + 1
        ids = -np.arange(start, start + img.shape[0], dtype=np.int64) - 1  # private negative ids
        rows = self.anchors.append(img, txt, ids, None if self.anchors.metadata is None else [{}] * img.shape[0])
        self.anchors.alive[rows] = False
        res = self._run("add", rows, "add", False)
        return res

    def live_among(self, pair_ids) -> list[int]:
        """The ids among ``pair_ids`` that are live pairs, in their order (no set of every live id:
        at 1.6M pairs that costs 0.2 s)."""
        rows, alive = self.anchors.id_to_row, self.anchors.alive
        return [int(i) for i in pair_ids if int(i) in rows and alive[rows[int(i)]]]

    def knows(self, pair_id: int) -> bool:
        """Whether the session holds pair ``pair_id`` (live or removed)."""
        return int(pair_id) in self.anchors.id_to_row

    def known_pair_ids(self) -> np.ndarray:
        """Ids of every pair the session holds, live or removed, in anchor-row order."""
        ids = self.anchors.ids[:self.anchors.size]
        return ids[ids >= 0].copy()

    def restore(self, pair_ids) -> EditResult:
        """Make removed pairs live again (the session still holds their vectors) and re-score.
        Unknown or live ids raise ``ValueError``."""
        rows = self.rows_of(pair_ids, False)
        res = self._run("add", rows, "restore", True)
        self.history.append(("add", rows))
        self._redo.clear()
        self.accuracy_log.append(self.accuracy)
        return res

    @property
    def can_undo(self) -> bool:
        return bool(self.history)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> EditResult:
        """Undo the last committed edit (itself applied incrementally). Raises if nothing to undo."""
        if not self.history:
            raise ValueError("nothing to undo.")
        kind, rows = self.history.pop()
        inverse = "add" if kind == "remove" else "remove"
        if inverse == "remove" and self.anchors.n_alive - rows.size < self.k:
            self.history.append((kind, rows))
            raise ValueError("undoing this addition would leave fewer than k anchors.")
        res = self._run(inverse, rows, "undo", True)
        self._redo.append((kind, rows))
        self.accuracy_log.append(self.accuracy)
        return res

    def redo(self) -> EditResult:
        """Re-apply the last undone edit. Raises if nothing to redo."""
        if not self._redo:
            raise ValueError("nothing to redo.")
        kind, rows = self._redo.pop()
        res = self._run(kind, rows, "redo", True)
        self.history.append((kind, rows))
        self.accuracy_log.append(self.accuracy)
        return res

    # ------------------------------------------------------------------ views
    def current_model(self) -> AsifModel:
        """The live pairs as an :class:`AsifModel` (anchor-row order, same k, p, strategy)."""
        rows = self.anchors.alive_rows()
        meta = None if self.anchors.metadata is None else [self.anchors.metadata[r] for r in rows]
        return AsifModel(self.anchors.img[rows], self.anchors.txt[rows], self.anchors.ids[rows], meta,
                         k=self.k, p=self.p, info=self.info, template_strategy=self.strategy,
                         temperature=self.temperature)

    def metadata_by_id(self) -> dict[int, dict]:
        """``{pair_id: metadata}`` for every pair ever in the session (empty dicts without metadata)."""
        if self.anchors.metadata is None:
            return {}
        return {int(self.anchors.ids[r]): self.anchors.metadata[r] for r in range(self.anchors.size)}

    def full_recompute(self) -> np.ndarray:
        """Predictions ``[Q]`` of a from-scratch recompute over the live pairs (for checks)."""
        model = self.current_model()
        img_idx, img_val = model.represent_images(self.eval_images)
        txt_idx, txt_val = model.represent_texts(self.cand)
        return argmax_tolerant(self.reducer(sparse_scores(img_idx, img_val, txt_idx, txt_val, model.n_anchors)))

    # ------------------------------------------------------------------ influence
    def influence(self, pair_ids=None, progress: ProgressFn | None = None, *,
                  eval_mask=None) -> Influence:
        """Per-pair influence on the evaluation set (all live pairs, or ``pair_ids``): exact
        leave-one-out, see :func:`core.edits.influence.leave_one_out`. ``eval_mask`` (boolean
        ``[Q]`` or image indices, see :meth:`eval_index`) scores it on those images only and reads
        no other label, so a held-out test part can sit in the same session."""
        return leave_one_out(self, pair_ids, progress, eval_mask=eval_mask)

    def most_harmful(self, n: int = 20, influence: Influence | None = None, *,
                     eval_mask=None) -> list[dict]:
        """The ``n`` pairs whose removal helps accuracy most (rows of :meth:`Influence.rows`, with
        metadata); ``influence`` is computed (on ``eval_mask``'s images) when not given."""
        inf = influence or self.influence(eval_mask=eval_mask)
        return inf.rows(inf.order_most_harmful()[:n], self.metadata_by_id())
