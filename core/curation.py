"""Curation you can trust: split a labeled set into a tuning part that chooses and a test part that scores.

Every choice a curator makes (the influence ranking, what-if previews, automatic pruning) must be
made on data that does not score it (ASIF, ``shared/papers/asif.md``, section 4: the anchor set is
the model, so editing it is training, and the accuracy that guided the edits is a training figure).
:func:`stratified_split` gives every labeled image a stable place: tuning or test.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def _stable_rank_key(seed: int, key: str) -> bytes:
    """A per-item sort key that depends only on (seed, key): the blake2b digest of ``f"{seed}:{key}"``."""
    return hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=16).digest()


def stratified_split(keys: Sequence[str], labels: np.ndarray, tune_fraction: float = 0.5,
                     seed: int = 0) -> np.ndarray:
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
            raise ValueError(f"Class {str(cls)!r} has {n} labeled item; each class needs at least 2 "
                             "so that it has one in the tuning part and one in the test part.")
        order = sorted(idx.tolist(), key=lambda i: _stable_rank_key(seed, keys[i]))
        n_tune = min(max(int(np.floor(n * f + 0.5)), 1), n - 1)
        tune[order[:n_tune]] = True
    return tune
