"""The live model of a workspace: its vectors, an incremental ASIF session, and the one edit path.

``WorkspaceVectors`` are the vectors of everything a workspace holds under its settings (every pair
it ever held, the labeled pictures, the class prompts), read from the embedding cache. A pair whose
picture cannot be read or decoded is *quarantined* (left out of the model and listed), so a
workspace always opens.

``LiveModel`` mirrors the workspace's edit log with a :class:`core.edits.EditSession` (ASIF, Sec. 3:
every prediction is a sum over anchor pairs, so removing or adding a pair re-scores only the
pictures whose top-k neighbours it touches). The labeled pictures are split into a *tuning* part,
which every choice reads (influence, what-if, auto-curation), and a *test* part, which is only
reported (:mod:`core.curation`).

**One edit path.** :meth:`LiveModel.remove`, :meth:`~LiveModel.add`, :meth:`~LiveModel.undo` and
:meth:`~LiveModel.redo` each run one ``BEGIN IMMEDIATE`` transaction: read the log inside it and
re-sync the model when the log's last sequence number is not the model's (another process or
session edited); validate with the store's rules (``core.store.plan_*``); apply to the model; write
the edit with the metrics measured after it; commit. Any failure reverts the model, so memory and
disk never diverge; a held lock becomes :class:`core.store.WorkspaceBusy` (a one-sentence message).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core import store
from core.arrays import StackedRows
from core.ann import ANN_MIN_ANCHORS, AnnSettings
from core.asif import AsifModel, build_prompts, softmax
from core.cache import EmbeddingCache
from core.curation import stratified_split
from core.edits import EditSession, Influence

ProgressFn = Callable[[float, str], None]

#: After an edit, :meth:`LiveModel.current_model` searches the opened model's indexes and drops the
#: removed pairs while at most this many are removed (each search is that much deeper: 8,000
#: queries × 16,384 extra columns × 12 bytes = 1.6 GB); past it the live rows are copied, when that
#: copy takes at most ``COPY_MAX_BYTES`` (35,000 demo pairs: 0.2 GB; 1.6M pairs: 10 GB, never copied).
SUBSET_MAX_LEFT_OUT = 16_384
COPY_MAX_BYTES = 2 * 1024 ** 3


# ------------------------------------------------------------------------------------ vectors
@dataclass(frozen=True)
class Quarantined:
    """A pair or labeled picture left out of the model, with a one-sentence reason."""

    item_id: int
    image: str
    reason: str


class WorkspaceVectors:
    """Vectors of one workspace under its settings (immutable; grow with :meth:`extended`).

    ``pair_ids [P]`` every pair the workspace holds (active or not) with ``pair_refs`` / ``captions``;
    ``img [U, di]`` anchor pictures (``img_refs [U]``) and ``pair_img [P]`` each pair's picture row;
    ``cap [P, dt]`` caption vectors (both :class:`core.arrays.StackedRows`: in a workspace of
    imported vectors, ``imported``, its first rows are those vectors memory-mapped, one picture
    row per imported pair, a pair pointing at its picture's first row); ``ok [P]`` False for
    quarantined pairs; ``items`` the labeled pictures kept,
    ``item_vecs [Q, di]``, ``item_labels [Q]`` (index into ``classes``), ``is_tune [Q]``;
    ``prompts [C*T, dt]`` with ``prompt_classes [C*T]`` (``core.asif.build_prompts``).
    """

    def __init__(self, ws: store.Workspace, cache: EmbeddingCache, progress: ProgressFn | None = None,
                 first_images: int | None = None):
        """``first_images``: compute at most the first N anchor pictures (and their captions) that are
        not cached yet; the other uncached pairs are left ``pending`` (a quick first start that
        :func:`core.live.WorkspaceVectors` without the limit then completes)."""
        report = progress or (lambda f, m: None)
        self.ws_path = ws.path
        self.settings = ws.settings()
        self.key = store.settings_key(self.settings)
        s = self.settings
        self.k_user, self.p = int(s["k"]), float(s["p"])
        self.classes = list(s["classes"])
        self.templates = list(s["templates"])
        self.image_encoder, self.text_encoder = s["image_encoder"], s["text_encoder"]
        self.cache = cache
        pairs = ws.all_pairs()
        self.pair_ids = np.array([p.pair_id for p in pairs], dtype=np.int64)
        self.captions = [p.caption for p in pairs]
        self.pair_refs = [p.image for p in pairs]
        #: the imported anchors (memory-mapped), or None: ``core.interchange.create_vector_workspace``
        self.imported = _imported(ws, self.pair_ids)
        n_imp = 0 if self.imported is None else self.imported.n_anchors
        unique: dict[str, int] = {}
        own = np.array([unique.setdefault(r, len(unique)) for r in self.pair_refs[n_imp:]], dtype=np.int64)
        if self.imported is None:
            self.pair_img, self.img_refs = own, list(unique)
        else:   # imported rows hold a picture each (rows of one picture alike): a pair's row is its
            leader, inverse = self.imported.distinct_images   # picture's first pair's
            self.pair_img = np.concatenate([leader[inverse], n_imp + own])
            self.img_refs = self.pair_refs[:n_imp] + list(unique)
        label_index = {c: i for i, c in enumerate(self.classes)}
        items = [e for e in ws.eval_items() if e.label in label_index]
        self.notes: list[str] = []
        n_img, n_items, n_cap = len(unique), len(items), len(self.captions) - n_imp
        total = max(1.0, n_img + n_items + n_cap / 50)  # captions are ~50x cheaper to encode

        def stage(offset, weight, label):
            return lambda d, t: report(min(0.99, (offset + weight * d / max(t, 1)) / total),
                                       f"{label}: {d:,} of {t:,} computed (the rest are cached)")

        report(0.0, f"Reading {n_img:,} anchor pictures from the embedding cache")
        first = np.arange(n_img) < (n_img if first_images is None else first_images)
        res = _embed_where(self.image_encoder, [str(ws.resolve(r)) for r in unique], first, cache,
                           stage(0, n_img, "Embedding anchor pictures"))
        self.img = _stacked(self.imported, "image", res.vectors)
        img_ok = np.concatenate([np.ones(n_imp, bool), res.ok])
        bad_img = {n_imp + f.index: f.reason for f in res.failed}
        report(n_img / total, f"Reading {n_items:,} labeled pictures")
        res = _embed_where(self.image_encoder, [str(ws.resolve(e.image)) for e in items],
                           np.ones(n_items, bool), cache, stage(n_img, n_items, "Embedding labeled pictures"))
        keep = np.flatnonzero(res.ok)
        self.skipped_items = [Quarantined(items[f.index].item_id, items[f.index].image, f.reason)
                              for f in res.failed]
        self.items = [items[i] for i in keep]
        self.item_vecs = res.vectors[keep]
        self.item_labels = np.array([label_index[e.label] for e in self.items], dtype=np.int64)
        report((n_img + n_items) / total, f"Reading {n_cap:,} captions")
        res = _embed_where(self.text_encoder, self.captions[n_imp:], first[own], cache,
                           stage(n_img + n_items, n_cap / 50, "Embedding captions"))
        self.cap = _stacked(self.imported, "text", res.vectors)
        self.ok = img_ok[self.pair_img] & np.concatenate([np.ones(n_imp, bool), res.ok])
        bad_cap = {n_imp + f.index: f.reason for f in res.failed}
        failed = {i for i in np.flatnonzero(~self.ok) if int(self.pair_img[i]) in bad_img or i in bad_cap}
        self.quarantined = [
            Quarantined(int(self.pair_ids[i]), self.pair_refs[i],
                        bad_img.get(int(self.pair_img[i])) or bad_cap.get(i) or "could not be embedded")
            for i in sorted(failed)]
        #: pairs not embedded yet (``first_images`` left them for later)
        self.pending = int((~self.ok).sum()) - len(failed)
        prompts, self.prompt_classes = build_prompts(self.classes, self.templates)
        res = _embed_where(self.text_encoder, prompts, np.ones(len(prompts), bool), cache, None)
        if not res.ok.all():
            raise ValueError("The class prompts could not be embedded with the text encoder "
                             f"{self.text_encoder!r}.")
        self.prompts = res.vectors
        self.is_tune = self._split(s)
        self.pos_of = {int(pid): i for i, pid in enumerate(self.pair_ids)}
        report(1.0, "Embeddings ready")

    def _split(self, s: dict) -> np.ndarray:
        """Tuning mask ``[Q]``: items given as a separate test set are test, the rest tuning;
        otherwise the seeded stratified split (classes with one picture stay in tuning, noted)."""
        fixed = np.array([e.part == "test" for e in self.items], dtype=bool)
        if fixed.any():
            self.notes.append(f"Test part: the {int(fixed.sum()):,} pictures given as a separate test set.")
            return ~fixed
        is_tune = np.ones(len(self.items), dtype=bool)
        counts = np.bincount(self.item_labels, minlength=len(self.classes))
        small = [self.classes[c] for c in np.flatnonzero((counts > 0) & (counts < 2))]
        if small:
            self.notes.append(f"Classes with fewer than 2 labeled pictures ({', '.join(small[:5])}) "
                              "cannot be split; their pictures count as tuning only.")
        sel = np.flatnonzero(counts[self.item_labels] >= 2)
        if sel.size:
            is_tune[sel] = stratified_split([self.items[i].image for i in sel], self.item_labels[sel],
                                            float(s["tune_fraction"]), int(s["split_seed"]))
        return is_tune

    def metadata(self, positions: Iterable[int]) -> list[dict]:
        return [{"image": self.pair_refs[i], "caption": self.captions[i]} for i in positions]

    def positions(self, pair_ids: Iterable[int]) -> np.ndarray:
        return np.array([self.pos_of[int(i)] for i in pair_ids], dtype=np.int64)

    def embed_picture(self, image) -> np.ndarray:
        """``[di]`` for a PIL image, a file path or image bytes (``ValueError`` if unreadable)."""
        from core.embedded import embed

        if isinstance(image, Path):
            image = str(image)
        res = embed(self.image_encoder, [image], cache=self.cache)
        if not res.ok[0]:
            raise ValueError("That picture could not be read: " + (res.failed[0].reason if res.failed
                                                                   else "unknown format") + ".")
        return res.vectors[0]

    def embed_pairs(self, pairs: Sequence[tuple[str, str]], resolve) -> tuple[np.ndarray, np.ndarray]:
        """Vectors ``([m, di], [m, dt])`` of new ``(image_ref, caption)`` rows; ``ValueError`` naming
        the first picture that cannot be read (nothing is stored then)."""
        from core.embedded import embed

        res = embed(self.image_encoder, [str(resolve(r)) for r, _ in pairs], cache=self.cache)
        if res.failed or not res.ok.all():
            bad = res.failed[0] if res.failed else None
            raise ValueError(f"{len(pairs) - int(res.ok.sum())} of the pictures could not be read"
                             + (f" (e.g. {Path(bad.item).name}: {bad.reason})" if bad else "")
                             + "; nothing was added.")
        txt = embed(self.text_encoder, [c for _, c in pairs], cache=self.cache)
        return res.vectors, txt.vectors

    def extended(self, ids: Sequence[int], pairs: Sequence[tuple[str, str]], img: np.ndarray,
                 cap: np.ndarray) -> "WorkspaceVectors":
        """A copy that also holds the new pairs ``ids`` (their vectors already computed)."""
        out = object.__new__(WorkspaceVectors)
        out.__dict__.update(self.__dict__)
        n0 = 0 if self.imported is None else self.imported.n_anchors    # rows of imported pictures
        unique = {r: n0 + i for i, r in enumerate(self.img_refs[n0:])}
        rows, fresh = [], []
        for (ref, _), v in zip(pairs, img):
            if ref not in unique:
                unique[ref] = n0 + len(unique)
                fresh.append(v)
            rows.append(unique[ref])
        out.img_refs = self.img_refs[:n0] + list(unique)
        out.img = self.img.appended(np.asarray(fresh, np.float32).reshape(-1, self.img.shape[1]))
        out.pair_ids = np.concatenate([self.pair_ids, np.asarray(ids, np.int64)])
        out.pair_img = np.concatenate([self.pair_img, np.asarray(rows, np.int64)])
        out.cap = self.cap.appended(np.asarray(cap, np.float32))
        out.ok = np.concatenate([self.ok, np.ones(len(ids), bool)])
        out.captions = self.captions + [c for _, c in pairs]
        out.pair_refs = self.pair_refs + [r for r, _ in pairs]
        out.pos_of = {int(pid): i for i, pid in enumerate(out.pair_ids)}
        return out


def _imported(ws: store.Workspace, pair_ids: np.ndarray) -> AsifModel | None:
    """The workspace's imported anchors (:func:`core.interchange.create_vector_workspace`), mapped
    from its vectors folder; None for a workspace whose pairs are embedded here."""
    if not ws.vectors_dir.is_dir():
        return None
    model = AsifModel.open_mapped(ws.vectors_dir, store.VECTORS_KEY)
    if model is None or model.n_anchors > pair_ids.size \
            or not np.array_equal(model.pair_ids, pair_ids[:model.n_anchors]):
        raise ValueError("This workspace's imported vectors cannot be read (its vectors folder is damaged); "
                         "create it again from the precomputed vectors.")
    return model


def _stacked(imported: AsifModel | None, side: str, own: np.ndarray) -> StackedRows:
    """One side's rows: the imported anchors' (mapped, never copied), then those embedded here."""
    if imported is None:
        return StackedRows(own)
    base = imported.image_embeddings if side == "image" else imported.text_embeddings
    return StackedRows(base, own.reshape(-1, base.shape[1]) if own.size else None)


def _embed_where(encoder: str, items: list, compute: np.ndarray, cache: EmbeddingCache, progress):
    """``core.embedded.embed`` of ``items``, computing only where ``compute`` is True (the rest
    are read from the cache if there, else left out: ``ok`` False, not failed)."""
    from core.embedded import EmbedResult, embed

    if compute.all() or not len(items):
        return embed(encoder, items, cache=cache, progress=progress)
    on, off = np.flatnonzero(compute), np.flatnonzero(~compute)
    a = embed(encoder, [items[i] for i in on], cache=cache, progress=progress)
    b = embed(encoder, [items[i] for i in off], cache=cache, compute=False)
    vectors = np.zeros((len(items), a.vectors.shape[1]), np.float32)
    ok = np.zeros(len(items), bool)
    vectors[on], vectors[off], ok[on], ok[off] = a.vectors, b.vectors, a.ok, b.ok
    failed = tuple(type(f)(int(on[f.index]), f.item, f.reason) for f in a.failed)
    return EmbedResult(vectors=vectors, ok=ok, failed=failed, hits=a.hits + b.hits, computed=a.computed)


# ------------------------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class Metrics:
    """The numbers of a model on both parts of the labeled set: ``tune`` (what choices read),
    ``test`` (the honest, held-out figure), ``accuracy`` over both; per class ``[C]`` lists."""

    tune: float
    test: float
    accuracy: float
    per_class_tune: list
    per_class_test: list
    n_tune: int
    n_test: int
    n_anchors: int
    k: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, predictions: np.ndarray, labels: np.ndarray, is_tune: np.ndarray, n_classes: int,
           n_anchors: int, k: int) -> "Metrics":
        correct = predictions == labels

        def acc(mask):
            return float(correct[mask].mean()) if mask.any() else float("nan")

        def per_class(mask):
            out = []
            for c in range(n_classes):
                m = mask & (labels == c)
                out.append(float(correct[m].mean()) if m.any() else None)
            return out

        test = ~is_tune
        return cls(acc(is_tune), acc(test), acc(np.ones_like(is_tune)), per_class(is_tune),
                   per_class(test), int(is_tune.sum()), int(test.sum()), int(n_anchors), int(k))

    def test_noise(self) -> float:
        """Two standard errors of the test accuracy (binomial): differences below this are noise."""
        if not self.n_test or self.test != self.test:
            return float("nan")
        return 2.0 * float(np.sqrt(max(self.test * (1 - self.test), 1e-12) / self.n_test))

    def fitting_tuning(self, start: "Metrics | dict | None") -> str | None:
        """A plain warning when the tuning gain since ``start`` exceeds the test gain by more than
        the test part's noise (:meth:`test_noise`): the edits are fitting the tuning pictures."""
        if start is None or not self.n_test:
            return None
        s = start if isinstance(start, dict) else start.to_dict()
        if s.get("tune") is None or s.get("test") is None:
            return None
        gap = (self.tune - s["tune"]) - (self.test - s["test"])
        noise = self.test_noise()
        if gap > noise:
            return (f"Since the start, tuning accuracy rose {100 * (self.tune - s['tune']):+.1f} points but "
                    f"test accuracy {100 * (self.test - s['test']):+.1f}: a gap of {100 * gap:.1f} points, "
                    f"more than the test part's noise (2 standard errors = {100 * noise:.1f} points). "
                    "The edits are fitting the tuning pictures; trust the test figure.")
        return None


@dataclass(frozen=True)
class EditOutcome:
    """A committed edit: the log row ``seq``, what it did, the metrics before and after."""

    seq: int
    op: store.Operation
    before: Metrics
    after: Metrics
    n_changed: int
    elapsed_ms: float

    def message(self) -> str:
        """One sentence for the page, e.g. ``Removed pair #12: test 41.0 % → 41.5 %, …``."""
        op, n = self.op, self.n_changed
        ids = op.pair_ids
        what = f"pair #{ids[0]}" if len(ids) == 1 else f"{len(ids):,} pairs"
        head = {"remove": f"Removed {what}", "add": f"Added {what}",
                "undo": f"Undid the {op.target.describe() if op.target else 'edit'}",
                "redo": f"Redid the {op.target.describe() if op.target else 'edit'}"}[op.kind]
        return (f"{head}: test {_pct(self.before.test)} → {_pct(self.after.test)}, tuning "
                f"{_pct(self.before.tune)} → {_pct(self.after.tune)}; {n:,} prediction{'s' if n != 1 else ''} "
                f"changed (re-scored in {self.elapsed_ms:.0f} ms).")


def _pct(x: float) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


@dataclass(frozen=True)
class WhatIf:
    """A previewed edit (nothing committed)."""

    before: Metrics
    after: Metrics
    n_changed: int
    elapsed_ms: float


# ------------------------------------------------------------------------------------ snapshots
# Building the engine means finding every labeled picture's and class prompt's nearest anchors
# (seconds at 35k anchors x 10k pictures). The result depends only on the vectors, the live pairs
# and k, so it is kept in the workspace's state/ folder as plain arrays (no pickles), keyed by a
# fingerprint of the inputs, and a later start loads it instead of recomputing.
def _fingerprint(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        step = max(1, len(a) // 512) if a.ndim else 1
        h.update(np.ascontiguousarray(a[::step] if a.ndim else a).tobytes())
    return h.hexdigest()[:24]


def _session_with_snapshot(path: Path, build: Callable[[dict | None], EditSession]) -> EditSession:
    saved = None
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                saved = {k: f[k] for k in f.files}
        except (OSError, ValueError):
            saved = None
    session = build(saved)
    if saved is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for old in path.parent.glob("neighbours-*.npz"):
                old.unlink(missing_ok=True)  # one snapshot per workspace is enough
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **session.neighbour_state())
            os.replace(tmp, path)
        except OSError:
            pass  # the snapshot is an optimisation only
    return session


# ------------------------------------------------------------------------------------ the live model
class LiveModel:
    """A workspace's current anchor set as an incremental :class:`core.edits.EditSession`.

    ``seq`` is the last log row the model reflects; ``k`` is the user's k unless fewer pairs are
    active (``k_note`` then says so). Thread-safe: edits and syncs hold ``lock``.
    """

    def __init__(self, ws: store.Workspace, vectors: WorkspaceVectors, progress: ProgressFn | None = None):
        self.ws = ws
        self.vectors = vectors
        self.lock = threading.RLock()
        state = ws.state()
        active = self._modelled(state.active)
        if not active:
            raise ValueError("This workspace has no usable anchor pairs; add some on the Curate page.")
        if len(vectors.item_labels) == 0:
            raise ValueError("This workspace has no labeled pictures of its classes; add some on the Data "
                             "page or change the class list in Settings.")
        self.k = store.effective_k(vectors.k_user, len(active))
        imported = vectors.imported
        # a workspace of imported vectors opens over all of them (mapped, not copied), then its log applies
        opened = active if imported is None or imported.n_anchors < self.k else imported.pair_ids.tolist()
        model = self._model_over(opened, self.k)
        model.metadata = vectors.metadata(vectors.positions(opened))
        model.info = {"image_encoder": vectors.image_encoder, "text_encoder": vectors.text_encoder}
        self._opened = model                 # current_model() while the live pairs are exactly these
        key = _fingerprint(model.image_embeddings, model.text_embeddings, vectors.item_vecs, vectors.prompts,
                           vectors.prompt_classes, model.pair_ids, np.array([self.k, vectors.p]))
        self.session = _session_with_snapshot(
            ws.state_dir / f"neighbours-{key}.npz",
            lambda saved: EditSession(model, vectors.item_vecs, vectors.item_labels, vectors.prompts,
                                      vectors.prompt_classes, class_names=vectors.classes,
                                      neighbours=saved, progress=progress))
        self.seq, self.version = (state.seq if opened is active or state.seq == 0 else None), 0
        self._sync_to(state)
        self.version = 0  # bumped by every change of the anchor set
        self._uid = uuid.uuid4().hex  # tells this model from a rebuilt one (whose version starts at 0 again)
        self.needs_rebuild: str | None = None
        if ws.baseline(self.key) is None:
            ws.set_baseline(self._start_metrics(state), self.key)

    def _start_metrics(self, state: store.LogState) -> dict:
        """The numbers of the unedited anchor set (the workspace's base pairs) under the current
        settings: the timeline's first point and the headline's "vs. start". With edits in the log
        (settings changed after editing) the base set is classified afresh, without an edit session."""
        if state.seq == 0:
            return self.metrics().to_dict()
        v = self.vectors
        base = self._modelled(self.ws.base_pair_ids())
        if not base:
            return Metrics.of(np.full(len(v.item_labels), -1), np.asarray(v.item_labels), self.is_tune,
                              len(v.classes), 0, self.k).to_dict()
        k = store.effective_k(v.k_user, len(base))
        pred = self._model_over(base, k).classify(v.item_vecs, v.prompts, v.prompt_classes,
                                                  n_classes=len(v.classes)).predictions
        return Metrics.of(pred, np.asarray(v.item_labels), self.is_tune, len(v.classes), len(base), k).to_dict()

    def _model_over(self, ids: Sequence[int], k: int) -> AsifModel:
        """An :class:`AsifModel` of the pairs ``ids`` (sorted) with the workspace's p and image
        index settings: the imported anchors themselves (mapped, shared) when ``ids`` are exactly
        them, else a copy of their rows."""
        v, imported = self.vectors, self.vectors.imported
        if imported is not None and np.array_equal(np.asarray(ids, np.int64), imported.pair_ids):
            model = imported.with_params(k=k, p=v.p)
        else:
            pos = v.positions(ids)
            model = AsifModel(v.img[v.pair_img[pos]], v.cap[pos], v.pair_ids[pos], k=k, p=v.p)
        model.ann = self.ann_settings()      # the session's lists come from the saved index too
        return model

    # ------------------------------------------------------------------ state
    @property
    def is_tune(self) -> np.ndarray:
        """``[Q]`` True for the tuning pictures (what choices read)."""
        return self.vectors.is_tune

    @property
    def key(self) -> str:
        """What this model's numbers are for: the settings, marked while a quick first start still
        leaves pairs pending (its numbers are for fewer pairs, so they are kept apart)."""
        return self.vectors.key + ("|first-start" if self.vectors.pending else "")

    @property
    def stamp(self) -> tuple[str, int]:
        """What a cache of this model's numbers keys on: it changes with every change of the anchor
        set, and a rebuilt model (another k, settings or workspace) never shares one with its
        predecessor, whose version counted from 0 too."""
        return self._uid, self.version

    @property
    def k_note(self) -> str | None:
        if self.k < self.vectors.k_user:
            return (f"k = {self.vectors.k_user:,} is more than the {self.session.n_anchors:,} usable anchor "
                    f"pairs, so the model uses k = {self.k:,} (all of them) until you add pairs or lower k "
                    "in Settings.")
        return None

    def metrics(self, predictions: np.ndarray | None = None) -> Metrics:
        s = self.session
        return Metrics.of(s.predictions if predictions is None else predictions, s.labels, self.is_tune,
                          s.n_classes, s.n_anchors, self.k)

    @property
    def n_anchors(self) -> int:
        return self.session.n_anchors

    def active_ids(self) -> set[int]:
        return {int(i) for i in self.session.pair_ids}

    def _modelled(self, ids: Iterable[int]) -> list[int]:
        """The ids among ``ids`` the model can hold (known and not quarantined), sorted."""
        v = self.vectors
        return sorted(int(i) for i in ids if int(i) in v.pos_of and v.ok[v.pos_of[int(i)]])

    def ann_settings(self) -> AnnSettings:
        """The image side's FAISS settings: indexes saved per anchor set in the workspace, used from
        the workspace's ``ann_min_anchors`` setting (default :data:`core.ann.ANN_MIN_ANCHORS`)."""
        return AnnSettings(folder=str(self.ws.state_dir / "ann"),
                           min_anchors=int(self.vectors.settings.get("ann_min_anchors", ANN_MIN_ANCHORS)))

    def current_model(self) -> AsifModel:
        """The live pairs as a :class:`core.asif.AsifModel` (cached until the next edit). While they
        are exactly the pairs the model opened with (no edit yet, or every edit undone) that is the
        opened model itself, its arrays and image index shared with the session. After an edit it is
        :meth:`core.asif.AsifModel.over_rows` of the opened model: the live rows are not copied (both
        sides would be ~9.8 GB at 1.6M pairs); its searches go through the opened model's indexes,
        ``SUBSET_MAX_LEFT_OUT`` removed pairs deep; with more removed the live rows are copied and
        indexed again unless the copy would exceed ``COPY_MAX_BYTES`` (then the searches go deeper)."""
        with self.lock:
            cached = getattr(self, "_model", None)
            if cached is None or cached[0] != self.version:
                self._model = cached = None          # the previous copy goes before another is made
                a, s, n0 = self.session.anchors, self.session, self._opened.n_anchors
                rows = a.alive_rows()
                left_out = n0 - int(np.searchsorted(rows, n0))
                if a.size == rows.size == n0:
                    model = self._opened             # rows 0..n-1 of the session are the opened model's
                elif left_out <= SUBSET_MAX_LEFT_OUT or \
                        4 * rows.size * (a.img.shape[1] + a.txt.shape[1]) > COPY_MAX_BYTES:
                    m = a.size - n0
                    model = AsifModel.over_rows(
                        self._opened, a.img.extra[:m], a.txt.extra[:m], a.ids[n0:a.size],
                        None if a.metadata is None else a.metadata[n0:a.size], rows, k=s.k, p=s.p,
                        info=s.info, template_strategy=s.strategy, temperature=s.temperature)
                else:
                    model = s.current_model()
                    model.ann = self.ann_settings()
                self._model = (self.version, model)
            return self._model[1]

    # ------------------------------------------------------------------ sync
    def sync(self) -> bool:
        """Catch up with edits other processes or sessions committed (True when the model changed).
        Cheap when nothing changed: one query of the log's last sequence number."""
        with self.lock:
            state = self.ws.state()
            if state.seq == self.seq:
                return False
            with self.ws.transaction() as tx:
                self._sync_to(tx.state())
            return True

    def _sync_to(self, state: store.LogState) -> None:
        if state.seq == self.seq:
            return
        want = set(self._modelled(state.active) + [int(i) for i in state.active
                                                   if int(i) not in self.vectors.pos_of])
        have = self.active_ids()
        gone, new = sorted(have - want), sorted(want - have)
        if gone:
            self.session.remove(gone)
        if new:
            self._activate(new)
        self.seq = state.seq
        self.version += 1

    def _activate(self, ids: Sequence[int]) -> None:
        """Make pairs live: restore those the session knows, add those whose vectors it lacks (a
        pair another process added is read from the store and embedded first, usually cached)."""
        known = self.session.knows
        fresh = [i for i in ids if not known(i) and i not in self.vectors.pos_of]
        if fresh:
            rows = {p.pair_id: p for p in self.ws.all_pairs()}
            pairs = [(rows[i].image, rows[i].caption) for i in fresh]
            img, cap = self.vectors.embed_pairs(pairs, self.ws.resolve)
            self.vectors = self.vectors.extended(fresh, pairs, img, cap)
        back = [i for i in ids if known(i)]
        if back:
            self.session.restore(back)
        new = [i for i in ids if not known(i)]
        if new:
            v = self.vectors
            pos = v.positions(new)
            self.session.add(v.img[v.pair_img[pos]], v.cap[pos], pair_ids=np.asarray(new, np.int64),
                             metadata=v.metadata(pos))

    # ------------------------------------------------------------------ the one edit path
    def _edit(self, plan: Callable[[store.LogState], store.Operation],
              prepared: Callable[[store.Operation], None] | None = None) -> EditOutcome:
        with self.lock:
            if self.needs_rebuild:
                raise ValueError(self.needs_rebuild)
            t0 = time.perf_counter()
            applied = None
            before = None
            try:
                with self.ws.transaction() as tx:
                    state = tx.state()
                    self._sync_to(state)
                    op = plan(state)
                    before_pred = self.session.predictions
                    before = self.metrics()
                    if prepared is not None:
                        prepared(op)
                    self._apply(op)
                    applied = op
                    after = self.metrics()
                    seq = tx.append(op, after.to_dict(), self.key)
            except BaseException:
                if applied is not None:
                    self._revert(applied)
                raise
            self.seq = seq
            self.version += 1
            k_now = store.effective_k(self.vectors.k_user, self.session.n_anchors)
            if k_now != self.k:
                self.needs_rebuild = (f"The model is being rebuilt with k = {k_now:,} now that "
                                      f"{self.session.n_anchors:,} pairs are active.")
            changed = int((self.session.predictions != before_pred).sum())
            return EditOutcome(seq, applied, before, after, changed, (time.perf_counter() - t0) * 1000)

    def _apply(self, op: store.Operation) -> None:
        ids = [int(i) for i in op.pair_ids]
        if op.effect == "remove":
            ids = self.session.live_among(ids)  # quarantined pairs are not in the model
            if ids:
                self.session.remove(ids)
        else:
            ids = [i for i in ids if i not in self.vectors.pos_of or self.vectors.ok[self.vectors.pos_of[i]]]
            if ids:
                self._activate(ids)

    def _revert(self, op: store.Operation) -> None:
        """Undo ``op`` on the model after its transaction failed; if even that fails, the model
        asks to be rebuilt from the log (it never serves numbers that disagree with the disk)."""
        try:
            ids = [int(i) for i in op.pair_ids]
            if op.effect == "remove":
                live = set(self.session.live_among(ids))
                self.session.restore([i for i in ids if self.session.knows(i) and i not in live])
            else:
                self.session.remove(self.session.live_among(ids))
                if op.new_pairs:
                    # the rolled-back ids may be given to other pairs later: start afresh
                    self.needs_rebuild = "The model is being rebuilt after a failed addition."
        except Exception:  # noqa: BLE001 - the fallback below is always safe
            self.needs_rebuild = "The model is being rebuilt after a failed edit."

    def remove(self, pair_ids: Iterable[int], *, note: str = "") -> EditOutcome:
        """Remove pairs (one logged edit)."""
        ids = list(pair_ids)
        return self._edit(lambda s: store.plan_remove(s, ids, min_active=self.k, note=note))

    def add(self, pairs: Sequence[tuple[str, str]], *, note: str = "") -> EditOutcome:
        """Add ``(image_ref, caption)`` pairs (one logged edit). Their pictures are embedded first;
        one that cannot be read refuses the whole addition (``ValueError``) and stores nothing."""
        pairs = [(str(r), str(c).strip()) for r, c in pairs]
        store.check_new_pairs(pairs)  # the rules, before anything is embedded
        img, cap = self.vectors.embed_pairs(pairs, self.ws.resolve)

        def prepared(op: store.Operation) -> None:
            self.vectors = self.vectors.extended(op.pair_ids, op.new_pairs, img, cap)

        old = self.vectors
        try:
            return self._edit(lambda s: store.plan_add(s, pairs, note=note), prepared)
        except BaseException:
            self.vectors = old
            raise

    def undo(self, *, expected_seq: int | None = None) -> EditOutcome:
        """Undo the latest user edit; ``expected_seq`` is the edit the page offered (a different one
        on top of the log raises :class:`core.store.StaleView`)."""
        return self._edit(lambda s: store.plan_undo(s, expected_seq=expected_seq, min_active=self.k))

    def redo(self, *, expected_seq: int | None = None) -> EditOutcome:
        return self._edit(lambda s: store.plan_redo(s, expected_seq=expected_seq, min_active=self.k))

    # ------------------------------------------------------------------ previews
    def what_if_remove(self, pair_ids: Iterable[int]) -> WhatIf:
        """Metrics if these pairs were removed (nothing committed)."""
        with self.lock:
            ids = self.session.live_among(pair_ids)
            if not ids:
                raise ValueError("None of the selected pairs is in the current anchor set.")
            r = self.session.what_if_remove(ids)
            return WhatIf(self.metrics(), self.metrics(r.predictions), r.n_changed, r.elapsed_ms)

    # ------------------------------------------------------------------ single pictures
    def explain(self, q: np.ndarray):
        """:class:`core.asif.Explanation` of one picture vector ``[di]`` under the live pairs."""
        v = self.vectors
        return self.current_model().explain(q, v.prompts, v.prompt_classes, class_names=v.classes)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(scores)[None], self.session.temperature)[0]

    # ------------------------------------------------------------------ influence
    def influence(self, progress: ProgressFn | None = None) -> tuple[Influence, int]:
        """Exact leave-one-out influence of every live pair on the TUNING pictures and the model
        version it describes, computed on a copy of the engine (edits stay possible meanwhile)."""
        import copy

        with self.lock:
            snapshot, version = copy.deepcopy(self.session), self.version
        return snapshot.influence(progress=progress, eval_mask=self.is_tune), version

    def influence_rows(self, inf: Influence) -> dict[str, np.ndarray | list]:
        """The table of ``inf`` as columns (``Influence.COLUMNS`` plus each pair's ``image`` and
        ``caption``), most harmful first (``pandas.DataFrame`` takes it as it is)."""
        cols: dict[str, np.ndarray | list] = dict(inf.columns())
        pos = self.vectors.positions(cols["pair_id"])
        cols["image"] = [self.vectors.pair_refs[i] for i in pos.tolist()]
        cols["caption"] = [self.vectors.captions[i] for i in pos.tolist()]
        return cols
