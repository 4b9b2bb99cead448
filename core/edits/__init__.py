"""Edit an ASIF model and re-score a labeled evaluation set in milliseconds.

:class:`EditSession` holds an ASIF model (anchor pairs named by id), a labeled evaluation set of
image embeddings and the class prompts. It keeps, for every evaluation image and every text
candidate, its top-(k+m) anchor neighbours (``m`` = slack) and the un-normalised dot products of the
sparse vectors, so that

* removing pairs touches only the queries whose top-(k+m) list held them (a query whose list falls
  below k is recomputed exactly against all live anchors), and
* adding pairs touches only the queries the new pairs enter,

and the accuracy after an edit is exactly what a full recompute gives (tested on long random edit
sequences, including undo and slack exhaustion). Undo and redo are edits too. A removal's what-if
changes nothing: each list minus the removed pairs gives its new top-k (refilled from the slack),
and only the changed entries of the scores are recomputed (1,000 of 35,000 pairs: ~80 ms).

Cost: an edit of up to ``SEQUENTIAL_MAX`` pairs goes one pair at a time. A pair enters (or leaves) a
sorted list by binary search and a shift, and each top-k then changes by at most one anchor in and
one out, so the scores and squared norms take O(1) work per touched list and class; the cost grows
with the lists a pair enters (measured: docs/RESULTS.md, "Figures behind code constants").
Larger edits merge or filter whole lists.

Typical use (dashboard)::

    session = EditSession(model, eval_img_emb, eval_labels, prompt_emb, prompt_classes,
                          class_names=names)
    session.accuracy, session.per_class_accuracy          # current state
    r = session.remove([pair_id, ...])                    # -> EditResult (accuracy, ms, …)
    session.what_if_remove([pair_id, ...])                # same numbers, nothing committed
    session.undo(); session.redo()
    session.add(img_emb_new, txt_emb_new, metadata=[{"caption": "a photo of a cat"}, ...])
    table = session.influence()                           # per-pair influence, leave-one-out
    session.most_harmful(20)                              # rows sorted for curation
    session.influence(eval_mask=tune)                     # scored on the tuning part only
    session.accuracy_on(test), r.predictions              # any part, after an edit or what-if
    model_now = session.current_model()                   # AsifModel of the live pairs

Canonical order: live anchors are ranked by (similarity desc, anchor row asc); anchor rows never move
(removed pairs keep their row so undo puts them back in place; added pairs get new rows at the end),
and :meth:`EditSession.current_model` lists live pairs in row order, so a fresh
:class:`core.asif.AsifModel` built from it breaks ties identically.

Modules: :mod:`core.edits.neighbours` (anchor rows and the top-(k+m) lists),
:mod:`core.edits.session` (:class:`EditSession`, :class:`EditResult`),
:mod:`core.edits.influence` (:class:`Influence`, exact leave-one-out).
"""
from core.edits.influence import Influence
from core.edits.session import EditResult, EditSession

__all__ = ["EditResult", "EditSession", "Influence"]
