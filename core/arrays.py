"""Input checks and L2 normalisation for embedding arrays: the one place every core module gets them.

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

__all__ = ["as_2d", "as_float32_2d", "as_float64_2d", "check_same_rows", "l2_normalize"]


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
