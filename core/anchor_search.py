"""Search the anchor pairs by meaning: a text or a picture, through its own encoder or through ASIF.

ASIF (Norelli et al., Sec. 3) compares an input with the anchors of its own modality only; its
relative representation (the input's top-k similarities to the anchors, power p) then compares
across modalities. So a text query finds pairs two ways: its text-encoder neighbours among the
captions, and ASIF text→image retrieval among the photos (the photos' representations are computed
once per anchor set and reused by every query). A picture works the same way with the sides swapped.

``AnchorSearch(model, image [U, di], pair_image [P], caption [P, dt])`` where ``model`` is the
current :class:`core.asif.AsifModel`; ``.by_text(vec [dt], top)`` / ``.by_image(vec [di], top)``
return ``{"encoder": (positions [top], similarities [top]), "asif": (positions [top], scores [top])}``,
positions into the ``P`` pairs.
"""
from __future__ import annotations

import numpy as np

from core.arrays import l2_normalize
from core.asif import sparse_matrix
from core.search import ExactIndex


class AnchorSearch:
    """Text and picture search over all pairs of a workspace (see the module docstring)."""

    def __init__(self, model, image, pair_image, caption):
        self.model = model
        self.image = l2_normalize(np.ascontiguousarray(image, dtype=np.float32))
        self.pair_image = np.asarray(pair_image, dtype=np.int64)
        self.caption = l2_normalize(np.ascontiguousarray(caption, dtype=np.float32))
        if self.pair_image.shape != (self.caption.shape[0],):
            raise ValueError("pair_image needs one entry per caption.")
        self._captions = ExactIndex(self.caption)
        self._images = ExactIndex(self.image)
        self._rel: dict[str, object] = {}

    def _asif_scores(self, side: str, q_indices: np.ndarray, q_values: np.ndarray) -> np.ndarray:
        """ASIF similarities ``[rows]`` of one query's representation ``([1, k], [1, k])`` with every
        photo (``side="image"``) or caption. Their representations are computed once, kept as a
        float64 CSR matrix, and each query is one sparse x dense product (35,000 captions x k = 800:
        a few tens of ms, where building the matrix again took most of a second)."""
        q = np.zeros(self.model.n_anchors)
        np.add.at(q, q_indices[0], q_values[0])
        return np.asarray(self._representations(side) @ q, dtype=np.float32)

    def _representations(self, side: str):
        if side not in self._rel:
            idx, val = (self.model.represent_images(self.image) if side == "image"
                        else self.model.represent_texts(self.caption))
            self._rel[side] = sparse_matrix(idx, val, self.model.n_anchors, np.float64)
        return self._rel[side]

    def prepare(self, progress=None) -> "AnchorSearch":
        """Compute both sides' representations now (otherwise the first query of each side does:
        at 35,000 captions that is half a minute); ``progress(fraction, message)``. Returns self."""
        report = progress or (lambda f, m: None)
        for i, (side, what) in enumerate((("image", "photos"), ("text", "captions"))):
            report(i / 2, f"the {what}' ASIF representations")
            self._representations(side)
        report(1.0, "ready")
        return self

    def _photos_to_pairs(self, rows: np.ndarray, scores: np.ndarray, top: int):
        """Pair positions of the photos ``rows`` (best first), each photo's pairs in a row."""
        pos, val = [], []
        for r, s in zip(rows.tolist(), scores.tolist()):
            hits = np.flatnonzero(self.pair_image == r)
            pos += hits.tolist()
            val += [s] * hits.size
            if len(pos) >= top:
                break
        return np.asarray(pos[:top], dtype=np.int64), np.asarray(val[:top], dtype=np.float32)

    def by_text(self, vec, top: int = 24) -> dict:
        q = l2_normalize(np.asarray(vec, dtype=np.float32).reshape(1, -1))
        top = int(min(max(1, top), self.caption.shape[0]))
        idx, sims = self._captions.topk(q, top)
        s = self._asif_scores("image", *self.model.represent_texts(q))
        order = np.argsort(-s, kind="stable")[:top]
        return {"encoder": (idx[0], sims[0]), "asif": self._photos_to_pairs(order, s[order], top)}

    def by_image(self, vec, top: int = 24) -> dict:
        q = l2_normalize(np.asarray(vec, dtype=np.float32).reshape(1, -1))
        top = int(min(max(1, top), self.caption.shape[0]))
        n_img = int(min(top, self.image.shape[0]))
        idx, sims = self._images.topk(q, n_img)
        s = self._asif_scores("text", *self.model.represent_images(q))
        order = np.argsort(-s, kind="stable")[:top]
        return {"encoder": self._photos_to_pairs(idx[0], sims[0], top), "asif": (order, s[order])}
