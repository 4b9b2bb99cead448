"""Influence of each anchor pair on a labeled evaluation set: exact leave-one-out.

For every live pair of an :class:`~core.edits.session.EditSession`: how many evaluation images hold
it in their top-k, in how many predictions it took part (for the correct or a wrong class), and the
exact accuracy change if it alone were removed (``loo_delta``), without editing anything:

* a pair in no text candidate's top-k changes only the images that hold it, and each of those
  swaps in its next neighbour: one extra score per image covers all such pairs at once;
* a pair in some candidate's top-k changes those candidates' columns too: computed per pair with
  rank-one algebra on the session's dot products (:func:`_loo_algebraic`);
* a pair held by a list without spare neighbours goes through a what-if removal.

Curation ranks the most harmful pairs with it (ASIF paper, section 4: editing the model is
adding or removing anchor pairs; here the effect of each removal is measured exactly).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.asif import ProgressFn, argmax_tolerant, signed_power64
from core.edits.neighbours import NeighbourLists

if TYPE_CHECKING:
    from core.edits.session import EditSession


@dataclass
class Influence:
    """Per-pair influence on a labeled evaluation set (arrays aligned, one row per live pair).

    ``pair_ids``; ``in_topk`` evaluation images whose top-k anchor images include the pair;
    ``participated`` predictions it took part in (nonzero product with the predicted class);
    ``supported_correct`` / ``supported_wrong`` of those, correct / wrong ones;
    ``loo_delta`` exact accuracy change if this pair alone were removed (positive = removing it
    helps); ``loo_changed`` predictions that would change.
    """
    pair_ids: np.ndarray
    in_topk: np.ndarray
    participated: np.ndarray
    supported_correct: np.ndarray
    supported_wrong: np.ndarray
    loo_delta: np.ndarray
    loo_changed: np.ndarray
    elapsed_s: float = 0.0
    #: how the leave-one-out numbers were obtained: shared next-neighbour pass, per-pair algebra,
    #: what-if through the edit path (lists without slack)
    n_fast: int = 0
    n_algebraic: int = 0
    n_edit_path: int = 0

    def order_most_harmful(self) -> np.ndarray:
        """Row order: largest ``loo_delta`` first, then most wrong-minus-correct support."""
        return np.lexsort((self.pair_ids, -(self.supported_wrong - self.supported_correct), -self.loo_delta))

    COLUMNS = ("pair_id", "loo_delta", "loo_changed", "in_topk", "participated", "supported_correct",
               "supported_wrong")

    def columns(self, order: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The table as columns (arrays) in ``order`` (default: most harmful first): at 1.6M pairs a
        table of per-row dicts takes seconds and a gigabyte."""
        order = self.order_most_harmful() if order is None else np.asarray(order)
        return {name: getattr(self, "pair_ids" if name == "pair_id" else name)[order] for name in self.COLUMNS}

    def rows(self, order: np.ndarray | None = None, metadata: dict | None = None) -> list[dict]:
        """Table rows (dicts) in ``order`` (default: most harmful first), with each pair's
        ``metadata`` (``{pair_id: dict}``) when given."""
        cols = self.columns(order)
        out = [dict(zip(self.COLUMNS, values)) for values in zip(*(cols[c].tolist() for c in self.COLUMNS))]
        if metadata is not None:
            for row in out:
                row.update(metadata.get(row["pair_id"], {}))
        return out


def leave_one_out(session: EditSession, pair_ids=None, progress: ProgressFn | None = None, *,
                  eval_mask=None) -> Influence:
    """Per-pair influence of ``session``'s live pairs (all, or ``pair_ids``) on its evaluation set.

    ``eval_mask`` (boolean ``[Q]`` or image indices, see :meth:`EditSession.eval_index`) scores influence on
    those images only: ``loo_delta`` is then the exact accuracy change on them, and the counts
    cover them only. Nothing reads the labels of the other images, so a held-out test part can
    sit in the same session without leaking into what curation chooses.

    ``loo_delta`` is exact: pairs outside every text candidate's top-k change only the images
    whose top-k holds them, and all those images then swap in their next neighbour, so one extra
    score per image covers every such pair at once; the remaining pairs (in some candidate's
    top-k) go through a what-if removal on the incremental path.
    """
    t0 = time.perf_counter()
    k, p = session.k, session.p
    rows_all = session.anchors.alive_rows() if pair_ids is None else session.rows_of(pair_ids, True)
    cap = session.anchors.img.shape[0]
    idx = session.eval_index(eval_mask)
    n_eval = idx.size
    Q = session.labels.size
    inside = np.zeros(Q, dtype=bool)
    inside[idx] = True
    pred = session.predictions[idx]
    correct_in = pred == session.labels[idx]  # the only labels read: the masked images'
    top_rows = session.img_side.rows[idx, :k]
    valid = top_rows >= 0
    # participation: nonzero product with the predicted class's winning candidate
    win = session.reducer.winner_of(session.cand_scores[idx], pred)
    part = valid & (session.Bd[win[:, None], np.where(valid, top_rows, 0)] != 0)
    flat_rows = np.where(valid, top_rows, cap)
    in_topk = np.bincount(flat_rows.ravel(), minlength=cap + 1)[:cap]
    participated = np.bincount(flat_rows[part], minlength=cap + 1)[:cap]
    sup_ok = np.bincount(flat_rows[part & correct_in[:, None]], minlength=cap + 1)[:cap]
    sup_bad = np.bincount(flat_rows[part & ~correct_in[:, None]], minlength=cap + 1)[:cap]
    # leave-one-out, fast path
    in_text = np.zeros(cap, dtype=bool)
    tr = session.txt_side.rows[:, :k]
    in_text[tr[tr >= 0]] = True
    has_slack = session.img_side.length[idx] > k
    nxt_row = session.img_side.rows[idx, k] if session.img_side.K > k else np.full(n_eval, -1)
    nxt_w = np.where(has_slack & (nxt_row >= 0),
                     signed_power64(session.img_side.sims[idx, min(k, session.img_side.K - 1)], p), 0.0)
    D_alt = session.D[idx] + nxt_w[:, None] * session.Bd[:, np.where(nxt_row >= 0, nxt_row, 0)].T
    with np.errstate(invalid="ignore", divide="ignore"):
        nb = session.nb
        s_alt = np.where(nb[None, :] > 0, D_alt / np.where(nb > 0, nb, 1.0)[None, :], 0.0)
    cls_alt = session.reducer(s_alt)
    pred_alt = argmax_tolerant(cls_alt)
    gain = (pred_alt == session.labels[idx]).astype(np.int64) - correct_in.astype(np.int64)
    flip = (pred_alt != pred).astype(np.int64)
    loo_gain = np.zeros(cap + 1, dtype=np.int64)
    loo_flip = np.zeros(cap + 1, dtype=np.int64)
    rr = flat_rows.ravel()
    np.add.at(loo_gain, rr, np.repeat(gain, k))
    np.add.at(loo_flip, rr, np.repeat(flip, k))
    # queries without slack cannot use the fast path: route their anchors to the slow path
    slow = in_text.copy()
    if (~has_slack).any():
        r_ns = top_rows[~has_slack]
        slow[r_ns[r_ns >= 0]] = True
    delta = loo_gain[:cap].astype(np.float64) / n_eval
    changed = loo_flip[:cap].copy()
    slow_rows = rows_all[slow[rows_all]]
    if session.anchors.n_alive - 1 < k:
        delta[:] = np.nan
        slow_rows = slow_rows[:0]
    n_alg = 0
    holders = (_Holders(session.img_side, k), _Holders(session.txt_side, k)) if slow_rows.size else None
    for i, r in enumerate(slow_rows):
        out = _loo_algebraic(session, int(r), idx, inside, *holders)
        if out is None:  # a neighbour list without slack: go through the edit path
            res = session.what_if_remove([session.anchors.ids[r]])
            after = res.predictions[idx]
            delta[r] = ((after == session.labels[idx]).sum() - correct_in.sum()) / n_eval
            changed[r] = (after != pred).sum()
        else:
            n_alg += 1
            delta[r], changed[r] = out[0] / n_eval, out[1]
        if progress and i % 50 == 0:
            progress(i / max(1, slow_rows.size), "leave-one-out")
    if progress:
        progress(1.0, "leave-one-out")
    sel = rows_all
    return Influence(pair_ids=session.anchors.ids[sel].copy(), in_topk=in_topk[sel],
                     participated=participated[sel], supported_correct=sup_ok[sel],
                     supported_wrong=sup_bad[sel], loo_delta=delta[sel],
                     loo_changed=changed[sel], elapsed_s=time.perf_counter() - t0,
                     n_fast=int(rows_all.size - slow_rows.size), n_algebraic=n_alg,
                     n_edit_path=int(slow_rows.size - n_alg))


class _Holders:
    """For one side's lists: the queries whose top-k holds anchor row r, and r's position in each
    (ascending queries), for every r at once. Built once per :func:`leave_one_out`, whose lists do
    not change (its edit path is a what-if): one lookup per pair instead of a search of the lists
    (at 35,000 pairs the searches were 1.1 s of a 2.5 s table, all of it holding the GIL)."""

    def __init__(self, side: NeighbourLists, k: int):
        top = side.rows[:, :k]
        q, pos = np.nonzero(top >= 0)
        held = top[q, pos]
        order = np.argsort(held, kind="stable")
        self.q, self.pos = q[order], pos[order]
        self.ptr = np.searchsorted(held[order], np.arange(side.anchors.img.shape[0] + 1))

    def __call__(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(queries whose top-k holds anchor row r, position of r in their list)."""
        a, b = self.ptr[r], self.ptr[r + 1]
        return self.q[a:b], self.pos[a:b]


def _loo_algebraic(session: EditSession, r: int, idx: np.ndarray, inside: np.ndarray, img_holders: _Holders,
                   txt_holders: _Holders):
    """Exact effect of removing anchor row r alone on the evaluation images ``idx`` (``inside``:
    the same as a boolean ``[Q]`` mask), without touching state (``*_holders``: each side's
    :class:`_Holders`).

    D' = D + ΔA·Bᵀ + A·ΔBᵀ + ΔA·ΔBᵀ where ΔA (ΔB) drops r from the image (text) top-k lists that
    hold it and brings in each list's next neighbour. Returns (Δ correct count, n changed) or
    None when some list holding r has no slack left."""
    k, p = session.k, session.p
    img, txt = session.img_side, session.txt_side
    qr, pos_q = img_holders(r)
    keep = inside[qr]
    qr, pos_q = qr[keep], pos_q[keep]
    pr, pos_p = txt_holders(r)
    if qr.size and (img.length[qr] <= k).any():
        return None
    if pr.size and (txt.length[pr] <= k).any():
        return None
    a_r = signed_power64(img.sims[qr, pos_q], p)
    e_q = img.rows[qr, k]
    a_e = signed_power64(img.sims[qr, k], p)
    b_r = signed_power64(txt.sims[pr, pos_p], p)
    e_p = txt.rows[pr, k]
    b_e = signed_power64(txt.sims[pr, k], p)
    # columns Pr for every query: D[:, Pr] + A·ΔBᵀ
    Dc = session.D[:, pr].copy()
    if pr.size:
        cols_needed = np.unique(np.concatenate([[r], e_p]))
        colA = {}
        for x in cols_needed.tolist():
            hq, hp = img_holders(x)
            colA[x] = (hq, signed_power64(img.sims[hq, hp], p))
        hq, av = colA[r]
        Dc[hq] -= av[:, None] * b_r[None, :]
        for j in range(pr.size):
            hq, av = colA[int(e_p[j])]
            Dc[hq, j] += b_e[j] * av
    # rows Qr, all columns: D[Qr] + ΔA·Bᵀ, then the Pr columns get A·ΔBᵀ and ΔA·ΔBᵀ
    Dr = session.D[qr] - a_r[:, None] * session.Bd[:, r][None, :] + a_e[:, None] * session.Bd[:, e_q].T
    if pr.size and qr.size:
        Dr[:, pr] += Dc[qr] - session.D[np.ix_(qr, pr)]
        Dr[:, pr] += a_r[:, None] * b_r[None, :] + (e_q[:, None] == e_p[None, :]) * (a_e[:, None] * b_e[None, :])
    na_r = np.sqrt(np.maximum(session.na2[qr] - a_r ** 2 + a_e ** 2, 0.0))
    nb_p = np.sqrt(np.maximum(session.nb2[pr] - b_r ** 2 + b_e ** 2, 0.0))
    # new candidate scores: S with columns Pr replaced (all rows) and rows Qr replaced
    if pr.size:
        denom = session.na[:, None] * nb_p[None, :]
        Sc = np.where(denom > 0, Dc / np.where(denom > 0, denom, 1.0), 0.0)
        pred = argmax_tolerant(session.reducer.with_columns(session.class_scores, session.cand_scores, pr, Sc))
    else:
        pred = session.predictions.copy()
    if qr.size:
        nbv = session.nb
        nbv[pr] = nb_p
        denom = na_r[:, None] * nbv[None, :]
        Srow = np.where(denom > 0, Dr / np.where(denom > 0, denom, 1.0), 0.0)
        pred[qr] = argmax_tolerant(session.reducer(Srow))
    before, after, y = session.predictions[idx], pred[idx], session.labels[idx]
    return int((after == y).sum() - (before == y).sum()), int((after != before).sum())
