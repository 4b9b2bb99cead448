"""ASIF: sparse relative representations, zero-shot classification, retrieval and explanations.

Array-level and encoder-agnostic: every function takes embeddings (float arrays ``[n, d]``; they are
L2-normalised here, so any scale is fine) and returns numpy arrays. Paper: ``../shared/papers/asif.md``
section 2 ("ASIF recipe").

Recipe, as implemented (:func:`relative_representation`)
    1. cosine similarities of each query to the N anchors of its own modality;
    2. keep the top ``k`` (ties broken by the lower anchor position, so results are deterministic);
    3. raise to ``p`` **sign-safe**: ``sign(v)·|v|^p`` (the reference code's ``v**p`` turns negative
       similarities positive for even p);
    4. L2-normalise the k values.
    The ASIF similarity of an image and a text is the dot product of their sparse vectors over the
    shared anchor pairs.

Main objects
    ``relative_representation(x, anchors, k, p)`` -> ``(indices [Q, k], values [Q, k])``
    ``sparse_scores(a_idx, a_val, b_idx, b_val, n_anchors)`` -> dense ``[Qa, Qb]`` ASIF similarities
    ``build_prompts(class_names, templates)`` -> ``(prompts: list[str], prompt_classes [P])``
    ``AsifModel``: anchors (image/text embeddings, pair ids, per-pair metadata), ``k``, ``p``;
        ``classify``, ``retrieve``, ``explain``, ``with_pairs_added`` / ``with_pairs_removed``,
        ``save`` / ``load``; ``save_mapped`` / ``open_mapped`` (``.npy`` files reopened memory-mapped).
    ``Classification``, ``Explanation``: result containers (plain numpy fields).
    ``softmax(scores, temperature)``, ``fit_temperature(scores, labels)``: calibrated display scores.
    Editing an evaluated model incrementally lives in :mod:`core.edits`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from core.arrays import as_float32_2d, gather_rows, l2_normalize
from core.search import DEFAULT_MEMORY_BYTES, ExactIndex, RowSubsetIndex, exact_topk

ProgressFn = Callable[[float, str], None]

#: Template strategies: "mean" averages the template embeddings of a class into one candidate;
#: "per-template" makes every (class, template) prompt its own candidate and a class scores the max
#: over its prompts (what the reference code does).
TEMPLATE_STRATEGIES = ("mean", "per-template")
#: Chosen from the CIFAR-10 measurement in docs/RESULTS.md ("## ASIF engine", (c)): all 10,000 test
#: images, all 35,000 Flickr8k pairs, k=800, p=8. "mean" wins for three of the four offline encoder
#: pairs (lite0+mpnet 42.6 vs 41.3 %, lite2+minilm 40.8 vs 40.6 %, lite2+mpnet 43.9 vs 43.1 %;
#: lite0+minilm 41.1 vs 41.7 %), and it scores one candidate per class instead of eight.
DEFAULT_TEMPLATE_STRATEGY = "mean"
DEFAULT_K = 800
DEFAULT_P = 8.0
#: Softmax temperature for display probabilities when none was fitted (ASIF scores live in [-1, 1]).
DEFAULT_TEMPERATURE = 0.02

#: A small, general prompt-template set (CLIP-style); "{}" is replaced by the class name.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a low resolution photo of a {}.",
    "a picture of a {}.",
)

FORMAT_VERSION = 1
#: Text query sets of at most this many rows keep their representations (:meth:`AsifModel._represent`).
TEXT_MEMO_ROWS = 4096
TEXT_MEMO_ENTRIES = 8
#: The wording :func:`build_prompts` gives templates (2: "an" before a vowel sound). Part of a
#: workspace's settings key, so numbers measured with other prompts are never compared as equal.
PROMPT_WORDING = 2


# ------------------------------------------------------------------------------------------------
# The recipe
# ------------------------------------------------------------------------------------------------

def _check_kp(k, p, n: int) -> tuple[int, float]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer; got {k!r}.")
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of anchors ({n}); lower k or add pairs.")
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a number ≥ 1; got {p!r}.") from None
    if not np.isfinite(p) or p < 1:
        raise ValueError(f"p must be a finite number ≥ 1; got {p}.")
    return int(k), p


def signed_power64(values: np.ndarray, p: float) -> np.ndarray:
    """``sign(v)·|v|^p`` elementwise in float64 — sign-safe (the reference's ``v**p`` turns negative
    similarities positive for even p). Integer p uses repeated squaring (fast)."""
    s = np.asarray(values, dtype=np.float64)
    if float(p).is_integer() and 1 <= p <= 64:
        e = int(p)
        a = np.abs(s)
        out = None
        while e:
            if e & 1:
                out = a.copy() if out is None else out * a
            e >>= 1
            if e:
                a = a * a
        return np.copysign(out, s) if (s < 0).any() else out
    return np.sign(s) * np.abs(s) ** float(p)


def signed_power(values: np.ndarray, p: float) -> np.ndarray:
    """``sign(v)·|v|^p`` elementwise, float32 (computed in float64).

    >>> signed_power(np.array([0.5, -0.5]), 2).tolist()   # the reference's v**p gives [0.25, 0.25]
    [0.25, -0.25]
    """
    return signed_power64(values, p).astype(np.float32)


def process_similarities(sims: np.ndarray, p: float) -> np.ndarray:
    """Recipe steps 3–4 on top-k similarities ``[Q, k]``: sign-safe power, then row L2 normalisation.

    A row whose powered values are all zero stays zero (it matches nothing). Rows are processed in
    cache-sized blocks (the float64 intermediates of 10,000 × 800 values would be 64 MB each)."""
    sims = np.asarray(sims)
    out = np.empty(sims.shape, dtype=np.float32)
    step = max(1, 2 ** 16 // max(1, sims.shape[-1]))
    for r0 in range(0, sims.shape[0], step):
        raw = signed_power64(sims[r0:r0 + step], p)
        norms = np.sqrt((raw * raw).sum(axis=1, keepdims=True))
        norms[norms == 0] = 1.0
        np.divide(raw, norms, out=out[r0:r0 + step], casting="same_kind")
    return out


def relative_representation(x, anchors, k: int = DEFAULT_K, p: float = DEFAULT_P, *,
                            device: str | None = "cpu", memory_bytes: int = DEFAULT_MEMORY_BYTES,
                            progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sparse ASIF relative representation of ``x`` [Q, d] with respect to ``anchors`` [N, d].

    Cosine similarities to every anchor, keep the top ``k`` (sorted descending; ties broken by the
    lower anchor position), sign-safe power ``p``, L2-normalise.

    Returns ``(indices [Q, k] int64, values [Q, k] float32)``: anchor positions and weights; each row
    of ``values`` has unit norm (or is all zero when every kept similarity is 0).

    Raises ``ValueError`` for ``k > N``, ``k < 1``, ``p < 1``, empty inputs, NaN/inf rows and a
    dimension mismatch between ``x`` and ``anchors``.

    Worked example: three anchors on the unit circle; the query is closest to anchor 1, then 0.
    Similarities 0.8 and 0.6 squared are 0.64 and 0.36, which normalise to 0.87 and 0.49:

    >>> anchors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> idx, val = relative_representation(np.array([[0.6, 0.8]]), anchors, k=2, p=2)
    >>> print(idx, val.round(3))
    [[1 0]] [[0.872 0.49 ]]
    """
    xa = as_float32_2d("queries", x)
    aa = as_float32_2d("anchors", anchors, xa.shape[1])
    k, p = _check_kp(k, p, aa.shape[0])
    idx, sims = exact_topk(l2_normalize(xa), l2_normalize(aa), k, device=device,
                           memory_bytes=memory_bytes, progress=progress)
    return idx, process_similarities(sims, p)


def sparse_matrix(indices: np.ndarray, values: np.ndarray, n_anchors: int,
                  dtype: type = np.float32) -> sp.csr_matrix:
    """CSR matrix ``[Q, n_anchors]`` of ``dtype`` from ``(indices [Q, k], values [Q, k])``."""
    q, k = indices.shape
    indptr = np.arange(0, q * k + 1, k, dtype=np.int64)
    return sp.csr_matrix((values.ravel().astype(dtype), indices.ravel(), indptr),
                         shape=(q, n_anchors))


def sparse_scores(a_indices: np.ndarray, a_values: np.ndarray, b_indices: np.ndarray,
                  b_values: np.ndarray, n_anchors: int) -> np.ndarray:
    """ASIF similarities ``[Qa, Qb]`` (float32) between two sets of sparse vectors over the same anchors."""
    a = sparse_matrix(a_indices, a_values, n_anchors, np.float64)
    b = sparse_matrix(b_indices, b_values, n_anchors, np.float64)
    return np.asarray((a @ b.T).toarray(), dtype=np.float32)


def argmax_tolerant(scores: np.ndarray, atol: float = 1e-9, rtol: float = 1e-7) -> np.ndarray:
    """Row argmax that treats scores within ``atol + rtol·|max|`` of the maximum as tied and then
    picks the lowest index, so float round-off (incremental vs full recompute) cannot flip a tie."""
    s = np.asarray(scores, dtype=np.float64)
    m = s.max(axis=1, keepdims=True)
    return np.argmax(s >= m - (atol + rtol * np.abs(m)), axis=1)


# ------------------------------------------------------------------------------------------------
# Prompts and calibration
# ------------------------------------------------------------------------------------------------

def indefinite_article(word: str) -> str:
    """The indefinite article before ``word``: "an" before a vowel sound, else "a".

    >>> [indefinite_article(w) for w in ("airplane", "hour", "8-bit", "cat", "unicorn", "one-off")]
    ['an', 'an', 'an', 'a', 'a', 'a']
    """
    w = str(word).strip().lower()
    if w.startswith(("hour", "honest", "honou", "heir", "8", "11", "18")):
        return "an"
    if w.startswith(("uni", "use", "usu", "uti", "eu", "one", "once", "ewe")):
        return "a"
    return "an" if w[:1] in ("a", "e", "i", "o", "u") else "a"


def fill_template(template: str, class_name: str) -> str:
    """A prompt (or an added pair's caption): ``template`` with the class name in place of "{}",
    "a {}" turned into "an {}" before a vowel sound; underscores become spaces; a template without
    "{}" gets the name after a space.

    >>> fill_template("a photo of a {}.", "airplane"), fill_template("a photo of a small {}.", "owl")
    ('a photo of an airplane.', 'a photo of a small owl.')
    >>> fill_template("A {} in the wild", "eagle"), fill_template("art:", "traffic_light")
    ('An eagle in the wild', 'art: traffic light')
    """
    name = str(class_name).replace("_", " ")
    if "{}" not in template:
        return f"{template} {name}"
    if indefinite_article(name) == "an":
        template = re.sub(r"\b([Aa]) \{\}", r"\1n {}", template)
    return template.format(name)


def build_prompts(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                  ) -> tuple[list[str], np.ndarray]:
    """Prompts for every class × template, class-major.

    Returns ``(prompts, prompt_classes)``: ``prompts[c * T + t] = fill_template(templates[t], name_c)``
    and ``prompt_classes [C*T]`` int64.

    >>> build_prompts(["airplane", "traffic_light"], ["a photo of a {}.", "art:"])
    (['a photo of an airplane.', 'art: airplane', 'a photo of a traffic light.', 'art: traffic light'], array([0, 0, 1, 1]))
    """
    names = [str(c) for c in class_names]
    if not names:
        raise ValueError("give at least one class name.")
    if len(set(names)) != len(names):
        raise ValueError("class names must be unique.")
    if not templates:
        raise ValueError("give at least one prompt template, e.g. 'a photo of a {}.'")
    prompts: list[str] = []
    classes: list[int] = []
    for c, name in enumerate(names):
        for template in templates:
            prompts.append(fill_template(template, name))
            classes.append(c)
    return prompts, np.asarray(classes, dtype=np.int64)


def softmax(scores: np.ndarray, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Row softmax of ``scores / temperature`` (float64 internally, float32 out)."""
    if temperature <= 0:
        raise ValueError("temperature must be positive.")
    z = np.asarray(scores, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def fit_temperature(scores: np.ndarray, labels: np.ndarray,
                    grid: Sequence[float] | None = None) -> float:
    """Temperature minimising the negative log-likelihood of ``labels`` under ``softmax(scores/T)``.

    Searched on a log grid then refined (no gradients needed). ``scores [Q, C]``, ``labels [Q]``.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError("scores must be [Q, C] and labels [Q].")

    def nll(t: float) -> float:
        z = s / t
        z -= z.max(axis=1, keepdims=True)
        logp = z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))
        return float(-logp.mean())

    grid = list(grid) if grid is not None else list(np.geomspace(1e-4, 1.0, 41))
    best = min(grid, key=nll)
    lo, hi = best / 1.26, best * 1.26
    for _ in range(30):  # golden-section refine in log space
        m1, m2 = lo * (hi / lo) ** 0.382, lo * (hi / lo) ** 0.618
        if nll(m1) < nll(m2):
            hi = m2
        else:
            lo = m1
    return float(np.sqrt(lo * hi))


def class_candidates(prompt_embeddings, prompt_classes, strategy: str = DEFAULT_TEMPLATE_STRATEGY,
                     n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn prompt embeddings ``[P, d]`` into the text candidates of a strategy.

    "mean": one candidate per class, the L2-normalised mean of its normalised prompt embeddings.
    "per-template": the prompts themselves. Returns ``(candidates [P', d], candidate_classes [P'])``.
    """
    emb = l2_normalize(as_float32_2d("prompt embeddings", prompt_embeddings))
    classes = np.asarray(prompt_classes, dtype=np.int64).ravel()
    if classes.shape[0] != emb.shape[0]:
        raise ValueError(f"{emb.shape[0]} prompt embeddings but {classes.shape[0]} prompt classes.")
    if classes.min() < 0:
        raise ValueError("prompt classes must be non-negative class indices.")
    n_classes = int(n_classes if n_classes is not None else classes.max() + 1)
    if strategy == "per-template":
        return emb, classes
    if strategy != "mean":
        raise ValueError(f"unknown template strategy {strategy!r}; use one of {TEMPLATE_STRATEGIES}.")
    present = np.unique(classes)
    if present.size != n_classes:
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        raise ValueError(f"classes {missing} have no prompt.")
    sums = np.zeros((n_classes, emb.shape[1]), dtype=np.float64)
    np.add.at(sums, classes, emb)
    return l2_normalize(sums.astype(np.float32)), np.arange(n_classes, dtype=np.int64)


class ClassReducer:
    """Candidate scores ``[Q, P']`` -> class scores ``[Q, C]``: a class scores the max over its
    text candidates (the "per-template" strategy, as the reference code; with one candidate per
    class, as "mean" gives, the scores pass through unchanged). The one reduction used by
    :meth:`AsifModel.classify`, :class:`core.edits.EditSession` and its influence.

    >>> r = ClassReducer(np.array([0, 1, 1]), 2)
    >>> r(np.array([[0.1, 0.5, 0.3]]))
    array([[0.1, 0.5]])
    >>> r.best_candidate(np.array([[0.1, 0.2, 0.3]])), r.identity
    (array([[0, 2]]), False)
    """

    def __init__(self, candidate_classes, n_classes: int):
        self.candidate_classes = np.asarray(candidate_classes, dtype=np.int64).ravel()
        self.n_classes = int(n_classes)
        #: candidate columns of each class
        self.columns = [np.flatnonzero(self.candidate_classes == c) for c in range(self.n_classes)]
        #: one candidate per class, in class order: class scores are the candidate scores
        self.identity = bool(np.array_equal(self.candidate_classes, np.arange(self.n_classes)))

    def __call__(self, candidate_scores: np.ndarray) -> np.ndarray:
        """Class scores ``[Q, C]`` (the input's dtype; -inf for a class without candidates)."""
        s = np.asarray(candidate_scores)
        if self.identity:
            return s
        out = np.full((s.shape[0], self.n_classes), -np.inf, dtype=s.dtype)
        for c, cols in enumerate(self.columns):
            if cols.size:
                out[:, c] = s[:, cols].max(axis=1)
        return out

    def best_candidate(self, candidate_scores: np.ndarray) -> np.ndarray:
        """``[Q, C]`` the winning candidate of every class (index into the candidates; the first
        of equal scores; 0 for a class without candidates)."""
        s = np.asarray(candidate_scores)
        if self.identity:
            return np.broadcast_to(np.arange(self.n_classes), (s.shape[0], self.n_classes)).copy()
        out = np.zeros((s.shape[0], self.n_classes), dtype=np.int64)
        for c, cols in enumerate(self.columns):
            if cols.size:
                out[:, c] = cols[s[:, cols].argmax(axis=1)]
        return out

    def winner_of(self, candidate_scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """``[Q]`` the winning candidate of class ``classes[q]`` for each row ``q``."""
        classes = np.asarray(classes, dtype=np.int64)
        if self.identity:
            return classes.copy()
        s = np.asarray(candidate_scores)
        out = np.zeros(classes.size, dtype=np.int64)
        for c, cols in enumerate(self.columns):
            sel = classes == c
            if sel.any():
                out[sel] = cols[s[sel][:, cols].argmax(axis=1)]
        return out

    def with_columns(self, class_scores: np.ndarray, candidate_scores: np.ndarray,
                     columns: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The class scores after candidate ``columns`` take ``values [Q, len(columns)]`` (only
        their classes are reduced again; the inputs are left unchanged)."""
        out = np.array(class_scores, copy=True)
        if self.identity:
            out[:, columns] = values
            return out
        for c in np.unique(self.candidate_classes[columns]).tolist():
            cols = self.columns[c]
            sub = candidate_scores[:, cols]  # a copy (fancy index)
            mine = self.candidate_classes[columns] == c
            sub[:, np.searchsorted(cols, columns[mine])] = values[:, mine]
            out[:, c] = sub.max(axis=1)
        return out


def class_scores_from_candidates(candidate_scores: np.ndarray, candidate_classes: np.ndarray,
                                 n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class scores ``[Q, C]`` (float32) = max over each class's candidates, and the winning
    candidate per (query, class) ``[Q, C]``: :class:`ClassReducer` in one call."""
    reducer = ClassReducer(candidate_classes, n_classes)
    return np.array(reducer(candidate_scores), dtype=np.float32), reducer.best_candidate(candidate_scores)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

@dataclass
class Classification:
    """Zero-shot classification of Q images into C classes.

    ``scores [Q, C]`` ASIF similarity of each image to each class (max over its candidates);
    ``predictions [Q]`` argmax (lowest class index on ties, see :func:`argmax_tolerant`); ``probabilities [Q, C]`` softmax with
    ``temperature``; ``best_candidate [Q, C]`` which candidate won each class (index into
    ``candidate_classes``); ``strategy`` the template strategy used.
    """
    scores: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    best_candidate: np.ndarray
    candidate_classes: np.ndarray
    strategy: str
    temperature: float

    def accuracy(self, labels) -> float:
        """Fraction of ``predictions`` equal to ``labels [Q]``."""
        return float(np.mean(self.predictions == np.asarray(labels)))

    def per_class_accuracy(self, labels, n_classes: int | None = None) -> np.ndarray:
        """Accuracy per true class ``[C]`` (NaN for a class with no example)."""
        return per_class_accuracy(self.predictions, labels, n_classes or self.scores.shape[1])


def per_class_accuracy(predictions, labels, n_classes: int) -> np.ndarray:
    """Accuracy per true class ``[C]`` (NaN where a class has no example)."""
    y = np.asarray(labels, dtype=np.int64)
    hit = (np.asarray(predictions) == y).astype(np.float64)
    tot = np.bincount(y, minlength=n_classes).astype(np.float64)
    good = np.bincount(y, weights=hit, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, good / np.maximum(tot, 1), np.nan)


@dataclass
class Explanation:
    """Why one image got its class scores (paper Fig. 6/7 and Fig. 3).

    Anchor pairs are named by ``pair_ids`` (stable across edits) and by ``positions`` (rows in the
    model's anchor arrays at explanation time).

    Query side (the image's k nearest anchor images, sorted by similarity):
        ``positions [k]``, ``pair_ids [k]``, ``image_similarity [k]`` (raw cosine),
        ``image_weight [k]`` (sparse value after power + normalisation).
    Per class c (rows of these ``[C, k]`` arrays are aligned with the query side):
        ``caption_similarity [C, k]`` raw cosine of those anchors' captions to class c's winning
        candidate text, ``text_weight [C, k]`` the weight of that anchor in the candidate's sparse
        vector (0 when outside its top-k), ``product [C, k] = image_weight * text_weight``;
        ``scores [C] = product.sum(1)``; ``candidate [C]`` the winning candidate index.
    Histograms (Fig. 3): ``all_image_similarity [N]`` the image's cosine to every anchor image
        (``positions`` are its top-k), ``all_caption_similarity [C, N]`` every anchor caption's cosine
        to each class candidate — both read every anchor, so they are computed on first access
        (``dense`` computes them), not by :meth:`AsifModel.explain`; ``caption_topk [C, k]`` positions
        of each candidate's top-k.
    ``prediction`` argmax class; ``class_names`` if given; ``metadata`` of the query side's pairs;
    ``anchor_pair_ids [N]`` and ``anchor_metadata`` of every anchor (the model's, by position) for
    the Fig. 7 points outside the image's top-k.
    """
    positions: np.ndarray
    pair_ids: np.ndarray
    image_similarity: np.ndarray
    image_weight: np.ndarray
    caption_similarity: np.ndarray
    text_weight: np.ndarray
    product: np.ndarray
    scores: np.ndarray
    candidate: np.ndarray
    prediction: int
    caption_topk: np.ndarray
    anchor_pair_ids: np.ndarray
    anchor_metadata: list[dict] | None
    class_names: list[str] | None = None
    metadata: list[dict] | None = None
    #: ``() -> (all_image_similarity [N], all_caption_similarity [C, N])``
    dense: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def _dense(self) -> tuple[np.ndarray, np.ndarray]:
        if self.dense is None:
            raise ValueError("this explanation was made without access to the anchors.")
        return self.dense()

    @property
    def all_image_similarity(self) -> np.ndarray:
        """``[N]`` the image's cosine to every anchor image (computed on first access)."""
        return self._dense[0]

    @property
    def all_caption_similarity(self) -> np.ndarray:
        """``[C, N]`` every anchor caption's cosine to each class's winning candidate (first access)."""
        return self._dense[1]

    def contributions(self, class_index: int | None = None, top: int | None = 10,
                      include_zero: bool = False) -> list[dict]:
        """Pairs behind class ``class_index`` (default: the prediction), sorted by product descending.

        Each row: ``pair_id, position, image_similarity, caption_similarity, image_weight,
        text_weight, product, share`` (product / class score) plus the pair's metadata keys
        (e.g. ``image``, ``caption``) when the model has metadata. Pairs with a zero product are left
        out unless ``include_zero``.
        """
        c = self.prediction if class_index is None else int(class_index)
        order = np.argsort(-self.product[c], kind="stable")
        if not include_zero:
            order = order[self.product[c][order] != 0]
        if top is not None:
            order = order[:top]
        total = float(self.scores[c]) or 1.0
        rows = []
        for j in order:
            row = {
                "pair_id": int(self.pair_ids[j]),
                "position": int(self.positions[j]),
                "image_similarity": float(self.image_similarity[j]),
                "caption_similarity": float(self.caption_similarity[c, j]),
                "image_weight": float(self.image_weight[j]),
                "text_weight": float(self.text_weight[c, j]),
                "product": float(self.product[c, j]),
                "share": float(self.product[c, j]) / total,
            }
            if self.metadata is not None:
                row.update(self.metadata[j])
            rows.append(row)
        return rows

    def scatter_data(self, classes: Sequence[int] | None = None) -> list[dict]:
        """Rows for the Fig. 7 scatter, for each class in ``classes`` (default: all, in order): one
        per anchor pair in the union of the image's top-k and the class candidate's caption top-k
        (the two sparse supports), ascending by position: ``class_index, class_name, pair_id,
        image_similarity, caption_similarity`` (raw cosines) ``, product`` (0 off the overlap, where
        only one side keeps the pair) + the pair's metadata."""
        in_image_topk = dict(zip(self.positions.tolist(), range(len(self.positions))))
        rows = []
        for c in range(self.product.shape[0]) if classes is None else classes:
            for pos in sorted(set(in_image_topk) | set(self.caption_topk[c].tolist())):
                j = in_image_topk.get(pos)
                row = {
                    "class_index": int(c),
                    "class_name": self.class_names[c] if self.class_names else str(c),
                    "pair_id": int(self.anchor_pair_ids[pos]),
                    "image_similarity": float(self.all_image_similarity[pos]),
                    "caption_similarity": float(self.all_caption_similarity[c, pos]),
                    "product": 0.0 if j is None else float(self.product[c, j]),
                }
                if self.anchor_metadata is not None:
                    row.update(self.anchor_metadata[pos])
                rows.append(row)
        return rows


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------

class AsifModel:
    """An ASIF model: N anchor pairs (image embedding, text embedding, pair id, metadata) and ``k``, ``p``.

    Construction normalises and validates the embeddings. Pair ids are unique int64 (default
    ``0..N-1``); they name pairs across edits. ``metadata`` is an optional per-pair list of
    JSON-serialisable dicts (e.g. ``{"image": "x.jpg", "caption": "a dog"}``); ``info`` an optional
    model-level dict (encoder names, data source …). The model is treated as immutable: edits return
    new models (``with_pairs_added`` / ``with_pairs_removed``); for an evaluation set re-scored after
    every edit in milliseconds use :class:`core.edits.EditSession`.

    Shapes: ``image_embeddings [N, d_img]``, ``text_embeddings [N, d_txt]``, ``pair_ids [N]``.
    """

    #: Image-side FAISS settings (:class:`core.ann.AnnSettings`; ``None``: its defaults, i.e. FAISS
    #: with an exact re-rank from ``core.ann.ANN_MIN_ANCHORS`` distinct anchor images, kept in memory).
    #: Set on a model before its first search; ``with_params`` keeps it.
    ann = None

    def __init__(self, image_embeddings, text_embeddings, pair_ids=None, metadata=None, *,
                 k: int = DEFAULT_K, p: float = DEFAULT_P, info: Mapping[str, Any] | None = None,
                 template_strategy: str = DEFAULT_TEMPLATE_STRATEGY,
                 temperature: float = DEFAULT_TEMPERATURE, device: str | None = "cpu",
                 _mapped: tuple[np.ndarray, np.ndarray] | None = None):
        if _mapped is None:
            img = as_float32_2d("anchor image embeddings", image_embeddings)
            txt = as_float32_2d("anchor text embeddings", text_embeddings)
        else:   # open_mapped: unit rows it wrote itself, mapped from disk (not read here)
            img, txt = image_embeddings, text_embeddings
        if img.shape[0] != txt.shape[0]:
            raise ValueError(f"{img.shape[0]} anchor images but {txt.shape[0]} anchor texts: pairs must "
                             "line up one to one.")
        n = img.shape[0]
        ids = np.arange(n, dtype=np.int64) if pair_ids is None else np.asarray(pair_ids, dtype=np.int64).ravel()
        if ids.shape[0] != n:
            raise ValueError(f"{ids.shape[0]} pair ids for {n} pairs.")
        sorted_ids = np.sort(ids)
        if (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise ValueError("pair ids must be unique.")
        if metadata is not None:
            metadata = [dict(m) for m in metadata]
            if len(metadata) != n:
                raise ValueError(f"{len(metadata)} metadata rows for {n} pairs.")
        self.k, self.p = _check_kp(k, p, n)
        if template_strategy not in TEMPLATE_STRATEGIES:
            raise ValueError(f"unknown template strategy {template_strategy!r}; use one of {TEMPLATE_STRATEGIES}.")
        self._emb = {"image": img if _mapped is not None else l2_normalize(img),
                     "text": txt if _mapped is not None else l2_normalize(txt)}
        self._dims = {"image": img.shape[1], "text": txt.shape[1]}
        self._source: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # see over_rows
        self._distinct_images = _mapped      # (first, inverse) of the image rows, when known
        self.pair_ids = ids
        self.metadata = metadata
        self.info = dict(info or {})
        self.template_strategy = template_strategy
        self.temperature = float(temperature)
        self.device = device
        self._indexes: dict[str, ExactIndex] = {}
        self._text_memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------ basics
    @property
    def n_anchors(self) -> int:
        """Number of anchor pairs N."""
        return self.pair_ids.shape[0]

    @classmethod
    def over_rows(cls, base: "AsifModel", extra_image, extra_text, extra_ids, extra_metadata,
                  rows, *, k: int, p: float, info: Mapping[str, Any] | None = None,
                  template_strategy: str = DEFAULT_TEMPLATE_STRATEGY,
                  temperature: float = DEFAULT_TEMPERATURE) -> "AsifModel":
        """The model whose anchors are the rows ``rows`` (sorted, distinct) of ``base``'s pairs
        followed by the extra pairs (unit rows, positions after ``base``'s), without a copy of them:
        its searches go through ``base``'s indexes (:class:`core.search.RowSubsetIndex`), and its
        ``image_embeddings`` / ``text_embeddings`` are gathered only when read (an explanation's
        all-anchor view, ``save``). What :class:`core.live.LiveModel` hands out after an edit: at
        1.6M pairs a copy of both sides would be 9.8 GB."""
        rows = np.asarray(rows, dtype=np.int64)
        n0 = base.n_anchors
        ids = np.concatenate([base.pair_ids, np.asarray(extra_ids, np.int64)])[rows]
        meta = None
        if base.metadata is not None and extra_metadata is not None:
            meta = [base.metadata[r] if r < n0 else extra_metadata[r - n0] for r in rows.tolist()]
        new = object.__new__(cls)
        new.k, new.p = _check_kp(k, p, rows.size)
        new.pair_ids, new.metadata, new.info = ids, meta, dict(info or {})
        new.template_strategy, new.temperature, new.device = template_strategy, float(temperature), base.device
        new.ann, new._distinct_images, new._emb, new._dims = base.ann, None, {}, dict(base._dims)
        new._source = {"image": (base.image_embeddings, np.asarray(extra_image, np.float32), rows),
                       "text": (base.text_embeddings, np.asarray(extra_text, np.float32), rows)}
        new._indexes = {m: RowSubsetIndex(base.search_index(m), n0, new._source[m][1], rows)
                        for m in ("image", "text")}
        new._text_memo = {}
        return new

    def _rows(self, modality: str, positions: np.ndarray) -> np.ndarray:
        """The ``modality`` embeddings of anchor ``positions`` (gathered from the source rows of a
        model made by :meth:`over_rows`)."""
        if modality in self._emb:
            return self._emb[modality][positions]
        base, extra, rows = self._source[modality]
        return gather_rows(base, extra, rows[positions])

    def _side(self, modality: str) -> np.ndarray:
        """All anchors' ``modality`` embeddings; for a model made by :meth:`over_rows` a gathered
        copy on each read, not kept (an export or an explanation's histograms must not hold one)."""
        if modality in self._emb:
            return self._emb[modality]
        return self._rows(modality, np.arange(self.n_anchors))

    def similarities_to_anchors(self, modality: str, queries: np.ndarray) -> np.ndarray:
        """``[m, N]`` float32: unit ``queries [m, d]`` against every anchor's ``modality``
        embedding (an explanation's Fig. 3 histograms). Never a copy of a side (8 GB at 1.6M pairs
        of 1,280-d pictures): the products are taken :data:`MAPPED_BLOCK_ROWS` rows at a time, for
        a model made by :meth:`over_rows` over its source rows, then its rows picked. Each entry is
        summed in the same order whatever the rows around it (``einsum``: a BLAS product's order
        depends on the shapes), so both give a copy of the rows' numbers to the bit (a BLAS product
        is 2-5x faster, and not so)."""
        queries = np.asarray(queries, dtype=np.float32)

        def blocked(e: np.ndarray) -> np.ndarray:
            out = np.empty((queries.shape[0], e.shape[0]), dtype=np.float32)
            for start in range(0, e.shape[0], MAPPED_BLOCK_ROWS):
                out[:, start:start + MAPPED_BLOCK_ROWS] = np.einsum(
                    "qd,nd->qn", queries, e[start:start + MAPPED_BLOCK_ROWS])
            return out

        if modality in self._emb:
            return blocked(self._emb[modality])
        base, extra, rows = self._source[modality]
        sims = blocked(base)
        if extra.size:
            sims = np.concatenate([sims, blocked(extra)], axis=1)
        return sims[:, rows]

    @property
    def image_embeddings(self) -> np.ndarray:
        """``[N, d_img]`` unit anchor image embeddings."""
        return self._side("image")

    @property
    def text_embeddings(self) -> np.ndarray:
        """``[N, d_txt]`` unit anchor text embeddings."""
        return self._side("text")

    @property
    def distinct_images(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(first [U], inverse [N])`` when known (a model :meth:`open_mapped` opened): the first
        anchor row of each distinct picture, and each row's picture; otherwise None."""
        return self._distinct_images

    @functools.cached_property
    def _id_to_pos(self) -> dict[int, int]:
        return {int(i): j for j, i in enumerate(self.pair_ids)}

    def positions_of(self, pair_ids) -> np.ndarray:
        """Anchor positions ``[m]`` of ``pair_ids``; unknown ids raise ``ValueError``."""
        out = []
        for i in np.asarray(pair_ids, dtype=np.int64).ravel():
            pos = self._id_to_pos.get(int(i))
            if pos is None:
                raise ValueError(f"pair id {int(i)} is not in this model.")
            out.append(pos)
        return np.asarray(out, dtype=np.int64)

    def represent_images(self, image_embeddings, *, progress: ProgressFn | None = None):
        """Sparse relative representation of images ``[Q, d_img]`` over the anchor images:
        ``(positions [Q, k], values [Q, k])``."""
        return self._represent("image", image_embeddings, progress)

    def represent_texts(self, text_embeddings, *, progress: ProgressFn | None = None):
        """Sparse relative representation of texts ``[Q, d_txt]`` over the anchor captions:
        ``(positions [Q, k], values [Q, k])``."""
        return self._represent("text", text_embeddings, progress)

    def search_index(self, modality: str) -> ExactIndex:
        """The :class:`core.search.ExactIndex` over the anchors of ``modality`` ("image" or "text"),
        built on first use (repeated anchor images, e.g. 5 captions per image, are searched once)."""
        if modality not in self._indexes:
            if modality == "image":  # core.ann hook: FAISS + exact re-rank above a measured size
                from core.ann import image_search_index
                self._indexes[modality] = image_search_index(self.image_embeddings, self.ann,
                                                             distinct=self._distinct_images)
            else:
                self._indexes[modality] = ExactIndex(self.text_embeddings)
        return self._indexes[modality]

    def _represent(self, modality: str, queries, progress: ProgressFn | None):
        """ASIF recipe (:func:`relative_representation`) against this model's anchors. The text
        representations of the last few small query sets (class prompts, asked for by every
        ``classify`` and ``explain``; at 1.6M anchors each is a pass over every caption) are kept,
        read-only, keyed by the queries' bytes, k and p."""
        index = self.search_index(modality)
        x = l2_normalize(as_float32_2d("queries", queries, self._dims[modality]))
        key = None
        if modality == "text" and x.shape[0] <= TEXT_MEMO_ROWS:
            key = (hashlib.sha256(x.tobytes()).hexdigest(), self.k, self.p)
            held = self._text_memo.get(key)
            if held is not None:
                return held
        idx, sims = index.topk(x, self.k, device=self.device, progress=progress)
        out = idx, process_similarities(sims, self.p)
        if key is not None:
            for a in out:
                a.flags.writeable = False
            # several sessions may explain with one model at once: evict without assuming a key stays
            while len(self._text_memo) >= TEXT_MEMO_ENTRIES:
                try:
                    self._text_memo.pop(next(iter(self._text_memo)), None)
                except (StopIteration, RuntimeError):   # emptied or resized by another thread meanwhile
                    break
            self._text_memo[key] = out
        return out

    # ------------------------------------------------------------------ classification
    def classify(self, image_embeddings, prompt_embeddings, prompt_classes=None, *,
                 strategy: str | None = None, n_classes: int | None = None,
                 temperature: float | None = None, progress: ProgressFn | None = None) -> Classification:
        """Zero-shot classification of images ``[Q, d_img]``.

        ``prompt_embeddings [P, d_txt]``: text-encoder embeddings of the prompts (from
        :func:`build_prompts`); ``prompt_classes [P]`` their class index (default: ``arange(P)``, one
        prompt per class). ``strategy``: "mean" (average each class's template embeddings into one
        candidate) or "per-template" (every prompt is a candidate, class score = max); default
        ``self.template_strategy``. Returns a :class:`Classification`.
        """
        strategy = strategy or self.template_strategy
        pe = as_float32_2d("prompt embeddings", prompt_embeddings, self._dims["text"])
        pc = np.arange(pe.shape[0]) if prompt_classes is None else np.asarray(prompt_classes)
        cand, cand_cls = class_candidates(pe, pc, strategy, n_classes)
        n_classes = int(n_classes if n_classes is not None else cand_cls.max() + 1)
        img_idx, img_val = self.represent_images(image_embeddings, progress=progress)
        txt_idx, txt_val = self.represent_texts(cand)
        cand_scores = sparse_scores(img_idx, img_val, txt_idx, txt_val, self.n_anchors)
        scores, best = class_scores_from_candidates(cand_scores, cand_cls, n_classes)
        t = self.temperature if temperature is None else float(temperature)
        return Classification(scores=scores, predictions=argmax_tolerant(scores),
                              probabilities=softmax(scores, t), best_candidate=best,
                              candidate_classes=cand_cls, strategy=strategy, temperature=t)

    # ------------------------------------------------------------------ retrieval
    def retrieve(self, queries, candidates, *, query_modality: str = "image", top: int = 5,
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Cross-modal retrieval in the ASIF space.

        ``query_modality="image"``: ``queries [Q, d_img]`` are images and ``candidates [M, d_txt]``
        captions (image→caption); ``"text"``: the reverse (caption→image). Returns
        ``(indices [Q, top] into candidates, scores [Q, top])`` sorted by ASIF similarity descending
        (ties: lower candidate index first).
        """
        if query_modality == "image":
            qi, qv = self.represent_images(queries)
            ci, cv = self.represent_texts(candidates)
        elif query_modality == "text":
            qi, qv = self.represent_texts(queries)
            ci, cv = self.represent_images(candidates)
        else:
            raise ValueError("query_modality must be 'image' or 'text'.")
        s = sparse_scores(qi, qv, ci, cv, self.n_anchors)
        top = int(min(max(1, top), s.shape[1]))
        order = np.argsort(-s, axis=1, kind="stable")[:, :top]
        return order, np.take_along_axis(s, order, 1)

    def image_to_text(self, images, captions, top: int = 5):
        """Best ``top`` captions ``[M, d_txt]`` for each image ``[Q, d_img]``: ``(indices, scores)``."""
        return self.retrieve(images, captions, query_modality="image", top=top)

    def text_to_image(self, texts, images, top: int = 5):
        """Best ``top`` images ``[M, d_img]`` for each text ``[Q, d_txt]``: ``(indices, scores)``."""
        return self.retrieve(texts, images, query_modality="text", top=top)

    # ------------------------------------------------------------------ explanations
    def explain(self, image_embedding, prompt_embeddings, prompt_classes=None, *,
                class_names: Sequence[str] | None = None, strategy: str | None = None,
                n_classes: int | None = None) -> Explanation:
        """Explain the classification of ONE image ``[d_img]`` (or ``[1, d_img]``).

        Same prompt arguments as :meth:`classify`. For every class, its winning candidate (the
        class mean for "mean", the best-scoring template for "per-template") is decomposed into the
        anchor pairs shared with the image's sparse vector. Returns an :class:`Explanation`;
        ``explanation.contributions()`` gives the sorted pair table for the predicted class and
        ``explanation.scatter_data()`` the Fig. 7 points.
        """
        strategy = strategy or self.template_strategy
        q = l2_normalize(as_float32_2d("image embedding", image_embedding, self._dims["image"]))
        if q.shape[0] != 1:
            raise ValueError("explain takes one image embedding; call it once per image.")
        pe = as_float32_2d("prompt embeddings", prompt_embeddings, self._dims["text"])
        pc = np.arange(pe.shape[0]) if prompt_classes is None else np.asarray(prompt_classes)
        cand, cand_cls = class_candidates(pe, pc, strategy, n_classes)
        n_classes = int(n_classes if n_classes is not None else cand_cls.max() + 1)
        if class_names is not None and len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes.")
        img_pos, img_sim = self.search_index("image").topk(q, self.k)  # as classify (core.ann above the threshold)
        img_pos, img_sim = img_pos[0], img_sim[0]
        img_w = process_similarities(img_sim[None], self.p)[0]
        txt_pos, txt_w = self.represent_texts(cand)
        cand_scores = sparse_scores(img_pos[None], img_w[None], txt_pos, txt_w, self.n_anchors)
        scores, best = class_scores_from_candidates(cand_scores, cand_cls, n_classes)
        best = best[0]
        # only the image's k anchors and the winners' top-k are read: no product with every anchor
        winners = cand[best]                                                           # [C, d_txt]
        cap_sim = (winners @ self._rows("text", img_pos).T).astype(np.float32)       # [C, k]
        tw = np.zeros((n_classes, self.k), dtype=np.float32)
        for c, j in enumerate(best.tolist()):
            order = np.argsort(txt_pos[j])
            held = txt_pos[j][order]
            at = np.minimum(np.searchsorted(held, img_pos), held.size - 1)
            hit = held[at] == img_pos
            tw[c, hit] = txt_w[j][order[at[hit]]]
        prod = img_w[None, :] * tw
        meta = [self.metadata[i] for i in img_pos] if self.metadata is not None else None
        return Explanation(
            positions=img_pos, pair_ids=self.pair_ids[img_pos], image_similarity=img_sim,
            image_weight=img_w, caption_similarity=cap_sim, text_weight=tw, product=prod,
            scores=scores[0], candidate=best, prediction=int(argmax_tolerant(scores)[0]),
            caption_topk=txt_pos[best], class_names=list(class_names) if class_names is not None else None,
            metadata=meta, anchor_pair_ids=self.pair_ids, anchor_metadata=self.metadata,
            dense=lambda: (self.similarities_to_anchors("image", q)[0],
                           self.similarities_to_anchors("text", winners)))

    # ------------------------------------------------------------------ edits (new models)
    def with_pairs_removed(self, pair_ids) -> "AsifModel":
        """A new model without ``pair_ids`` (unknown ids raise; k must stay ≤ the remaining pairs)."""
        drop = set(self.positions_of(pair_ids).tolist())
        keep = np.asarray([i for i in range(self.n_anchors) if i not in drop], dtype=np.int64)
        if keep.size < self.k:
            raise ValueError(f"removing {len(drop)} pairs would leave {keep.size} < k={self.k} anchors.")
        return self._subset(keep)

    def with_pairs_added(self, image_embeddings, text_embeddings, pair_ids=None, metadata=None) -> "AsifModel":
        """A new model with extra pairs appended (ids default to ``max(id)+1 …``)."""
        img = as_float32_2d("new image embeddings", image_embeddings, self._dims["image"])
        txt = as_float32_2d("new text embeddings", text_embeddings, self._dims["text"])
        m = img.shape[0]
        if pair_ids is None:
            start = int(self.pair_ids.max()) + 1 if self.n_anchors else 0
            pair_ids = np.arange(start, start + m, dtype=np.int64)
        if (self.metadata is None) != (metadata is None) and self.metadata is not None:
            metadata = [{} for _ in range(m)]
        meta = None if self.metadata is None else self.metadata + [dict(x) for x in metadata]
        return AsifModel(np.concatenate([self.image_embeddings, img]),
                         np.concatenate([self.text_embeddings, txt]),
                         np.concatenate([self.pair_ids, np.asarray(pair_ids, dtype=np.int64).ravel()]),
                         meta, k=self.k, p=self.p, info=self.info,
                         template_strategy=self.template_strategy, temperature=self.temperature,
                         device=self.device)

    def with_params(self, *, k: int | None = None, p: float | None = None) -> "AsifModel":
        """Same anchors, other ``k`` / ``p`` (arrays are shared, not copied)."""
        new = object.__new__(AsifModel)
        new.__dict__.update(self.__dict__)
        new.k, new.p = _check_kp(self.k if k is None else k, self.p if p is None else p, self.n_anchors)
        return new

    def with_exact_image_search(self) -> "AsifModel":
        """Same anchors (shared, not copied: a model made by :meth:`over_rows` stays over its
        rows), its images searched exactly instead of through FAISS: :func:`core.ann.report`'s
        baseline."""
        from core.ann import AnnSettings

        new = self.with_params()
        new.ann = AnnSettings(min_anchors=None)
        new._indexes = {m: index for m, index in self._indexes.items() if m != "image"}
        if "image" in self._source:
            base, extra, rows = self._source["image"]
            new._indexes["image"] = RowSubsetIndex(ExactIndex(base), base.shape[0], extra, rows)
        return new

    def image_index(self):
        """The index the image searches go through in the end: :meth:`search_index` ("image"), or
        for a model made by :meth:`over_rows` the index of its base model it searches."""
        index = self.search_index("image")
        return index.index if isinstance(index, RowSubsetIndex) else index

    def _subset(self, keep: np.ndarray) -> "AsifModel":
        meta = None if self.metadata is None else [self.metadata[i] for i in keep]
        return AsifModel(self.image_embeddings[keep], self.text_embeddings[keep], self.pair_ids[keep],
                         meta, k=self.k, p=self.p, info=self.info,
                         template_strategy=self.template_strategy, temperature=self.temperature,
                         device=self.device)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> str:
        """Save to one ``.npz`` file (no pickles): arrays ``image_embeddings``, ``text_embeddings``,
        ``pair_ids`` and ``meta_json`` (UTF-8 JSON with k, p, strategy, temperature, info, per-pair
        metadata, format version). Returns the path written (``.npz`` appended if missing)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        meta = {"format": "rosetta-asif", "version": FORMAT_VERSION, "k": self.k, "p": self.p,
                "template_strategy": self.template_strategy, "temperature": self.temperature,
                "info": self.info, "metadata": self.metadata}
        blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        tmp = path + ".tmp.npz"
        np.savez(tmp, image_embeddings=self.image_embeddings, text_embeddings=self.text_embeddings,
                 pair_ids=self.pair_ids, meta_json=blob)
        os.replace(tmp, path)
        return path

    def save_mapped(self, folder: str | os.PathLike, key: str) -> str:
        """Save the anchors for :meth:`open_mapped` (:func:`save_mapped_pairs`, the image rows grouped
        into distinct pictures as the image index grouped them). ``key`` names the source the anchors
        came from (e.g. :func:`core.interchange.source_key`); a later open with another key ignores
        the folder. Per-pair metadata is not kept. Returns ``folder``."""
        from core.search import distinct_rows

        index = self._indexes.get("image")
        if self._distinct_images is not None:
            first, inverse = self._distinct_images
        elif getattr(index, "inverse", None) is not None:     # an AnnIndex has grouped them already
            first, inverse = index.first, index.inverse
        else:
            first, inverse = distinct_rows(self.image_embeddings)
        return save_mapped_pairs(folder, key, self.image_embeddings, np.asarray(first)[np.asarray(inverse)],
                                 self.text_embeddings, self.pair_ids, k=self.k, p=self.p, info=self.info,
                                 template_strategy=self.template_strategy, temperature=self.temperature)

    @classmethod
    def open_mapped(cls, folder: str | os.PathLike, key: str, *,
                    device: str | None = "cpu") -> "AsifModel | None":
        """The model :meth:`save_mapped` wrote to ``folder`` for ``key``, its anchors memory-mapped
        (read-only; pages are read on use, not at open), or ``None`` when the folder is missing, was
        written for another key, or does not hold consistent arrays (then rebuild and save again).
        Nothing is normalised or grouped again: a second open at 1.6M pairs maps 9.8 GB instead of
        reading it."""
        folder = os.fspath(folder)
        try:
            with open(os.path.join(folder, "model.json"), encoding="utf-8") as f:
                meta = json.load(f)
            if not isinstance(meta, dict) or meta.get("format") != "rosetta-asif-mapped" \
                    or meta.get("version") != FORMAT_VERSION or meta.get("key") != key:
                return None
            img, txt, ids, first, inverse = (
                np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
                for name in ("image", "text", "pair_ids", "distinct_first", "distinct_inverse"))
        except (OSError, ValueError):
            return None
        n = img.shape[0] if img.ndim == 2 else -1
        if img.dtype != np.float32 or txt.dtype != np.float32 or txt.ndim != 2 or txt.shape[0] != n \
                or ids.shape != (n,) or inverse.shape != (n,) or first.ndim != 1 \
                or first.size == 0 or int(first.max()) >= n or int(inverse.max()) >= first.size \
                or int(first.min()) < 0 or int(inverse.min()) < 0:
            return None
        try:
            return cls(img, txt, np.asarray(ids), k=meta["k"], p=meta["p"], info=meta.get("info"),
                       template_strategy=meta["template_strategy"], temperature=meta["temperature"],
                       device=device, _mapped=(np.asarray(first), np.asarray(inverse)))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = "cpu") -> "AsifModel":
        """Load a model written by :meth:`save` (``allow_pickle=False``). Every array and field is
        checked (shapes, dtypes, ``k`` a positive integer, ``p`` a finite number); a file that is not
        a valid model raises ``ValueError`` with one sentence naming what is wrong."""
        import math
        import zipfile

        name = os.path.basename(os.fspath(path))

        def bad(why: str) -> ValueError:
            return ValueError(f"{name} is not a valid ASIF model file: {why}.")

        try:
            with np.load(os.fspath(path), allow_pickle=False) as f:
                missing = [a for a in ("image_embeddings", "text_embeddings", "pair_ids", "meta_json")
                           if a not in f.files]
                if missing:
                    raise bad(f"it has no {', '.join(missing)}")
                img, txt, ids, blob = (f["image_embeddings"], f["text_embeddings"], f["pair_ids"],
                                       f["meta_json"])
            if blob.dtype != np.uint8 or blob.ndim != 1:
                raise bad("meta_json is not UTF-8 bytes")
            meta = json.loads(blob.tobytes().decode("utf-8"))
        except ValueError as error:
            if str(error).startswith(f"{name} is not a valid"):
                raise
            raise bad("it cannot be read as a .npz of arrays with JSON metadata") from None
        except (OSError, EOFError, RecursionError, zipfile.BadZipFile):
            raise bad("it cannot be read as a .npz of arrays with JSON metadata") from None
        if not isinstance(meta, dict) or meta.get("format") != "rosetta-asif":
            raise bad("its metadata does not say format 'rosetta-asif'")
        k, p = meta.get("k"), meta.get("p")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise bad("'k' must be a positive whole number")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise bad("'p' must be a finite positive number")
        for label, arr in (("image_embeddings", img), ("text_embeddings", txt)):
            if arr.ndim != 2 or arr.dtype.kind != "f" or not np.isfinite(arr).all():
                raise bad(f"{label} must be a 2-D array of finite floats")
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or not (len(img) == len(txt) == len(ids)):
            raise bad("the embeddings and pair_ids must be one row per pair (integer ids)")
        metadata, strategy = meta.get("metadata"), meta.get("template_strategy", DEFAULT_TEMPLATE_STRATEGY)
        temperature = meta.get("temperature", DEFAULT_TEMPERATURE)
        if metadata is not None and (not isinstance(metadata, list) or len(metadata) != len(ids)):
            raise bad("'metadata' must be a list with one entry per pair")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not math.isfinite(temperature) or temperature <= 0:
            raise bad("'temperature' must be a finite positive number")
        if not isinstance(strategy, str):
            raise bad("'template_strategy' must be text")
        try:
            return cls(img, txt, ids, metadata, k=k, p=float(p), info=meta.get("info"),
                       template_strategy=strategy, temperature=float(temperature), device=device)
        except (TypeError, ValueError) as error:
            raise bad(f"its settings are not usable ({type(error).__name__})") from None

    def __repr__(self) -> str:
        return (f"AsifModel(n_anchors={self.n_anchors}, d_img={self._dims['image']}, "
                f"d_txt={self._dims['text']}, k={self.k}, p={self.p})")


#: rows written at a time by :func:`save_mapped_pairs` (64K rows x 768 x 4 bytes = 200 MB)
MAPPED_BLOCK_ROWS = 65_536


def save_mapped_pairs(folder: str | os.PathLike, key: str, image_vectors: np.ndarray, pair_image: np.ndarray,
                      text_vectors: np.ndarray, pair_ids: np.ndarray, *, k: int = DEFAULT_K,
                      p: float = DEFAULT_P, info: Mapping[str, Any] | None = None,
                      template_strategy: str = DEFAULT_TEMPLATE_STRATEGY,
                      temperature: float = DEFAULT_TEMPERATURE) -> str:
    """Write anchor pairs as :meth:`AsifModel.open_mapped` reads them: a folder of ``.npy`` files
    (float32 ``image.npy`` [P, di] — pair ``i``'s picture ``image_vectors[pair_image[i]]`` —,
    ``text.npy`` [P, dt], ``pair_ids.npy``, the pictures' grouping ``distinct_first.npy`` /
    ``distinct_inverse.npy``) and ``model.json`` (k, p, strategy, temperature, info, ``key``).
    The vectors must be unit rows already (:func:`core.interchange.import_pairs` gives them so);
    they are written :data:`MAPPED_BLOCK_ROWS` at a time (no [P, d] copy in memory). Written to a
    temporary folder first, then renamed. Returns ``folder``.

    >>> import tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "m")
    >>> img, txt = np.eye(2, dtype=np.float32), np.eye(3, dtype=np.float32)
    >>> _ = save_mapped_pairs(folder, "demo", img, np.array([0, 1, 1]), txt, np.array([7, 8, 9]), k=2)
    >>> m = AsifModel.open_mapped(folder, "demo")
    >>> m.image_embeddings.tolist(), m.pair_ids.tolist(), m.k
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], [7, 8, 9], 2)
    """
    import shutil

    pair_image = np.asarray(pair_image, dtype=np.int64)
    n = pair_image.shape[0]
    if text_vectors.shape[0] != n or np.asarray(pair_ids).shape != (n,):
        raise ValueError(f"{n} pairs but {text_vectors.shape[0]} text vectors and "
                         f"{np.asarray(pair_ids).shape[0]} pair ids.")
    _, first, inverse = np.unique(pair_image, return_index=True, return_inverse=True)
    folder = os.fspath(folder)
    tmp = f"{folder}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, width, rows_of in (("image", image_vectors.shape[1], lambda b: image_vectors[pair_image[b]]),
                                 ("text", text_vectors.shape[1], lambda b: text_vectors[b])):
        out = np.lib.format.open_memmap(os.path.join(tmp, f"{name}.npy"), mode="w+", dtype=np.float32,
                                        shape=(n, width))
        for start in range(0, n, MAPPED_BLOCK_ROWS):
            block = slice(start, min(n, start + MAPPED_BLOCK_ROWS))
            out[block] = rows_of(block)
        out.flush()
        del out
    for name, arr in (("pair_ids", np.asarray(pair_ids, np.int64)), ("distinct_first", first.astype(np.int64)),
                      ("distinct_inverse", inverse.astype(np.int64).ravel())):
        np.save(os.path.join(tmp, f"{name}.npy"), arr, allow_pickle=False)
    meta = {"format": "rosetta-asif-mapped", "version": FORMAT_VERSION, "key": key, "k": int(k), "p": float(p),
            "template_strategy": template_strategy, "temperature": float(temperature), "info": dict(info or {})}
    with open(os.path.join(tmp, "model.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
