"""Curation you can trust: a tuning part that chooses, a test part that only scores.

Every choice a curator makes (the influence ranking, what-if previews, automatic pruning, suggested
additions) must be made on data that does not score it (ASIF, ``shared/papers/asif.md``: the anchor
set is the model, so editing it is training, and the accuracy that guided the edits is a training
figure).

* :func:`stratified_split` gives every labeled image a stable place: tuning or test.
* :func:`auto_curate` prunes anchor pairs greedily by exact leave-one-out influence measured on part
  of the tuning images, stopping by a held-back slice of the tuning images (:data:`STOP_RULE`).
* :func:`suggest_additions` proposes in-domain pairs (pool images captioned with the class prompt,
  :func:`core.asif.fill_template`) for the classes the tuning part gets wrong most.

Nothing here reads a label outside the tuning mask; callers report the test part beside it.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from core.edits import EditResult, EditSession


def _stable_rank_key(seed: int, key: str) -> bytes:
    """A per-item sort key that depends only on (seed, key): the blake2b digest of ``f"{seed}:{key}"``."""
    return hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=16).digest()


def stratified_split(keys: Sequence[str], labels: np.ndarray, tune_fraction: float = 0.5,
                     seed: int = 0, class_names: Sequence[str] | None = None) -> np.ndarray:
    """Split labeled items into tuning and test, stratified by class, seeded and stable.

    Within each class the items are ordered by a hash of ``f"{seed}:{key}"`` and the first
    ``n * tune_fraction`` rounded half up (clipped to ``1 .. n-1``) are tuning. An item's place therefore
    depends only on the seed, its key and its class's keys: reordering the items or reopening the
    workspace gives the same split, and adding a few items to a class moves at most a few others.

    Args:
        keys: one unique, stable name per item (e.g. the image's relative path).
        labels: ``[N]`` class index (or any hashable label) per item.
        tune_fraction: share of each class that goes to tuning, strictly between 0 and 1.
        seed: changes the split.
        class_names: names of integer labels, for messages.

    Returns:
        ``bool [N]``: True where the item is in the tuning part, False where it is in the test part.

    Raises:
        ValueError: a fraction outside (0, 1), keys and labels of different lengths, duplicate keys,
            or a class with fewer than 2 items (it cannot be on both sides).

    >>> m = stratified_split(["a", "b", "c", "d", "e", "f"], np.array([0, 0, 0, 1, 1, 1]), 0.5, seed=0)
    >>> m.dtype, int(m.sum()), int(m[:3].sum()), int(m[3:].sum())
    (dtype('bool'), 4, 2, 2)
    >>> bool((stratified_split(["f", "e", "d", "c", "b", "a"], np.array([1, 1, 1, 0, 0, 0]))
    ...       == m[::-1]).all())
    True
    """
    f = float(tune_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"The tuning fraction must be strictly between 0 and 1; got {tune_fraction!r}.")
    keys = [str(k) for k in keys]
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(keys) != labels.shape[0]:
        raise ValueError(f"Got {len(keys)} keys but {labels.shape[0] if labels.ndim else 0} labels; "
                         "give one label per key.")
    if len(set(keys)) != len(keys):
        raise ValueError("The item keys must be unique to make a stable split.")
    tune = np.zeros(len(keys), dtype=bool)
    classes, inverse = np.unique(labels, return_inverse=True)
    for c, cls in enumerate(classes):
        idx = np.flatnonzero(inverse == c)
        n = idx.size
        if n < 2:
            name = class_names[int(cls)] if class_names is not None else cls
            raise ValueError(f"Class {str(name)!r} has {n} labeled item; each class needs at least 2 "
                             "so that it has one in the tuning part and one in the test part.")
        order = sorted(idx.tolist(), key=lambda i: _stable_rank_key(seed, keys[i]))
        n_tune = min(max(int(np.floor(n * f + 0.5)), 1), n - 1)
        tune[order[:n_tune]] = True
    return tune


# ------------------------------------------------------------------------------- auto-curate

ProgressFn = Callable[[float, str], None]

#: The stopping rule of :func:`auto_curate`, as shown to users and written to reports.
STOP_RULE = ("each round removes the pairs whose leave-one-out removal helps the choosing part most; "
             "before committing, a what-if checks the held-back slice: the round is applied unless it "
             "would put the slice's accuracy more than the tolerance (default: one binomial standard "
             "error of the slice's starting accuracy, sqrt(a(1-a)/n)) below the best it has reached; "
             "the loop stops at the first round that would (that round is not applied), when no "
             "pair's removal helps the choosing part, when the budget is spent, or when cancelled")


def accuracy_on(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy of ``predictions [Q]`` against ``labels [Q]`` on the items where ``mask [Q]`` is True
    (NaN for an empty mask). Only ``labels[mask]`` is read."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return float("nan")
    return float(np.mean(np.asarray(predictions)[m] == np.asarray(labels)[m]))


def holdout_split(labels: np.ndarray, tune_mask: np.ndarray, holdout_fraction: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split the tuning part into a *choosing* part and a held-back *stop* slice, stratified by class.

    Items are keyed by their position, so the slice is reproducible for a given evaluation set and
    seed. A class with a single tuning item keeps it in the choosing part. Only ``labels[tune_mask]``
    is read. Returns ``(choose [Q], holdout [Q])`` boolean masks, disjoint, their union the tuning mask.
    """
    tune = np.asarray(tune_mask, dtype=bool)
    labels = np.asarray(labels)
    if tune.shape != labels.shape:
        raise ValueError(f"The tuning mask has {tune.size} entries but there are {labels.size} labels.")
    f = float(holdout_fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"The held-back fraction must be strictly between 0 and 1; got {holdout_fraction!r}.")
    idx = np.flatnonzero(tune)
    y = labels[idx]
    classes, counts = np.unique(y, return_counts=True)
    splittable = np.isin(y, classes[counts >= 2])
    choose = tune.copy()
    if splittable.any():
        sub = idx[splittable]
        keep = stratified_split([str(i) for i in sub.tolist()], y[splittable], 1.0 - f, seed)
        choose[sub[~keep]] = False
    return choose, tune & ~choose


@dataclass
class CurationRound:
    """One applied round: the pairs it removed and the accuracies after it (tuning data only)."""
    index: int
    pair_ids: np.ndarray
    choose_accuracy: float
    holdout_accuracy: float
    tune_accuracy: float
    influence_s: float
    edit: object  # what ``apply_remove`` returned (an EditResult by default)


@dataclass
class CurationReport:
    """What :func:`auto_curate` did. Accuracies are on tuning data only (the caller reports test)."""
    rounds: list[CurationRound]
    stopped_because: str
    tune_before: float
    tune_after: float
    choose_before: float
    choose_after: float
    holdout_before: float
    holdout_after: float
    settings: dict = field(default_factory=dict)
    rule: str = STOP_RULE

    @property
    def removed(self) -> np.ndarray:
        """Ids of every removed pair, in round order."""
        if not self.rounds:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([r.pair_ids for r in self.rounds])


def auto_curate(session: EditSession, tune_mask: np.ndarray, *, max_removals: int,
                per_round: int = 50, holdout_fraction: float = 0.3, seed: int = 0,
                tolerance: float | None = None,
                apply_remove: Callable[[np.ndarray], object] | None = None,
                progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None) -> CurationReport:
    """Greedy influence-guided pruning that chooses on tuning data and never reads the test labels.

    The tuning part (``tune_mask [Q]``) is split, stratified, into a *choosing* part and a held-back
    *stop* slice (``holdout_fraction`` of it, see :func:`holdout_split`). Each round measures exact
    leave-one-out influence (ASIF's anchors are the model, so removing one pair is an exact
    retraining) on the choosing part only, takes up to ``per_round`` pairs with the largest positive
    gain, and applies them as ONE removal edit through ``apply_remove(pair_ids) -> EditResult``
    (default ``session.remove``; the app passes its transaction path), so one undo reverts one
    round. Influence is re-measured after every round. Stopping: see :data:`STOP_RULE`;
    ``tolerance=0`` never lets the held-back slice fall below its best (measured: too strict on a
    150-picture slice, docs/RESULTS.md).

    Nothing here reads the labels outside ``tune_mask``: influence is scored with
    ``eval_mask=choose`` and accuracies are taken on masks inside the tuning part.
    ``progress(fraction, message)`` is told of every round; ``should_stop()`` is polled between
    rounds and cancels cleanly (applied rounds stay applied, each undoable).
    """
    tune = np.asarray(tune_mask, dtype=bool)
    labels = session.labels
    if tune.shape != labels.shape:
        raise ValueError(f"The tuning mask has {tune.size} entries but the session has {labels.size} "
                         "evaluation images.")
    if not tune.any():
        raise ValueError("The tuning part is empty; choose a tuning fraction above 0.")
    if int(max_removals) < 0 or int(per_round) < 1:
        raise ValueError("The budget must be at least 0 removals and a round at least 1 pair.")
    apply_remove = apply_remove or session.remove
    choose, holdout = holdout_split(labels, tune, holdout_fraction, seed)

    def accs(pred):
        return (accuracy_on(pred, labels, choose), accuracy_on(pred, labels, holdout),
                accuracy_on(pred, labels, tune))

    choose0, hold0, tune0 = accs(session.predictions)
    hold_now = best = hold0
    n_hold = int(holdout.sum())
    tol = (float(np.sqrt(hold0 * (1 - hold0) / n_hold)) if n_hold else 0.0) if tolerance is None \
        else float(tolerance)
    rounds: list[CurationRound] = []
    n_removed = 0
    stopped = "the budget is spent"
    while n_removed < max_removals:
        if should_stop is not None and should_stop():
            stopped = "cancelled"
            break
        room = min(int(per_round), int(max_removals) - n_removed, session.n_anchors - session.k)
        if room < 1:
            stopped = "no more pairs can go without leaving fewer than k anchors"
            break
        if progress:
            progress(n_removed / max(1, max_removals), f"round {len(rounds) + 1}: measuring influence")
        t0 = time.perf_counter()
        inf = session.influence(eval_mask=choose)
        inf_s = time.perf_counter() - t0
        order = inf.order_most_harmful()
        gain = inf.loo_delta[order]
        order = order[np.nan_to_num(gain, nan=0.0) > 0]
        if order.size == 0:
            stopped = "no pair's removal helps the choosing part"
            break
        ids = inf.pair_ids[order[:room]]
        if should_stop is not None and should_stop():
            stopped = "cancelled"
            break
        preview = session.what_if_remove(ids)
        if accuracy_on(preview.predictions, labels, holdout) < best - tol - 1e-12:
            stopped = "the next round would lower the held-back slice's accuracy beyond the tolerance"
            break
        edit = apply_remove(ids)
        choose_acc, hold_now, tune_acc = accs(session.predictions)
        best = max(best, hold_now)
        rounds.append(CurationRound(len(rounds) + 1, np.asarray(ids, dtype=np.int64), choose_acc,
                                    hold_now, tune_acc, inf_s, edit))
        n_removed += len(ids)
        if progress:
            progress(n_removed / max(1, max_removals),
                     f"round {len(rounds)}: removed {len(ids)} pairs; tuning accuracy {tune_acc:.1%}")
    choose1, hold1, tune1 = accs(session.predictions)
    if progress:
        progress(1.0, f"done: {stopped}")
    return CurationReport(rounds=rounds, stopped_because=stopped, tune_before=tune0, tune_after=tune1,
                          choose_before=choose0, choose_after=choose1, holdout_before=hold0,
                          holdout_after=hold1,
                          settings={"max_removals": int(max_removals), "per_round": int(per_round),
                                    "holdout_fraction": float(holdout_fraction), "seed": int(seed),
                                    "tolerance": tol,
                                    "n_choose": int(choose.sum()), "n_holdout": int(holdout.sum())})


# ------------------------------------------------------------------------------- suggest additions

@dataclass
class Suggestion:
    """A proposed in-domain pair: pool item ``pool_index`` captioned ``caption`` (its class)."""
    pool_index: int
    class_index: int
    class_name: str
    caption: str
    covers: int  # wrong tuning images of its class for which it is the nearest unpicked pool item


@dataclass
class AdditionPlan:
    """:func:`suggest_additions`' answer: the proposals, per-class quotas and the expected effect on
    the tuning part if all are accepted (a what-if: nothing committed)."""
    suggestions: list[Suggestion]
    quota: dict[str, int]
    tune_before: float
    tune_if_accepted: float
    per_class_tune_before: dict[str, float]


def suggest_additions(session: EditSession, pool_image_embeddings: np.ndarray, pool_labels: np.ndarray,
                      caption_embeddings: np.ndarray, captions: Sequence[str], tune_mask: np.ndarray,
                      max_additions: int, *, exclude: Sequence[int] = (), preview: bool = True,
                      progress: ProgressFn | None = None) -> AdditionPlan:
    """Propose up to ``max_additions`` in-domain pairs for the classes the tuning part gets wrong most.

    ASIF's anchors are its training set (``shared/papers/asif.md``): a pool image of class c paired
    with the class caption ``captions[c]`` (embedded as ``caption_embeddings [C, d_txt]``) gives
    tuning images of class c a close anchor whose text matches the class prompt.

    Quota: the budget is shared among classes in proportion to their wrong tuning images (largest
    remainder), capped by the pool. Within a class, every wrong tuning image points at its nearest
    pool images of that class (cosine); pool items are taken in order of how many wrong images have
    them as their nearest not-yet-picked item (then by similarity), so proposals cover different
    mistakes. Only ``labels[tune_mask]`` is read. ``exclude``: pool indices already added. With
    ``preview`` the whole proposal is scored as one what-if on the tuning part (nothing committed).

    ``pool_image_embeddings [M, d_img]``, ``pool_labels [M]`` class indices of the session's classes.
    """
    tune = np.asarray(tune_mask, dtype=bool)
    labels = session.labels
    pool = np.asarray(pool_image_embeddings, dtype=np.float32)
    pool_y = np.asarray(pool_labels, dtype=np.int64).ravel()
    cap_emb = np.asarray(caption_embeddings, dtype=np.float32)
    C = session.n_classes
    if tune.shape != labels.shape:
        raise ValueError(f"The tuning mask has {tune.size} entries but the session has {labels.size} "
                         "evaluation images.")
    if pool.ndim != 2 or pool.shape[0] != pool_y.size:
        raise ValueError(f"The pool has {pool.shape[0] if pool.ndim == 2 else 0} images but "
                         f"{pool_y.size} labels.")
    if cap_emb.shape[0] != C or len(captions) != C:
        raise ValueError(f"Give one caption (and its embedding) per class: {C} classes.")
    if pool_y.size and (pool_y.min() < 0 or pool_y.max() >= C):
        raise ValueError(f"Pool labels must be class indices in 0..{C - 1}.")
    if int(max_additions) < 0:
        raise ValueError("The number of additions must be at least 0.")
    names = session.class_names or [str(c) for c in range(C)]
    pred = session.predictions
    wrong = tune & (pred != labels)
    per_class = {names[c]: accuracy_on(pred, labels, tune & (labels == c)) for c in range(C)}
    available = np.ones(pool_y.size, dtype=bool)
    available[np.asarray(list(exclude), dtype=np.int64)] = False
    n_wrong = np.bincount(labels[wrong], minlength=C).astype(np.float64)
    n_pool = np.bincount(pool_y[available], minlength=C)
    quota = _largest_remainder(n_wrong, int(max_additions), n_pool)
    pool_n = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
    out: list[Suggestion] = []
    for c in np.argsort(-quota, kind="stable").tolist():
        if quota[c] == 0:
            continue
        cand = np.flatnonzero(available & (pool_y == c))
        sims = session.eval_images[wrong & (labels == c)] @ pool_n[cand].T  # [W_c, M_c]
        for j, covers in _cover_order(sims, int(quota[c])):
            i = int(cand[j])
            out.append(Suggestion(i, int(c), names[c], str(captions[c]), covers))
        if progress:
            progress(len(out) / max(1, int(max_additions)), f"suggestions for {names[c]}")
    tune0 = accuracy_on(pred, labels, tune)
    tune1 = tune0
    if preview and out:
        idx = np.asarray([s.pool_index for s in out])
        cls = np.asarray([s.class_index for s in out])
        res = session.what_if_add(pool[idx], cap_emb[cls])
        tune1 = accuracy_on(res.predictions, labels, tune)
    return AdditionPlan(out, {names[c]: int(quota[c]) for c in range(C) if quota[c]}, tune0, tune1,
                        per_class)


def _largest_remainder(weights: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Integers ``[C]`` proportional to ``weights`` summing to ``min(total, caps.sum())`` (where
    weights allow), each at most its cap; leftovers go to the next largest remainders."""
    quota = np.zeros(weights.size, dtype=np.int64)
    left = int(min(total, caps[weights > 0].sum()))
    while left > 0:
        open_ = (weights > 0) & (quota < caps)
        if not open_.any():
            break
        share = np.where(open_, weights, 0.0) / weights[open_].sum() * left
        base = np.minimum(np.floor(share).astype(np.int64), caps - quota)
        if base.sum() == 0:  # hand out one by one, largest remainder first
            order = np.argsort(-(share - np.floor(share)), kind="stable")
            for c in order[:left]:
                if open_[c]:
                    quota[c] += 1
            break
        quota += base
        left -= int(base.sum())
    return quota


def _cover_order(sims: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Pick ``n`` columns of ``sims [W, M]`` (wrong images x pool items): repeatedly the column that
    is the nearest remaining item of the most rows (ties: higher summed similarity). Returns
    ``(column, rows covered)``; with no rows, columns in order."""
    W, M = sims.shape
    n = min(n, M)
    if W == 0:
        return [(j, 0) for j in range(n)]
    taken = np.zeros(M, dtype=bool)
    picked: list[tuple[int, int]] = []
    total = sims.sum(axis=0)
    while len(picked) < n:
        s = np.where(taken[None, :], -np.inf, sims)
        votes = np.bincount(s.argmax(axis=1), minlength=M)
        votes[taken] = -1
        j = int(np.lexsort((-total, -votes))[0])
        picked.append((j, int(max(votes[j], 0))))
        taken[j] = True
    return picked


def add_suggested(session: EditSession, pool_image_embeddings: np.ndarray, pool_labels: np.ndarray,
                  caption_embeddings: np.ndarray, captions: Sequence[str], tune_mask: np.ndarray,
                  max_additions: int, *, per_round: int = 50,
                  apply_add: Callable[[list[Suggestion]], object] | None = None,
                  progress: ProgressFn | None = None,
                  should_stop: Callable[[], bool] | None = None) -> list[Suggestion]:
    """Accept suggestions in rounds: each round asks :func:`suggest_additions` for up to
    ``per_round`` more (on the model as it now is) and adds them as ONE edit through
    ``apply_add(suggestions)`` (default: ``session.add`` of the pool vectors and class captions), so
    one undo reverts one round. Returns everything added, in order."""
    pool = np.asarray(pool_image_embeddings, dtype=np.float32)
    cap = np.asarray(caption_embeddings, dtype=np.float32)

    def default_add(sugg: list[Suggestion]) -> EditResult:
        idx = np.asarray([s.pool_index for s in sugg])
        cls = np.asarray([s.class_index for s in sugg])
        return session.add(pool[idx], cap[cls],
                           metadata=[{"caption": s.caption, "pool_index": s.pool_index} for s in sugg])

    apply_add = apply_add or default_add
    added: list[Suggestion] = []
    while len(added) < max_additions:
        if should_stop is not None and should_stop():
            break
        plan = suggest_additions(session, pool, pool_labels, cap, captions, tune_mask,
                                 min(int(per_round), int(max_additions) - len(added)),
                                 exclude=[s.pool_index for s in added], preview=False)
        if not plan.suggestions:
            break
        apply_add(plan.suggestions)
        added += plan.suggestions
        if progress:
            progress(len(added) / max(1, int(max_additions)), f"added {len(added)} suggested pairs")
    return added
