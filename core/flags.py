"""Data-quality flags of anchor pairs: near-duplicate photos and captions, outliers, mismatches.

Not a step of the ASIF paper: ASIF votes with its anchor pairs (Sec. 3), so a flood of copies of one
photo, a caption that sits far from every other, or a caption that does not describe its photo
skews the votes. Every flag here is label-free and computed from the exact k-NN graph of one side's
vectors (:func:`core.search.exact_topk`; exact on 35,000 rows in seconds, see docs/RESULTS.md "Map").

Public API (``x [n, d]`` any vectors, compared by cosine similarity)
----------
``neighbours(x, k)`` -> ``(indices [n, k], similarities [n, k])``: each row's k nearest *other* rows.
``near_duplicates(x, threshold, k)`` -> ``(group [n] int64, best [n] float32)``: rows joined by a
    similarity >= ``threshold`` form a group (connected components), numbered 0, 1, … by size
    (largest first); -1 = no near-duplicate. ``best`` is each row's highest similarity to another row.
``near_duplicate_captions(x, texts, threshold, max_word_edits, k)``: the same for captions, where a
    link also needs the texts to differ by at most ``max_word_edits`` words (case and punctuation
    ignored): the embedding proposes candidates, the words confirm them.
``thumbnails(paths)`` -> ``[n, 256]``: tiny grey thumbnails that confirm photo near-duplicates.
``outlier_scores(x, k)`` -> ``[n]`` float32: mean cosine distance to the k nearest other rows
    (:data:`OUTLIER_K` on the page).
``outliers(scores, top_fraction)`` -> ``[n]`` bool: the ``top_fraction`` highest scores.
``pair_flags(image, pair_image, caption, ...)`` -> ``{column: [P] array}``: all flags as columns per
    pair (image flags computed once per distinct photo and broadcast), including the caption-photo
    mismatch score of :func:`core.matching.suspicious_pair_scores` when asked for.

Thresholds (:data:`IMAGE_DUPLICATE`, :data:`THUMB_CORR`, :data:`CAPTION_DUPLICATE`) were chosen by
``bench/map.py --part flags`` on planted copies in one half of Flickr8k and reported on planted
copies in the other half (docs/RESULTS.md "Map"). The embedding alone cannot separate a cropped,
re-encoded copy from a natural look-alike photo (best held-out P/R 0.85/0.80); confirming its
candidates with 16 x 16 grey thumbnails can (1.00/0.98). cleanlab's Datalab ``near_duplicate``
check, given the same exact k-NN graph, found none of the planted photos and a quarter of the
captions, so it is not used.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from core.arrays import as_float32_2d, l2_normalize
from core.search import exact_topk

Progress = Callable[[float, str], None] | None

#: Cosine similarity (efficientnet-lite0) at or above which two photos are near-duplicates.
IMAGE_DUPLICATE = 0.65
#: Cosine similarity (all-MiniLM-L6-v2) at or above which two captions are near-duplicate
#: candidates; they are near-duplicates when they also differ by at most MAX_WORD_EDITS words.
CAPTION_DUPLICATE = 0.70
MAX_WORD_EDITS = 1
#: Photo near-duplicate candidates are confirmed when their THUMB x THUMB grey thumbnails
#: correlate by at least THUMB_CORR.
THUMB = 16
THUMB_CORR = 0.9
#: Neighbours per row for the duplicate search.
K = 10
#: Neighbours per row for the outlier score: more than a group of odd rows holds, or its members
#: vouch for each other (a dozen noise pictures among 3,500 photos: recall 0.06 with 10 neighbours,
#: 0.66-0.83 with 50-100). Chosen on half A of planted odd pictures and captions, ``bench/map.py
#: --part outliers`` (docs/RESULTS.md "Map").
OUTLIER_K = 100
#: Fraction of rows flagged as outliers (the highest k-NN distances). A rank rule, not a score
#: threshold: the score grows as a workspace shrinks (fewer close neighbours), so the threshold
#: chosen on 3,500 photos (half B: P/R 0.79/0.66; this rule 0.69/0.71) flags 77 % of 100 photos.
OUTLIER_FRACTION = 0.01
#: A pair whose suspicious-caption score (0 = its own caption ranks first among 1,000 others for
#: its photo, 1 = last) is at least this is flagged as a mismatch.
MISMATCH = 0.5


def _vectors(x) -> np.ndarray:
    arr = as_float32_2d("The vectors to flag", x)
    if arr.shape[0] < 2:
        raise ValueError(f"Flags compare vectors with each other: give at least two; got {arr.shape[0]}.")
    return l2_normalize(arr)


def neighbours(x, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows of ``x [n, d]`` (cosine): ``(indices [n, k'] int64,
    similarities [n, k'] float32)``, ``k' = min(k, n - 1)``, best first; a row never lists itself
    (an identical copy of it is listed, with similarity 1)."""
    xn = _vectors(x)
    n = xn.shape[0]
    kk = int(min(k, n - 1))
    idx, sims = exact_topk(xn, xn, kk + 1)
    own = idx == np.arange(n)[:, None]
    # drop the row itself; when it is not among the k+1 (ties with copies), drop the last column
    own[~own.any(axis=1), -1] = True
    keep = ~own
    return idx[keep].reshape(n, kk), sims[keep].reshape(n, kk)


def _groups(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    sizes = np.bincount(label)
    linked = sizes[label] > 1
    out = np.full(n, -1, dtype=np.int64)
    comps, first = np.unique(label[linked], return_index=True)
    order = sorted(range(comps.size), key=lambda i: (-sizes[comps[i]], first[i]))
    rank = np.empty(sizes.size, dtype=np.int64)
    rank[comps[order]] = np.arange(comps.size)
    out[linked] = rank[label[linked]]
    return out


def near_duplicates(x, threshold: float, k: int = K, thumbs=None,
                    min_thumb_corr: float = THUMB_CORR) -> tuple[np.ndarray, np.ndarray]:
    """``(group [n] int64, best [n] float32)`` for ``x [n, d]``: rows whose cosine similarity is at
    least ``threshold`` are linked, linked rows form a group (numbered by size, largest first;
    -1 = none). With ``thumbs [n, t]`` (:func:`thumbnails` of photos) a link also needs the two
    thumbnails to correlate by at least ``min_thumb_corr``: the embedding proposes, the pixels
    confirm. Only each row's ``k`` nearest others are examined, so a group larger than ``k + 1``
    may be found as one group through chains or, rarely, split."""
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"A cosine-similarity threshold lies in [-1, 1]; got {threshold}.")
    idx, sims = neighbours(x, k)
    rows, cols = np.nonzero(sims >= threshold)
    other = idx[rows, cols]
    if thumbs is not None:
        t = np.asarray(thumbs, dtype=np.float32)
        if t.shape[0] != idx.shape[0]:
            raise ValueError(f"Give one thumbnail per vector; got {t.shape[0]} and {idx.shape[0]}.")
        keep = np.einsum("ij,ij->i", t[rows], t[other]) >= min_thumb_corr
        rows, other = rows[keep], other[keep]
    return _groups(idx.shape[0], rows, other), sims[:, 0].copy()


def thumbnails(paths, size: int = THUMB) -> np.ndarray:
    """``[n, size * size]`` float32: each picture as a ``size x size`` grey thumbnail, centred and
    of unit norm (so a dot product is a correlation); an unreadable file gives a zero row (it
    confirms nothing). JPEGs are decoded at reduced size (PIL draft mode), a few ms each."""
    from PIL import Image

    out = np.zeros((len(paths), size * size), np.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im.draft("L", (4 * size, 4 * size))
                g = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32).ravel()
        except Exception:  # noqa: BLE001 - any unreadable picture just confirms nothing
            continue
        g -= g.mean()
        norm = float(np.linalg.norm(g))
        if norm > 0:
            out[i] = g / norm
    return out


_PUNCT = re.compile(r"[^\w\s]+")


def words(text: str) -> list[str]:
    """``text`` lower-cased, punctuation dropped, split on white space."""
    return _PUNCT.sub(" ", text.lower()).split()


def word_edits(a: list[str], b: list[str], limit: int) -> int:
    """Word-level edit distance (insert, delete, substitute one word) of ``a`` and ``b``, or
    ``limit + 1`` as soon as it exceeds ``limit`` (banded dynamic programme, O(len * limit))."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    big = limit + 1
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [big] * len(b)
        for j in range(max(1, i - limit), min(len(b), i + limit) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        if min(cur) > limit:
            return big
        prev = cur
    return min(prev[len(b)], big)


def near_duplicate_captions(x, texts, threshold: float, max_word_edits: int = MAX_WORD_EDITS,
                            k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`near_duplicates` for captions ``x [n, d]`` with their ``texts [n]``: a link
    also needs the two captions to differ by at most ``max_word_edits`` words once case and
    punctuation are ignored (the issue's "light paraphrase"); the embedding's k-NN proposes the
    candidates, so no pair of the n^2 is compared word by word unless it is among them."""
    if len(texts) != np.asarray(x).shape[0]:
        raise ValueError(f"Give one text per caption vector; got {len(texts)} and {np.asarray(x).shape[0]}.")
    idx, sims = neighbours(x, k)
    rows, cols = np.nonzero(sims >= threshold)
    tokens: dict[int, list[str]] = {}

    def tok(i: int) -> list[str]:
        if i not in tokens:
            tokens[i] = words(str(texts[i]))
        return tokens[i]

    other = idx[rows, cols]
    keep = np.array([word_edits(tok(int(i)), tok(int(j)), max_word_edits) <= max_word_edits
                     for i, j in zip(rows, other)], dtype=bool)
    return _groups(idx.shape[0], rows[keep], other[keep]), sims[:, 0].copy()


def outlier_scores(x, k: int = OUTLIER_K) -> np.ndarray:
    """``[n]`` float32: mean cosine distance (1 - similarity) of each row to its ``k`` nearest other
    rows; high = far from everything else."""
    _, sims = neighbours(x, k)
    return (1.0 - sims).mean(axis=1).astype(np.float32)


def outliers(scores, top_fraction: float = OUTLIER_FRACTION) -> np.ndarray:
    """``[n]`` bool: the ``ceil(top_fraction * n)`` highest ``scores`` (ties broken by position)."""
    s = np.asarray(scores, dtype=np.float64)
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1]; got {top_fraction}.")
    m = int(np.ceil(top_fraction * s.size))
    out = np.zeros(s.size, dtype=bool)
    if m:
        out[np.argsort(-s, kind="stable")[:m]] = True
    return out


def pair_flags(image, pair_image, caption, texts, *, photo_thumbs=None, image_threshold: float = IMAGE_DUPLICATE,
               caption_threshold: float = CAPTION_DUPLICATE, k: int = K, outlier_k: int = OUTLIER_K,
               outlier_fraction: float = OUTLIER_FRACTION, mismatch: bool = True,
               progress: Progress = None) -> dict[str, np.ndarray]:
    """Every flag as a column per pair.

    ``image [U, di]`` distinct photos, ``pair_image [P]`` each pair's photo row, ``caption [P, dt]``
    and ``texts [P]`` the captions' vectors and texts; ``photo_thumbs [U, t]`` (:func:`thumbnails`)
    confirm photo near-duplicates (without them, the embedding alone decides).
    Columns (each ``[P]``): ``photo_dup_group`` (-1 = none), ``photo_dup_sim``, ``caption_dup_group``,
    ``caption_dup_sim``, ``photo_outlier_score``, ``photo_outlier``, ``caption_outlier_score``,
    ``caption_outlier``, and with ``mismatch=True`` ``mismatch_score`` and ``mismatch``
    (:func:`core.matching.suspicious_pair_scores`, about a minute at 35,000 pairs).
    """
    report = progress or (lambda f, m: None)
    pi = np.asarray(pair_image, dtype=np.int64)
    cap = np.asarray(caption)
    if pi.shape != (cap.shape[0],):
        raise ValueError(f"pair_image needs one entry per caption ({cap.shape[0]}); got shape {pi.shape}.")
    report(0.0, "Near-duplicate photos")
    img_group, img_best = near_duplicates(image, image_threshold, k, thumbs=photo_thumbs)
    report(0.1, "Photo outliers")
    img_out = outlier_scores(image, outlier_k)
    report(0.2, "Near-duplicate captions")
    cap_group, cap_best = near_duplicate_captions(cap, texts, caption_threshold, k=k)
    report(0.35, "Caption outliers")
    cap_out = outlier_scores(cap, outlier_k)
    cols = {
        "photo_dup_group": img_group[pi], "photo_dup_sim": img_best[pi],
        "caption_dup_group": cap_group, "caption_dup_sim": cap_best,
        "photo_outlier_score": img_out[pi], "photo_outlier": outliers(img_out, outlier_fraction)[pi],
        "caption_outlier_score": cap_out, "caption_outlier": outliers(cap_out, outlier_fraction),
    }
    if mismatch:
        from core.matching import suspicious_pair_scores

        report(0.5, "Captions that may not match their photo")
        score = suspicious_pair_scores(np.asarray(image)[pi], cap, groups=pi,
                                       progress=lambda f: report(0.5 + 0.5 * f, "Captions that may "
                                                                 "not match their photo"))
        cols["mismatch_score"] = score.astype(np.float32)
        cols["mismatch"] = score >= MISMATCH
    report(1.0, "Flags ready")
    return cols
