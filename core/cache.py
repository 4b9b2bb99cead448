"""Embedding cache keyed by (model id + preprocessing version, SHA-256 of the content).

Layout, under ``ROSETTA_CACHE_DIR`` (default: the user cache dir, ``…/rosetta``)::

    embeddings/<slug>-<hash12>/meta.json           model id (encoder.cache_id), dim
    embeddings/<slug>-<hash12>/<shard>.vecs.npy    float32 [n, d] vectors of one append
    embeddings/<slug>-<hash12>/<shard>.keys.npy    uint8 [n, 32] SHA-256 digests, same order

Shards are append-only and written to a temporary name then renamed (the keys file last: its rename
commits the shard), so a reader never sees a half-written shard, and two processes filling the cache
at once each write their own shards (a key computed by both is harmless: the first one wins).
Reading memory-maps the vector files and indexes the (small) key files, so 35,000 cached vectors
load in a few tens of milliseconds. :meth:`EmbeddingCache.compact` merges shards under a file lock.

A file's key is the SHA-256 of its bytes (a renamed file hits, an edited one misses); a text's key
is the SHA-256 of its UTF-8 encoding; an in-memory ``PIL.Image`` is keyed by its mode, size and
pixels. Nothing cached is recomputed: :func:`embed` computes only the missing unique keys.

Typical use::

    from core.cache import embed_images, embed_texts
    X = embed_images("efficientnet-lite0", paths, progress=cb)   # float32 [n, 1280]
    T = embed_texts("minilm", captions)                           # float32 [m, 384]
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

Progress = Callable[[int, int], None]

KEY_BYTES = 32
#: Shards written while embedding are flushed at least every this many vectors …
FLUSH_EVERY = 4096
#: … or every this many seconds, whichever comes first …
FLUSH_SECONDS = 30.0
#: … and the directory is compacted automatically once it holds more shards than this.
AUTO_COMPACT_SHARDS = 64


def cache_root() -> Path:
    """``ROSETTA_CACHE_DIR`` or the per-user cache directory (``platformdirs``), ``…/rosetta``."""
    from core.encoders import rosetta_cache_dir

    return rosetta_cache_dir()


# ------------------------------------------------------------------------------------------ keys

def sha256_bytes(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def text_key(text: str) -> bytes:
    """SHA-256 digest (32 bytes) of a text's UTF-8 encoding."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


_FILE_KEYS: dict[tuple, bytes] = {}
_FILE_KEYS_LOCK = threading.Lock()


def file_key(path: str | os.PathLike) -> bytes:
    """SHA-256 digest of a file's bytes (memoised per process on path, size, mtime, inode)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _FILE_KEYS_LOCK:
        hit = _FILE_KEYS.get(memo)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    digest = h.digest()
    with _FILE_KEYS_LOCK:
        _FILE_KEYS[memo] = digest
    return digest


def item_key(item: Any) -> bytes:
    """Key of an image (path, bytes or PIL image) or a text."""
    if isinstance(item, str):
        raise TypeError("a str is ambiguous here: use text_key() or file_key()")
    if isinstance(item, (bytes, bytearray)):
        return sha256_bytes(bytes(item))
    if isinstance(item, os.PathLike):
        return file_key(item)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        h = hashlib.sha256(f"PIL:{item.mode}:{item.size}".encode())
        h.update(item.tobytes())
        return h.digest()
    raise TypeError(f"cannot key an item of type {type(item).__name__}")


def hex_to_key(hexdigest: str) -> bytes:
    return bytes.fromhex(hexdigest)


# --------------------------------------------------------------------------------------- storage

@dataclass
class _ModelIndex:
    """In-memory index of one model directory: key -> (shard number, row)."""

    dim: int | None = None
    shards: list[str] = field(default_factory=list)  # shard stems, index = shard number
    vectors: list[np.ndarray] = field(default_factory=list)  # memory maps
    index: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


class EmbeddingCache:
    """Append-only, memory-mapped, multi-process-safe vector store with hit/miss counts."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.dir = self.root / "embeddings"
        self.hits = 0
        self.misses = 0
        self._models: dict[str, _ModelIndex] = {}
        self._lock = threading.RLock()

    # ----- paths
    @staticmethod
    def model_dirname(model_id: str) -> str:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.split("|")[0])[:60].strip("_") or "model"
        return f"{slug}-{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"

    def model_dir(self, model_id: str) -> Path:
        return self.dir / self.model_dirname(model_id)

    # ----- index
    def _refresh(self, model_id: str) -> _ModelIndex:
        """Pick up shards written since the last look (by this or another process)."""
        with self._lock:
            idx = self._models.setdefault(model_id, _ModelIndex())
            folder = self.model_dir(model_id)
            if not folder.is_dir():
                return idx
            stems = sorted(p.name[:-len(".keys.npy")] for p in folder.glob("*.keys.npy"))
            new = [s for s in stems if s not in idx.seen]
            if not new and idx.seen.issubset(stems):
                return idx
            if not idx.seen.issubset(stems):  # compacted by someone: rebuild from scratch
                idx = self._models[model_id] = _ModelIndex()
                new = stems
            for stem in new:
                try:
                    keys = np.load(folder / f"{stem}.keys.npy", allow_pickle=False)
                    vecs = np.load(folder / f"{stem}.vecs.npy", mmap_mode="r", allow_pickle=False)
                except (FileNotFoundError, ValueError, OSError):
                    continue  # removed by a concurrent compaction; the merged shard has it
                if vecs.ndim != 2 or len(vecs) != len(keys):
                    continue
                if idx.dim is None:
                    idx.dim = int(vecs.shape[1])
                elif vecs.shape[1] != idx.dim:
                    continue
                number = len(idx.shards)
                idx.shards.append(stem)
                idx.vectors.append(vecs)
                idx.seen.add(stem)
                index = idx.index
                for row, key in enumerate(_keys_from_array(keys)):
                    if key not in index:
                        index[key] = (number, row)
            return idx

    # ----- public API
    def lookup(self, model_id: str, keys: Sequence[bytes], count: bool = True
               ) -> tuple[np.ndarray | None, np.ndarray]:
        """Cached vectors for ``keys``.

        Returns ``(vectors [n, d] float32 or None when nothing is cached for the model, found bool[n])``;
        rows of missing keys are zero. Counts a hit or a miss per key unless ``count=False``.
        """
        idx = self._refresh(model_id)
        n = len(keys)
        found = np.zeros(n, dtype=bool)
        if idx.dim is None:
            if count:
                self.misses += n
            return None, found
        out = np.zeros((n, idx.dim), dtype=np.float32)
        shard_of = np.full(n, -1, dtype=np.int64)
        row_of = np.zeros(n, dtype=np.int64)
        get = idx.index.get
        for i, key in enumerate(keys):
            where = get(bytes(key))
            if where is not None:
                shard_of[i], row_of[i] = where
        found = shard_of >= 0
        for number in np.unique(shard_of[found]):
            sel = np.nonzero(shard_of == number)[0]
            rows = row_of[sel]
            order = np.argsort(rows, kind="stable")  # sequential reads from the memory map
            out[sel[order]] = idx.vectors[number][rows[order]]
        if count:
            hits = int(found.sum())
            self.hits += hits
            self.misses += n - hits
        return out, found

    def contains(self, model_id: str, keys: Sequence[bytes]) -> np.ndarray:
        """bool ``[n]``: which keys are cached (not counted as hits or misses)."""
        idx = self._refresh(model_id)
        return np.fromiter((bytes(k) in idx.index for k in keys), dtype=bool, count=len(keys))

    def put(self, model_id: str, keys: Sequence[bytes], vectors: np.ndarray) -> int:
        """Append ``vectors`` ``[n, d]`` under ``keys``; keys already cached are skipped.

        Returns the number of vectors written. Atomic: the shard appears whole or not at all.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(keys):
            raise ValueError(f"put needs vectors [n, d] with n = len(keys); got {vectors.shape} "
                             f"for {len(keys)} keys")
        idx = self._refresh(model_id)
        if idx.dim is not None and vectors.shape[1] != idx.dim:
            raise ValueError(f"model {model_id} has {idx.dim}-d vectors in the cache; got "
                             f"{vectors.shape[1]}-d")
        keep: list[int] = []
        chosen: set[bytes] = set()
        for i, key in enumerate(keys):
            key = bytes(key)
            if len(key) != KEY_BYTES:
                raise ValueError("cache keys are 32-byte SHA-256 digests")
            if key not in idx.index and key not in chosen:
                chosen.add(key)
                keep.append(i)
        if not keep:
            return 0
        key_array = _keys_to_array([bytes(keys[i]) for i in keep])
        vecs = vectors[keep]
        folder = self.model_dir(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if not meta.exists():
            _atomic_write_text(meta, json.dumps({"model_id": model_id, "dim": int(vecs.shape[1])}))
        stem = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        _atomic_save(folder / f"{stem}.vecs.npy", vecs)
        _atomic_save(folder / f"{stem}.keys.npy", key_array)  # commits the shard
        self._refresh(model_id)
        if len(self._models[model_id].shards) > AUTO_COMPACT_SHARDS:
            self.compact(model_id)
        return len(keep)

    def compact(self, model_id: str) -> int:
        """Merge a model's shards into one (under a file lock); returns the number of vectors."""
        from filelock import FileLock

        folder = self.model_dir(model_id)
        if not folder.is_dir():
            return 0
        with FileLock(str(folder / ".compact.lock")):
            with self._lock:
                self._models.pop(model_id, None)
                idx = self._refresh(model_id)
                if len(idx.shards) <= 1:
                    return len(idx.index)
                keys = list(idx.index)
                where = np.array([idx.index[k] for k in keys], dtype=np.int64).reshape(-1, 2)
                vecs = np.empty((len(keys), idx.dim), dtype=np.float32)
                for number in range(len(idx.shards)):
                    sel = np.nonzero(where[:, 0] == number)[0]
                    vecs[sel] = idx.vectors[number][where[sel, 1]]
                old = list(idx.shards)
                stem = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}-merged"
                _atomic_save(folder / f"{stem}.vecs.npy", vecs)
                _atomic_save(folder / f"{stem}.keys.npy", _keys_to_array(keys))
                for s in old:  # keys first, so no reader picks up a half-removed shard
                    for suffix in (".keys.npy", ".vecs.npy"):
                        try:
                            (folder / f"{s}{suffix}").unlink()
                        except FileNotFoundError:
                            pass
                self._models.pop(model_id, None)
                return len(self._refresh(model_id).index)

    def count(self, model_id: str) -> int:
        """Number of distinct vectors cached for a model."""
        return len(self._refresh(model_id).index)

    def stats(self) -> dict:
        """``{"hits", "misses"}`` counted by this cache object."""
        return {"hits": self.hits, "misses": self.misses}

    def reset_stats(self) -> None:
        self.hits = self.misses = 0

    def info(self) -> dict:
        """Location, total size in bytes, and per model: id, dim, vector count, bytes."""
        models = []
        total = 0
        if self.dir.is_dir():
            for folder in sorted(p for p in self.dir.iterdir() if p.is_dir()):
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                total += size
                try:
                    meta = json.loads((folder / "meta.json").read_text())
                except (OSError, ValueError):
                    meta = {"model_id": folder.name, "dim": None}
                model_id = meta.get("model_id")
                n = self.count(model_id) if model_id and \
                    self.model_dirname(model_id) == folder.name else 0
                models.append({"model_id": meta.get("model_id"), "dim": meta.get("dim"),
                               "vectors": n, "bytes": size, "folder": folder.name})
        return {"location": str(self.root), "bytes": total, "models": models,
                "hits": self.hits, "misses": self.misses}

    def clear(self, model_id: str | None = None) -> None:
        """Delete a model's vectors (or all of them)."""
        import shutil

        with self._lock:
            target = self.model_dir(model_id) if model_id else self.dir
            shutil.rmtree(target, ignore_errors=True)
            if model_id:
                self._models.pop(model_id, None)
            else:
                self._models.clear()


def _keys_to_array(keys: Sequence[bytes]) -> np.ndarray:
    """uint8 ``[n, 32]`` (not ``|S32``: numpy strips trailing zero bytes from fixed-size strings)."""
    if not keys:
        return np.zeros((0, KEY_BYTES), dtype=np.uint8)
    return np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, KEY_BYTES).copy()


def _keys_from_array(array: np.ndarray) -> list[bytes]:
    if array.dtype.kind == "S":  # legacy fixed-size strings: restore stripped trailing zeros
        return [k.ljust(KEY_BYTES, b"\0") for k in array.tolist()]
    raw = np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return [raw[i:i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_DEFAULT: dict[str, EmbeddingCache] = {}


def default_cache() -> EmbeddingCache:
    """The process-wide cache at :func:`cache_root` (re-created if ``ROSETTA_CACHE_DIR`` changes)."""
    root = str(cache_root())
    if root not in _DEFAULT:
        _DEFAULT[root] = EmbeddingCache(root)
    return _DEFAULT[root]


# ------------------------------------------------------------------------------------ embedding

@dataclass
class EmbedResult:
    """Vectors plus what the cache did for them."""

    vectors: np.ndarray  # float32 [n, d]
    hits: int
    computed: int


def embed(encoder: Any, items: Sequence[Any], keys: Sequence[bytes] | None = None,
          cache: EmbeddingCache | None = None, progress: Progress | None = None,
          batch_size: int | None = None, flush_every: int = FLUSH_EVERY) -> EmbedResult:
    """Encode ``items`` through the cache: only unique missing keys are computed, then stored.

    ``encoder`` is an encoder name or object; ``keys`` (32-byte digests, e.g. from
    :class:`core.data.PairSet`) skip hashing. ``progress(done, total)`` counts items to compute.
    Returns :class:`EmbedResult` with ``vectors`` float32 ``[n, d]``.
    """
    from core.encoders import BUILTIN_ENCODERS, cache_id_of, get_encoder

    name = encoder if isinstance(encoder, str) else None
    cache = cache or default_cache()
    items = list(items)
    if name is not None and name in BUILTIN_ENCODERS:
        model_id, modality = cache_id_of(name), BUILTIN_ENCODERS[name].modality
    else:
        if name is not None:
            encoder = get_encoder(name)
        model_id, modality = encoder.cache_id, encoder.modality
    if keys is None:
        if modality == "text":
            keys = [text_key(t) for t in items]
        else:
            keys = [file_key(x) if isinstance(x, str) else item_key(x) for x in items]
    keys = [bytes(k) if not isinstance(k, str) else hex_to_key(k) for k in keys]
    if len(keys) != len(items):
        raise ValueError("keys and items differ in length")
    vectors, found = cache.lookup(model_id, keys)
    missing = np.nonzero(~found)[0]
    if len(missing) and isinstance(encoder, str):
        encoder = get_encoder(encoder)  # loaded only when something must be computed
    if vectors is None:
        dim = encoder.dim if not isinstance(encoder, str) else BUILTIN_ENCODERS[encoder].dim
        vectors = np.zeros((len(items), dim), dtype=np.float32)
    # unique missing keys, first occurrence computes
    first: dict[bytes, int] = {}
    for i in missing.tolist():
        first.setdefault(keys[i], i)
    todo = list(first.values())
    total = len(todo)
    if progress is not None:
        progress(0, total)
    done = 0
    step = max(1, min(flush_every, int(batch_size or getattr(encoder, "batch_size", 32)) * 4))
    pending: list[int] = []
    last_flush = time.monotonic()
    for start in range(0, total, step):
        chunk = todo[start:start + step]
        offset = done

        def chunk_progress(d: int, _n: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + d, total)

        vecs = encoder.encode([items[i] for i in chunk], batch_size=batch_size,
                              progress=chunk_progress)
        vectors[chunk] = vecs
        pending.extend(chunk)
        done += len(chunk)
        # flush every `flush_every` vectors or FLUSH_SECONDS, so an interruption loses little
        if len(pending) >= flush_every or time.monotonic() - last_flush >= FLUSH_SECONDS \
                or done == total:
            cache.put(model_id, [keys[i] for i in pending], vectors[pending])
            pending = []
            last_flush = time.monotonic()
    if total:
        # fill duplicates of computed keys
        computed = {keys[i]: vectors[i] for i in todo}
        for i in missing.tolist():
            vectors[i] = computed[keys[i]]
    return EmbedResult(vectors=vectors, hits=int(found.sum()), computed=total)


def embed_images(encoder: Any, images: Sequence[Any], keys: Sequence[bytes] | None = None,
                 cache: EmbeddingCache | None = None, progress: Progress | None = None,
                 batch_size: int | None = None) -> np.ndarray:
    """Image embeddings ``[n, d]`` float32 (unit rows) through the cache."""
    return embed(encoder, images, keys, cache, progress, batch_size).vectors


def embed_texts(encoder: Any, texts: Sequence[str], cache: EmbeddingCache | None = None,
                progress: Progress | None = None, batch_size: int | None = None) -> np.ndarray:
    """Text embeddings ``[n, d]`` float32 (unit rows) through the cache."""
    return embed(encoder, texts, None, cache, progress, batch_size).vectors


def embed_pairs(pairs: Any, image_encoder: Any, text_encoder: Any,
                cache: EmbeddingCache | None = None, progress: Progress | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair embeddings of a :class:`core.data.PairSet`: ``(images [P, d_i], captions [P, d_t])``.

    Each distinct image is encoded once; image rows are gathered per pair. ``progress(done, total)``
    counts the images and captions that need computing (images first).
    """
    from core.encoders import cache_id_of

    cache = cache or default_cache()

    def cid(enc: Any) -> str:
        return cache_id_of(enc) if isinstance(enc, str) else enc.cache_id

    image_keys = [bytes(k) if not isinstance(k, str) else hex_to_key(k) for k in pairs.image_keys]
    caption_keys = [text_key(t) for t in pairs.captions]
    todo_img = len(_missing_unique(cache, cid(image_encoder), image_keys))
    todo_txt = len(_missing_unique(cache, cid(text_encoder), caption_keys))
    total = todo_img + todo_txt

    def p_img(d: int, _t: int) -> None:
        if progress is not None:
            progress(d, total)

    def p_txt(d: int, _t: int) -> None:
        if progress is not None:
            progress(todo_img + d, total)

    img = embed(image_encoder, pairs.images, image_keys, cache, p_img).vectors
    txt = embed(text_encoder, pairs.captions, caption_keys, cache, p_txt).vectors
    return img[np.asarray(pairs.pair_image, dtype=np.int64)], txt


def _missing_unique(cache: EmbeddingCache, model_id: str, keys: Sequence[bytes]) -> set[bytes]:
    found = cache.contains(model_id, keys)
    return {keys[i] for i in np.nonzero(~found)[0].tolist()}


def embed_labeled(labeled: Any, image_encoder: Any, cache: EmbeddingCache | None = None,
                  progress: Progress | None = None) -> np.ndarray:
    """Image embeddings ``[n, d]`` of a :class:`core.data.LabeledSet`, through the cache."""
    return embed(image_encoder, labeled.paths, labeled.keys, cache, progress).vectors
