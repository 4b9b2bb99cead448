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
pixels.

A cache is an object its owner passes in (the app keeps one with ``st.cache_resource``); it also
owns the :class:`core.encoders.EncoderRegistry` that loads the models filling it, so a fully cached
set is read without loading any model. Embedding through the cache is :mod:`core.embedded`::

    from core.cache import EmbeddingCache
    from core.embedded import embed
    cache = EmbeddingCache()                                  # ROSETTA_CACHE_DIR or the user cache
    X = embed("efficientnet-lite0", paths, cache=cache).vectors   # float32 [n, 1280]
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
from typing import Any, Sequence

import numpy as np

from core.encoders import EncoderRegistry, rosetta_cache_dir

KEY_BYTES = 32
#: Shards written while embedding are flushed at least every this many vectors …
FLUSH_EVERY = 4096
#: … or every this many seconds, whichever comes first …
FLUSH_SECONDS = 30.0
#: … and the directory is compacted automatically once it holds more shards than this.
AUTO_COMPACT_SHARDS = 64


def cache_root() -> Path:
    """``ROSETTA_CACHE_DIR`` or the per-user cache directory (``platformdirs``), ``…/rosetta``."""
    return rosetta_cache_dir()


# ------------------------------------------------------------------------------------------ keys

def sha256_bytes(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def text_key(text: str) -> bytes:
    """SHA-256 digest (32 bytes) of a text's UTF-8 encoding."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def file_key(path: str | os.PathLike) -> bytes:
    """SHA-256 digest of a file's bytes (:meth:`EmbeddingCache.file_key` memoises it)."""
    path = os.fspath(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
    return h.digest()


def item_key(item: Any) -> bytes:
    """Key of an in-memory image: bytes or a ``PIL.Image`` (paths: :func:`file_key`, texts:
    :func:`text_key`)."""
    if isinstance(item, (bytes, bytearray)):
        return sha256_bytes(bytes(item))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        h = hashlib.sha256(f"PIL:{item.mode}:{item.size}".encode())
        h.update(item.tobytes())
        return h.digest()
    raise TypeError(f"cannot key an item of type {type(item).__name__}")


def as_key(key: bytes | str) -> bytes:
    """A 32-byte digest from bytes or its hex spelling."""
    return bytes.fromhex(key) if isinstance(key, str) else bytes(key)


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
    """Append-only, memory-mapped, multi-process-safe vector store with hit/miss counts.

    ``root`` defaults to :func:`cache_root`; ``encoders`` (default: a new
    :class:`core.encoders.EncoderRegistry`) loads the models that compute what is missing.
    """

    def __init__(self, root: str | os.PathLike | None = None,
                 encoders: EncoderRegistry | None = None):
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.dir = self.root / "embeddings"
        self.encoders = encoders if encoders is not None else EncoderRegistry()
        self.hits = 0
        self.misses = 0
        self._models: dict[str, _ModelIndex] = {}
        self._file_keys: dict[tuple, bytes] = {}
        self._lock = threading.RLock()

    # ----- keys
    def file_key(self, path: str | os.PathLike) -> bytes:
        """:func:`file_key`, memoised by this object on (path, size, mtime, inode)."""
        path = os.fspath(path)
        try:
            st = os.stat(path)
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
        memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            hit = self._file_keys.get(memo)
        if hit is None:
            hit = file_key(path)
            with self._lock:
                self._file_keys[memo] = hit
        return hit

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


def default_cache() -> EmbeddingCache:
    """A new cache object at :func:`cache_root` (``ROSETTA_CACHE_DIR`` or the user cache dir).

    A constructor, not a singleton: whoever wants one cache for a process keeps the object.
    """
    return EmbeddingCache(cache_root())
