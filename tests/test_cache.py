"""Embedding cache: keys by content, hit/miss counts, no recomputation, atomic shards, two writers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import cache as C
from core.embedded import embed

ROOT = Path(__file__).resolve().parents[1]


class CountingEncoder:
    """Wraps a real encoder and counts the items it is asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.modality, self.dim = inner.name, inner.modality, inner.dim
        self.cache_id = inner.cache_id
        self.encoded = 0

    def encode(self, items, batch_size=None, progress=None):
        self.encoded += len(items)
        return self.inner.encode(items, batch_size=batch_size, progress=progress)


def _keys(n: int, seed: int = 0) -> list[bytes]:
    return [C.text_key(f"item {seed} {i}") for i in range(n)]


def test_put_lookup_roundtrip_and_counts(tmp_path):
    cache = C.EmbeddingCache(tmp_path)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((10, 7)).astype(np.float32)
    keys = _keys(10)
    assert cache.put("m|v1", keys[:6], vecs[:6]) == 6
    assert cache.put("m|v1", keys, vecs) == 4  # the 6 cached ones are not written again
    got, found = cache.lookup("m|v1", keys[::-1] + [C.text_key("absent")])
    assert found.tolist() == [True] * 10 + [False]
    np.testing.assert_array_equal(got[:10], vecs[::-1])
    assert (got[10] == 0).all()
    assert cache.stats() == {"hits": 10, "misses": 1}
    assert cache.lookup("other|v1", keys[:3])[0] is None and cache.misses == 4
    # a fresh object (another process) sees the same content
    again = C.EmbeddingCache(tmp_path)
    assert again.count("m|v1") == 10
    info = again.info()
    assert info["location"] == str(tmp_path) and info["bytes"] > 10 * 7 * 4
    assert info["models"][0]["model_id"] == "m|v1" and info["models"][0]["vectors"] == 10
    with pytest.raises(ValueError, match="7-d vectors"):
        cache.put("m|v1", _keys(1, seed=1), np.zeros((1, 8), np.float32))


def test_keys_ending_in_zero_bytes_survive(tmp_path):
    """Digests ending in 0x00 must not be truncated (numpy |S32 would strip them)."""
    cache = C.EmbeddingCache(tmp_path)
    keys = [bytes(31) + b"\x01", b"\x07" + bytes(31), bytes(32)]
    cache.put("m|v1", keys, np.eye(3, dtype=np.float32))
    got, found = C.EmbeddingCache(tmp_path).lookup("m|v1", keys)
    assert found.all() and np.array_equal(got, np.eye(3, dtype=np.float32))


def test_renamed_file_hits_edited_file_misses_nothing_recomputed(tmp_path, flickr_pairs, embedding_cache):
    cache = C.EmbeddingCache(tmp_path / "cache", encoders=embedding_cache.encoders)
    enc = CountingEncoder(cache.encoders.get("efficientnet-lite0"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, src in enumerate(flickr_pairs.images[:3]):
        paths.append(str(shutil.copy(src, folder / f"{i}.jpg")))
    first = embed(enc, paths + [paths[0]], cache=cache)  # a repeated item is computed once
    assert enc.encoded == 3 and first.computed == 3 and first.hits == 0
    np.testing.assert_array_equal(first.vectors[0], first.vectors[3])

    renamed = folder / "renamed.jpg"
    os.rename(paths[1], renamed)
    second = embed(enc, [paths[0], str(renamed), paths[2]], cache=cache)
    assert enc.encoded == 3 and second.hits == 3 and second.computed == 0
    np.testing.assert_array_equal(second.vectors, first.vectors[:3])

    # edit one file: flip it and save under the same name -> a miss, only it is computed
    Image.open(paths[2]).transpose(Image.FLIP_LEFT_RIGHT).save(paths[2], quality=95)
    third = embed(enc, [paths[0], str(renamed), paths[2]], cache=cache)
    assert enc.encoded == 4 and third.hits == 2 and third.computed == 1
    assert not np.allclose(third.vectors[2], first.vectors[2])
    assert cache.stats() == {"hits": 5, "misses": 5}

    # a PIL image in memory is keyed by its pixels
    pil = Image.open(paths[0]).convert("RGB")
    v1 = embed(enc, [pil], cache=cache).vectors
    v2 = embed(enc, [pil.copy()], cache=cache).vectors
    assert enc.encoded == 5 and np.array_equal(v1, v2)


def test_text_keys_and_progress(tmp_path, embedding_cache):
    cache = C.EmbeddingCache(tmp_path, encoders=embedding_cache.encoders)
    enc = CountingEncoder(cache.encoders.get("minilm"))
    calls = []
    texts = ["a dog", "a cat", "a dog", "ein Hund"]
    out = embed(enc, texts, cache=cache, progress=lambda d, t: calls.append((d, t)))
    assert enc.encoded == 3 and calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert np.array_equal(out.vectors[0], out.vectors[2])
    again = embed(enc, ["ein Hund", "a cat"], cache=cache)
    assert enc.encoded == 3 and again.hits == 2 and again.computed == 0
    np.testing.assert_array_equal(again.vectors, out.vectors[[3, 1]])


def test_partial_files_are_ignored_and_compaction_keeps_everything(tmp_path):
    cache = C.EmbeddingCache(tmp_path)
    rng = np.random.default_rng(1)
    all_keys, all_vecs = [], []
    for s in range(5):
        keys, vecs = _keys(20, seed=s), rng.standard_normal((20, 4)).astype(np.float32)
        cache.put("m|v1", keys, vecs)
        all_keys += keys
        all_vecs.append(vecs)
    folder = cache.model_dir("m|v1")
    # a crash mid-write leaves a temp file or vectors without their keys file: both ignored
    (folder / ".x.vecs.npy.123.tmp").write_bytes(b"junk")
    np.save(folder / "zzz-orphan.vecs.npy", np.zeros((3, 4), np.float32))
    fresh = C.EmbeddingCache(tmp_path)
    assert fresh.count("m|v1") == 100
    assert fresh.compact("m|v1") == 100
    assert len(list(folder.glob("*.keys.npy"))) == 1
    got, found = C.EmbeddingCache(tmp_path).lookup("m|v1", all_keys)
    assert found.all() and np.array_equal(got, np.concatenate(all_vecs))
    # the object that was open during compaction notices and still answers correctly
    got2, found2 = cache.lookup("m|v1", all_keys)
    assert found2.all() and np.array_equal(got2, got)


WRITER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from core.cache import EmbeddingCache, text_key
cache = EmbeddingCache({cache!r})
start, stop = int(sys.argv[1]), int(sys.argv[2])
for lo in range(start, stop, 50):
    keys = [text_key(f"k{{i}}") for i in range(lo, min(stop, lo + 50))]
    vecs = np.array([[i, i + 0.5, -i] for i in range(lo, min(stop, lo + 50))], dtype=np.float32)
    cache.put("shared|v1", keys, vecs)
"""


def test_two_processes_fill_the_cache_at_once(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT), cache=str(tmp_path / "c")))
    # overlapping ranges: both processes write keys 300..599
    procs = [subprocess.Popen([sys.executable, str(script), "0", "600"]),
             subprocess.Popen([sys.executable, str(script), "300", "900"])]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    cache = C.EmbeddingCache(tmp_path / "c")
    keys = [C.text_key(f"k{i}") for i in range(900)]
    got, found = cache.lookup("shared|v1", keys)
    assert found.all() and cache.count("shared|v1") == 900
    expected = np.array([[i, i + 0.5, -i] for i in range(900)], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_35k_vectors_load_well_under_a_second(tmp_path):
    cache = C.EmbeddingCache(tmp_path)
    n, d = 35_000, 384
    keys = [C.text_key(f"caption {i}") for i in range(n)]
    vecs = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    for lo in range(0, n, 4096):  # the shard size embed() writes
        cache.put("minilm-like|v1", keys[lo:lo + 4096], vecs[lo:lo + 4096])
    fresh = C.EmbeddingCache(tmp_path)
    t0 = time.perf_counter()
    got, found = fresh.lookup("minilm-like|v1", keys)
    elapsed = time.perf_counter() - t0
    assert found.all() and np.array_equal(got, vecs)
    assert elapsed < 1.0, f"{elapsed:.3f} s"


def test_default_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ROSETTA_CACHE_DIR", str(tmp_path / "elsewhere"))
    cache = C.default_cache()
    assert cache.root == tmp_path / "elsewhere"
    monkeypatch.delenv("ROSETTA_CACHE_DIR")
    assert C.default_cache().root != tmp_path / "elsewhere"
    assert not str(C.default_cache().root).startswith(str(ROOT))  # outside the repository


class FlakyEncoder:
    """A text 'encoder' (hash-based vectors) that fails after a number of calls."""

    name, modality, dim, cache_id, batch_size = "flaky", "text", 4, "flaky|v1", 2

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.encoded = 0, fail_after, []

    def encode(self, items, batch_size=None, progress=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        self.encoded += list(items)
        out = np.array([[len(t), t.count("a"), 1, 0] for t in items], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_interrupted_embedding_keeps_what_was_flushed(tmp_path):
    cache = C.EmbeddingCache(tmp_path)
    texts = [f"text {'a' * i}" for i in range(40)]
    with pytest.raises(KeyboardInterrupt):
        embed(FlakyEncoder(fail_after=3), texts, cache=cache, flush_every=8)
    # 3 chunks of 8 (batch 2 x 4) were computed and flushed before the interruption
    assert cache.count("flaky|v1") == 24
    resumed = FlakyEncoder()
    out = embed(resumed, texts, cache=cache, flush_every=8)
    assert resumed.encoded == texts[24:] and out.hits == 24 and out.computed == 16
