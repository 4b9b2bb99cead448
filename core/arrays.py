"""Array helpers: input checks and L2 normalisation for embedding arrays (the one place every core
module gets them), rows of a shared array read without copying it, a sample of whole groups of rows.

A user hands ``core`` embeddings as lists, numpy arrays or torch tensors; each public function
checks them once, here, with a one-sentence message naming the argument, and works on a plain
C-contiguous float array from then on.

>>> as_float32_2d("queries", [1.0, 2.0])              # one vector becomes one row
array([[1., 2.]], dtype=float32)
>>> as_float32_2d("queries", [[1.0, 2.0]], dim=3)
Traceback (most recent call last):
ValueError: queries has dimension 2 but the other side has 3: were they made by the same encoder?
>>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
array([[0.6, 0.8],
       [0. , 0. ]], dtype=float32)
"""
from __future__ import annotations

import numpy as np

__all__ = ["StackedRows", "as_2d", "as_float32_2d", "as_float64_2d", "check_same_rows", "gather_rows",
           "l2_normalize", "sample_groups"]


def as_2d(name: str, array, dim: int | None = None, *, dtype: type | None = np.float32,
          vector: str = "row", check_finite: bool = True) -> np.ndarray:
    """``array`` (list, numpy array or torch tensor) as a 2-D ``[n, d]`` array, or a
    ``ValueError`` naming ``name``: not numeric, not 1-D/2-D, empty, NaN/inf (with the bad rows),
    or ``d != dim`` when ``dim`` is given.

    ``dtype``: the C-contiguous float type returned (float32 by default), or ``None`` to keep the
    numeric type without copying (an ``np.memmap`` stays on disk; pass ``check_finite=False`` too, to
    read nothing). A 1-D array is one vector (``vector="row"``: ``[1, d]``) or one feature of n
    items (``vector="column"``: ``[n, 1]``).
    """
    if hasattr(array, "detach"):  # a torch tensor (torch itself is not imported for this)
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}.")
    if arr.ndim == 1:
        arr = arr[None, :] if vector == "row" else arr[:, None]
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
    if dtype is not None:
        arr = np.ascontiguousarray(arr, dtype=dtype)
    if check_finite:
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.flatnonzero(~finite.all(axis=1))
            raise ValueError(f"{name} has NaN or infinite values in rows {bad[:10].tolist()}"
                             f"{' …' if len(bad) > 10 else ''}; re-embed or drop them.")
    return arr


def as_float32_2d(name: str, array, dim: int | None = None) -> np.ndarray:
    """:func:`as_2d` as C-contiguous float32 (embeddings)."""
    return as_2d(name, array, dim)


def as_float64_2d(name: str, array, dim: int | None = None) -> np.ndarray:
    """:func:`as_2d` as C-contiguous float64 (statistics that need it: matching)."""
    return as_2d(name, array, dim, dtype=np.float64)


def check_same_rows(names: tuple[str, str], a: np.ndarray, b: np.ndarray, what: str = "paired items") -> None:
    """``ValueError`` unless ``a`` and ``b`` have the same number of rows (rows are paired).

    >>> check_same_rows(("X", "Y"), np.zeros((3, 2)), np.zeros((4, 2)))
    Traceback (most recent call last):
    ValueError: X and Y must have the same number of rows (paired items); got 3 and 4.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of rows ({what}); "
                         f"got {a.shape[0]} and {b.shape[0]}.")


def l2_normalize(x) -> np.ndarray:
    """Unit L2 norm along the last axis. float64 input stays float64; anything else becomes float32.

    Norms are taken in float64 (without a float64 copy of a float32 ``x``); zero vectors stay zero;
    vectors already of unit norm (within 1e-6 in float32, 1e-12 in float64) are returned
    bit-for-bit unchanged, so normalising twice is a no-op (exact reproducibility).
    """
    x = np.asarray(x)
    x = x if x.dtype == np.float64 else np.asarray(x, dtype=np.float32)
    tol = 1e-12 if x.dtype == np.float64 else 1e-6
    norms = np.sqrt(np.einsum("...i,...i->...", x, x, dtype=np.float64))[..., None]
    norms[(norms == 0) | (np.abs(norms - 1.0) <= tol)] = 1.0
    if np.all(norms == 1.0):
        return x
    return np.divide(x, norms, out=np.empty_like(x), casting="same_kind")


def gather_rows(base: np.ndarray, extra: np.ndarray, rows) -> np.ndarray:
    """Rows ``rows`` (an index array) of ``base`` followed by ``extra``, as one new array, without
    joining the two: ``base`` may be a 9.8 GB memory map that must never be copied whole.

    >>> gather_rows(np.zeros((2, 2)), np.ones((1, 2)), np.array([2, 0]))
    array([[1., 1.],
           [0., 0.]])
    """
    idx = np.asarray(rows, dtype=np.int64)
    n0 = base.shape[0]
    if idx.size == 0 or idx.max() < n0:
        return np.asarray(base[idx])
    out = np.empty(idx.shape + base.shape[1:], dtype=np.result_type(base.dtype, extra.dtype))
    low = idx < n0
    out[low] = base[idx[low]]
    out[~low] = extra[idx[~low] - n0]
    return out


class StackedRows:
    """An immutable ``[n0 + m, d]`` array made of a shared ``base`` (often a memory map of imported
    vectors) and ``m`` rows added after it, read like one array (an int, a slice, an index array or a
    boolean mask along the rows; ``np.asarray`` gathers everything) and never joined in memory.
    :meth:`appended` returns a new one; only the small added block is copied.

    >>> rows = StackedRows(np.zeros((2, 2), np.float32)).appended(np.ones((1, 2)))
    >>> rows.shape, rows[np.array([True, False, True])].tolist()
    ((3, 2), [[0.0, 0.0], [1.0, 1.0]])
    """

    def __init__(self, base: np.ndarray, extra: np.ndarray | None = None):
        self.base = base
        self.extra = (np.zeros((0,) + base.shape[1:], base.dtype) if extra is None
                      else np.asarray(extra, dtype=base.dtype).reshape((-1,) + base.shape[1:]))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.base.shape[0] + self.extra.shape[0],) + self.base.shape[1:]

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            key = int(key) + (len(self) if key < 0 else 0)
            return self.base[key] if key < self.base.shape[0] else self.extra[key - self.base.shape[0]]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and stop <= self.base.shape[0]:
                return self.base[start:stop]
            idx = np.arange(start, stop, step)
        else:
            idx = np.asarray(key)
            idx = np.flatnonzero(idx) if idx.dtype == bool else idx
        return gather_rows(self.base, self.extra, idx)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype, copy=False)

    def appended(self, rows) -> "StackedRows":
        """A new array with ``rows`` added at the end (``base`` shared)."""
        return StackedRows(self.base, np.concatenate([self.extra, np.asarray(rows, self.base.dtype)
                                                      .reshape((-1,) + self.base.shape[1:])]))


def sample_groups(groups: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted positions ``[m]`` of ``groups [n]`` (e.g. each pair's photo) in whole groups, picked
    in a seeded random order while they add up to at most ``limit`` rows (all of them when ``n <=
    limit``): a map of a paper-scale collection shows a fixed random sample of its photos, each
    with all its captions.

    >>> sample_groups(np.array([0, 0, 1, 2, 2, 2]), 3).tolist()
    [3, 4, 5]
    """
    groups = np.asarray(groups, dtype=np.int64)
    if groups.size <= limit:
        return np.arange(groups.size)
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(ids.size)
    keep = np.zeros(ids.size, dtype=bool)
    keep[order[np.cumsum(counts[order]) <= limit]] = True
    return np.flatnonzero(keep[inverse.ravel()])
