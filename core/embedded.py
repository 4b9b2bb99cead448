"""The one pipeline from a source to vectors: encoders -> embedding cache -> embedded sets.

ASIF needs two frozen encoders' vectors of the anchor pairs (paper, step 1: embed the multimodal
dataset), of the queries and of the class prompts. Everything in Rosetta that turns files into
vectors goes through here, so each item is encoded once per encoder and model version:

* :func:`embed` — items (image paths / in-memory images, or texts) by encoder name through an
  :class:`core.cache.EmbeddingCache`. Only unique missing keys are computed; a fully cached list is
  read without loading the model. An item that cannot be decoded is skipped and reported
  (:class:`EmbedResult` ``.failed``), never failing the batch.
* :class:`EmbeddedPairs` — anchor pairs: unique image vectors ``[U, di]``, the image row of each pair
  ``[P]``, caption vectors ``[P, dt]``; from a :class:`core.data.PairSet` or from plain lists.
* :class:`EmbeddedLabeled` — labeled images (queries): vectors ``[N, di]``, labels ``[N]``.
* :func:`embed_prompts` — class x template prompts ``[C*T, dt]`` with their classes ``[C*T]``.

Typical use::

    cache = EmbeddingCache()                           # owned by the caller, passed in
    anchors = EmbeddedPairs.from_pairset(load_pairs(folder), "efficientnet-lite0", "minilm",
                                         cache=cache)
    test = EmbeddedLabeled.from_labeled(load_labeled(test_folder), "efficientnet-lite0", cache=cache)
    prompts, prompt_classes = embed_prompts(test.class_names, DEFAULT_TEMPLATES, "minilm", cache=cache)
    model = AsifModel(anchors.pair_image_vectors, anchors.text_vectors, k=800, p=8)

``compute=False`` reads the cache only (benchmarks that must not encode): items not cached are
left out and counted as missing.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from core.cache import FLUSH_EVERY, FLUSH_SECONDS, EmbeddingCache, as_key, item_key, text_key
from core.encoders import BUILTIN_ENCODERS, Encoder

Progress = Callable[[int, int], None]

#: Reason recorded for an item left out because ``compute=False`` and it is not cached.
NOT_CACHED = "not in the embedding cache (embedding was not allowed to compute)"


@dataclass(frozen=True)
class Skipped:
    """An item left out: ``index`` into the list ``of`` names, ``item`` (a path or a text, never
    file contents) and a one-sentence ``reason``. ``of``: "item" (the one list that was embedded),
    or, in an :class:`EmbeddedPairs`, "image" (its source's distinct images) or "caption" (its
    captions, one per pair row)."""

    index: int
    item: str
    reason: str
    of: str = "item"

    def __str__(self) -> str:
        return self.reason if self.item in self.reason else f"{self.item}: {self.reason}"


@dataclass(frozen=True, eq=False)
class EmbedResult:
    """Vectors of a list of items plus what the cache did for them.

    ``vectors [n, d]`` float32 (unit rows; zero rows where ``ok`` is False); ``ok [n]`` bool;
    ``failed``: items that could not be encoded (e.g. an unreadable image); items neither ``ok``
    nor failed were missing from the cache under ``compute=False``. ``hits`` counts items read from
    the cache, ``computed`` the unique items encoded now.
    """

    vectors: np.ndarray
    ok: np.ndarray
    failed: tuple[Skipped, ...]
    hits: int
    computed: int

    @property
    def missing(self) -> np.ndarray:
        """int64 indices of the items not cached (``compute=False``) and not failed."""
        bad = np.zeros(len(self.ok), dtype=bool)
        bad[[s.index for s in self.failed]] = True
        return np.flatnonzero(~self.ok & ~bad)


def _describe(item: Any, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"<in-memory image {index}>"


def _identity(encoder: str | Encoder, cache: EmbeddingCache) -> tuple[str, str, int]:
    """``(cache_id, modality, dim)``; a built-in name is answered without loading it."""
    if isinstance(encoder, str):
        info = BUILTIN_ENCODERS.get(encoder.strip())
        if info is not None:
            return info.cache_id, info.modality, info.dim
        encoder = cache.encoders.get(encoder)
    return encoder.cache_id, encoder.modality, int(encoder.dim)


def _keys_of(items: Sequence[Any], modality: str, cache: EmbeddingCache) -> list[bytes]:
    if modality == "text":
        return [text_key(t) for t in items]
    return [cache.file_key(x) if isinstance(x, (str, os.PathLike)) else item_key(x) for x in items]


class _Progress:
    """Monotonic ``progress(done, total)`` over the unique items to compute."""

    def __init__(self, callback: Progress | None, total: int):
        self.callback, self.total, self.done, self.shown = callback, total, 0, -1

    def show(self, done: int) -> None:
        if self.callback is not None and done > self.shown:
            self.shown = done
            self.callback(done, self.total)


def _encode_skipping(encoder: Encoder, items: list[Any], rows: list[int], batch_size: int | None,
                     progress: _Progress) -> tuple[dict[int, np.ndarray], list[Skipped]]:
    """Encode ``items`` (their positions ``rows``); a batch that raises ``ValueError`` is halved
    until the bad items are isolated, so one unreadable image costs one failed item, not a batch."""
    done: dict[int, np.ndarray] = {}
    failed: list[Skipped] = []

    def run(lo: int, hi: int) -> None:
        base = progress.done
        try:
            vecs = encoder.encode(items[lo:hi], batch_size=batch_size,
                                  progress=lambda d, _n: progress.show(base + d))
        except ValueError as error:
            if hi - lo == 1:
                failed.append(Skipped(rows[lo], _describe(items[lo], rows[lo]), str(error)))
                progress.done += 1
                progress.show(progress.done)
                return
            mid = (lo + hi) // 2
            run(lo, mid)
            run(mid, hi)
            return
        for j, v in zip(range(lo, hi), vecs):
            done[rows[j]] = v
        progress.done += hi - lo
        progress.show(progress.done)

    if items:
        run(0, len(items))
    return done, failed


def embed(encoder: str | Encoder, items: Sequence[Any], *, cache: EmbeddingCache,
          keys: Sequence[bytes | str] | None = None, progress: Progress | None = None,
          batch_size: int | None = None, compute: bool = True,
          flush_every: int = FLUSH_EVERY) -> EmbedResult:
    """Vectors of ``items`` by encoder name (or an encoder object) through ``cache``.

    Images are file paths, bytes or ``PIL.Image``; texts are ``str``. ``keys`` (32-byte digests or
    their hex, e.g. :attr:`core.data.PairSet.image_keys`) skip hashing. Only unique keys missing
    from the cache are encoded — the model is loaded (once, by ``cache.encoders``) only then — and
    they are written back every ``flush_every`` vectors or 30 s. An item the encoder cannot read
    is skipped and reported in ``failed``; the others are embedded and cached. With
    ``compute=False`` nothing is encoded. ``progress(done, total)`` counts unique items to compute.
    """
    items = list(items)
    model_id, modality, dim = _identity(encoder, cache)
    keys = _keys_of(items, modality, cache) if keys is None else [as_key(k) for k in keys]
    if len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    vectors, found = cache.lookup(model_id, keys)
    first: dict[bytes, int] = {}  # unique missing keys: the first occurrence computes
    for i in np.flatnonzero(~found).tolist():
        first.setdefault(keys[i], i)
    todo = list(first.values()) if compute else []
    if todo and isinstance(encoder, str):
        encoder = cache.encoders.get(encoder)
    if vectors is None:
        vectors = np.zeros((len(items), dim), dtype=np.float32)
    ok = found.copy()
    total = len(todo)
    counter = _Progress(progress, total)
    counter.show(0)
    failed: list[Skipped] = []
    step = max(1, min(flush_every, int(batch_size or getattr(encoder, "batch_size", 32)) * 4))
    pending: list[int] = []
    last_flush = time.monotonic()
    for start in range(0, total, step):
        chunk = todo[start:start + step]
        done, bad = _encode_skipping(encoder, [items[i] for i in chunk], chunk, batch_size, counter)
        failed += bad
        for i, v in done.items():
            vectors[i] = v
            ok[i] = True
        pending += list(done)
        # flush every `flush_every` vectors or FLUSH_SECONDS, so an interruption loses little
        if pending and (len(pending) >= flush_every or start + step >= total
                        or time.monotonic() - last_flush >= FLUSH_SECONDS):
            cache.put(model_id, [keys[i] for i in pending], vectors[pending])
            pending = []
            last_flush = time.monotonic()
    if todo:  # repeats of a computed (or failed) key share its outcome
        reason = {keys[s.index]: s.reason for s in failed}
        for i in np.flatnonzero(~found).tolist():
            j = first[keys[i]]
            if j != i:
                if ok[j]:
                    vectors[i], ok[i] = vectors[j], True
                elif keys[i] in reason:
                    failed.append(Skipped(i, _describe(items[i], i), reason[keys[i]]))
    failed.sort(key=lambda s: s.index)
    return EmbedResult(vectors=vectors, ok=ok, failed=tuple(failed), hits=int(found.sum()),
                       computed=len(todo))


def _missing_unique(cache: EmbeddingCache, model_id: str, keys: Sequence[bytes]) -> int:
    found = cache.contains(model_id, keys)
    return len({keys[i] for i in np.flatnonzero(~found).tolist()})


def _left_out(result: EmbedResult, items: Sequence[Any], of: str = "item") -> list[Skipped]:
    """Every item ``result`` has no vector for, failed or not cached, in index order, marked as
    indexing ``of``."""
    out = [Skipped(s.index, s.item, s.reason, of) for s in result.failed]
    out += [Skipped(int(i), _describe(items[i], int(i)), NOT_CACHED, of) for i in result.missing]
    return sorted(out, key=lambda s: s.index)


@dataclass(frozen=True, eq=False)
class EmbeddedPairs:
    """Embedded anchor pairs (paper step 1 on the multimodal dataset).

    ``image_vectors [U, di]`` one row per distinct image; ``pair_image [P]`` int64 the image row of
    each pair; ``text_vectors [P, dt]`` caption vectors; ``captions [P]``; ``images [U]`` the image
    paths (or refs) as given; ``pair_ids [P]`` the source's id of each pair (positions when the
    source has none); ``skipped``: images or captions whose vector could not be had (each says
    which, :attr:`Skipped.of`), with the reason — their pairs are left out.
    """

    image_vectors: np.ndarray
    pair_image: np.ndarray
    text_vectors: np.ndarray
    captions: list[str]
    images: list[str]
    image_encoder: str
    text_encoder: str
    pair_ids: list = field(default_factory=list)
    skipped: tuple[Skipped, ...] = ()

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def pair_image_vectors(self) -> np.ndarray:
        """``[P, di]`` the image vector of every pair."""
        return self.image_vectors[self.pair_image]

    @property
    def pair_paths(self) -> list[str]:
        """``[P]`` the image path (or ref) of every pair."""
        return [self.images[i] for i in self.pair_image.tolist()]

    def pairs_of_image(self, image_row: int) -> np.ndarray:
        """int64 positions of the pairs (captions) of image row ``image_row``."""
        return np.flatnonzero(self.pair_image == image_row)

    def subset(self, pair_indices: Iterable[int]) -> "EmbeddedPairs":
        """The chosen pairs, in the given order; images no chosen pair uses are dropped (rows
        renumbered by first use)."""
        sel = np.asarray(list(pair_indices), dtype=np.int64).reshape(-1)
        used = list(dict.fromkeys(self.pair_image[sel].tolist()))
        remap = np.full(len(self.images), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return replace(self, image_vectors=self.image_vectors[used],
                       pair_image=remap[self.pair_image[sel]],
                       text_vectors=self.text_vectors[sel],
                       captions=[self.captions[i] for i in sel.tolist()],
                       images=[self.images[i] for i in used],
                       pair_ids=[self.pair_ids[i] for i in sel.tolist()])

    def one_caption_per_image(self) -> "EmbeddedPairs":
        """The first pair of each image (in pair order), so no two pairs share an image — as in the
        paper's 5k COCO pairs; several captions of one picture are indistinguishable targets when
        matching pictures to captions."""
        return self.subset(first_pair_per_image(self.pair_image))

    @classmethod
    def from_items(cls, images: Sequence[Any], pair_image: Sequence[int] | np.ndarray,
                   captions: Sequence[str], image_encoder: str, text_encoder: str, *,
                   cache: EmbeddingCache, image_keys: Sequence[bytes | str] | None = None,
                   pair_ids: Sequence | None = None, progress: Progress | None = None,
                   compute: bool = True) -> "EmbeddedPairs":
        """Embed pairs given as plain lists: ``images [U]`` (paths, bytes or PIL images; each
        encoded once), ``pair_image [P]`` (row in ``images`` of each pair), ``captions [P]``.

        ``progress(done, total)`` counts the images then the captions that need computing. Pairs
        whose image or caption has no vector (unreadable image; not cached under ``compute=False``)
        are left out and their items listed in ``skipped``.
        """
        pair_image = np.asarray(pair_image, dtype=np.int64).reshape(-1)
        captions = list(captions)
        images = list(images)
        if len(pair_image) != len(captions):
            raise ValueError(f"{len(pair_image)} pair image rows for {len(captions)} captions")
        if len(pair_image) and (pair_image.min() < 0 or pair_image.max() >= len(images)):
            raise ValueError(f"pair_image must index the {len(images)} images")
        ikeys = _keys_of(images, "image", cache) if image_keys is None else \
            [as_key(k) for k in image_keys]
        ckeys = [text_key(t) for t in captions]
        total = 0
        n_img = 0
        if progress is not None and compute:
            n_img = _missing_unique(cache, _identity(image_encoder, cache)[0], ikeys)
            total = n_img + _missing_unique(cache, _identity(text_encoder, cache)[0], ckeys)

        def p_img(d: int, _t: int) -> None:
            if progress is not None:
                progress(d, total)

        def p_txt(d: int, _t: int) -> None:
            if progress is not None:
                progress(n_img + d, total)

        img = embed(image_encoder, images, cache=cache, keys=ikeys, progress=p_img, compute=compute)
        txt = embed(text_encoder, captions, cache=cache, keys=ckeys, progress=p_txt, compute=compute)
        keep = img.ok[pair_image] & txt.ok
        skipped = tuple(_left_out(img, images, "image")) + tuple(_left_out(txt, captions, "caption"))
        out = cls(image_vectors=img.vectors, pair_image=pair_image, text_vectors=txt.vectors,
                  captions=captions, images=[_describe(x, i) for i, x in enumerate(images)],
                  image_encoder=_name(image_encoder), text_encoder=_name(text_encoder),
                  pair_ids=list(pair_ids) if pair_ids is not None else list(range(len(captions))),
                  skipped=skipped)
        if len(out.pair_ids) != len(captions):
            raise ValueError(f"{len(out.pair_ids)} pair ids for {len(captions)} captions")
        return out if keep.all() else out.subset(np.flatnonzero(keep))

    @classmethod
    def from_pairset(cls, pairset: Any, image_encoder: str, text_encoder: str, *,
                     cache: EmbeddingCache, progress: Progress | None = None,
                     compute: bool = True) -> "EmbeddedPairs":
        """Embed a :class:`core.data.PairSet` (its image keys are used, so nothing is re-hashed);
        ``pair_ids`` are the set's ids. See :meth:`from_items`."""
        return cls.from_items(pairset.images, pairset.pair_image, pairset.captions, image_encoder,
                              text_encoder, cache=cache, image_keys=pairset.image_keys,
                              pair_ids=pairset.pair_ids, progress=progress, compute=compute)


def first_pair_per_image(pair_image: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 positions of the first pair of each image, in pair order (``pair_image [P]`` gives each
    pair's image)."""
    _, first = np.unique(np.asarray(pair_image, dtype=np.int64), return_index=True)
    return np.sort(first)


@dataclass(frozen=True, eq=False)
class EmbeddedLabeled:
    """Embedded labeled images (the queries of zero-shot classification).

    ``vectors [N, di]``; ``labels [N]`` int64 into ``class_names``; ``paths [N]``; ``skipped``:
    images (``index`` into the source) left out, with the reason.
    """

    vectors: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]
    encoder: str
    skipped: tuple[Skipped, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Iterable[int]) -> "EmbeddedLabeled":
        """The chosen images, in the given order."""
        sel = np.asarray(list(indices), dtype=np.int64).reshape(-1)
        return replace(self, vectors=self.vectors[sel], labels=self.labels[sel],
                       paths=[self.paths[i] for i in sel.tolist()])

    @classmethod
    def from_labeled(cls, labeled: Any, image_encoder: str, *, cache: EmbeddingCache,
                     progress: Progress | None = None, compute: bool = True) -> "EmbeddedLabeled":
        """Embed a :class:`core.data.LabeledSet` through ``cache`` (its keys are used); images
        without a vector are left out and listed in ``skipped``."""
        res = embed(image_encoder, labeled.paths, cache=cache, keys=labeled.keys,
                    progress=progress, compute=compute)
        out = cls(vectors=res.vectors, labels=np.asarray(labeled.labels, dtype=np.int64),
                  class_names=list(labeled.class_names), paths=list(labeled.paths),
                  encoder=_name(image_encoder), skipped=tuple(_left_out(res, labeled.paths)))
        return out if res.ok.all() else out.subset(np.flatnonzero(res.ok))


def embed_prompts(class_names: Sequence[str], templates: Sequence[str], text_encoder: str, *,
                  cache: EmbeddingCache) -> tuple[np.ndarray, np.ndarray]:
    """Class x template prompts (``core.asif.build_prompts``) embedded: ``(vectors [C*T, dt],
    prompt_classes [C*T])``."""
    from core.asif import build_prompts

    prompts, prompt_classes = build_prompts(list(class_names), list(templates))
    res = embed(text_encoder, prompts, cache=cache)
    if not res.ok.all():  # texts always encode; kept so a failure is never silent
        raise ValueError(f"could not embed prompt {str(res.failed[0])}")
    return res.vectors, np.asarray(prompt_classes, dtype=np.int64)


def _name(encoder: str | Encoder) -> str:
    return encoder if isinstance(encoder, str) else encoder.name
