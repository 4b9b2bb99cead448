"""core.embedded: the one pipeline from a source to vectors, on real Flickr8k / CIFAR-10 items."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from core.asif import build_prompts
from core.cache import EmbeddingCache, file_key
from core.data import LabeledSet, ValidationReport
from core.embedded import (NOT_CACHED, EmbeddedLabeled, EmbeddedPairs, embed, embed_prompts,
                           first_pair_per_image)

IMAGE, TEXT = "efficientnet-lite0", "minilm"
SECRET = "ROSETTA-SECRET-LINE do not show"


@pytest.fixture
def fresh_cache(tmp_path, embedding_cache):
    """An empty cache on disk that shares the session's loaded models (no reload per test)."""
    return EmbeddingCache(tmp_path / "cache", encoders=embedding_cache.encoders)


def _bad_images(tmp_path, good_path: str) -> tuple[str, str]:
    """A truncated JPEG (the first half of a real photo) and a text file named .jpg."""
    data = open(good_path, "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.jpg"
    text.write_text(SECRET + "\n" + SECRET)
    return str(truncated), str(text)


def test_pairs_equal_direct_encoder_calls(flickr_pairs, fresh_cache, image_encoder, text_encoder):
    pairs = flickr_pairs.first_images(6)
    emb = EmbeddedPairs.from_pairset(pairs, IMAGE, TEXT, cache=fresh_cache)
    assert emb.image_vectors.shape == (6, 1280) and emb.text_vectors.shape == (len(pairs), 384)
    np.testing.assert_allclose(emb.image_vectors, image_encoder.encode(pairs.images), atol=1e-5)
    np.testing.assert_allclose(emb.text_vectors, text_encoder.encode(pairs.captions), atol=1e-5)
    np.testing.assert_array_equal(emb.pair_image, pairs.pair_image)
    np.testing.assert_array_equal(emb.pair_image_vectors, emb.image_vectors[pairs.pair_image])
    assert emb.captions == pairs.captions and emb.images == pairs.images
    assert emb.pair_ids == pairs.pair_ids and emb.skipped == ()
    assert (emb.image_encoder, emb.text_encoder) == (IMAGE, TEXT)
    # read back by a fresh cache object: the same vectors, nothing computed, no model loaded
    again = EmbeddingCache(fresh_cache.root)
    emb2 = EmbeddedPairs.from_pairset(pairs, IMAGE, TEXT, cache=again)
    np.testing.assert_array_equal(emb2.text_vectors, emb.text_vectors)
    np.testing.assert_array_equal(emb2.image_vectors, emb.image_vectors)
    assert again.encoders.loads == 0 and again.stats() == {"hits": 6 + len(pairs), "misses": 0}


def test_session_fixtures_are_the_pipeline(flickr_pairs, flickr_embeddings, image_encoder):
    """The conftest embeddings (shared cache) equal direct encoding of the same Flickr8k images."""
    img, txt = flickr_embeddings
    assert img.shape == (len(flickr_pairs), 1280) and txt.shape == (len(flickr_pairs), 384)
    rows = first_pair_per_image(flickr_pairs.pair_image)[:4]
    direct = image_encoder.encode([flickr_pairs.images[flickr_pairs.pair_image[i]] for i in rows])
    np.testing.assert_allclose(img[rows], direct, atol=1e-5)


def test_labeled_equal_direct_encoder_calls(cifar_small, fresh_cache, image_encoder):
    small = cifar_small.per_class(1)
    emb = EmbeddedLabeled.from_labeled(small, IMAGE, cache=fresh_cache)
    np.testing.assert_allclose(emb.vectors, image_encoder.encode(small.paths), atol=1e-5)
    np.testing.assert_array_equal(emb.labels, small.labels)
    assert emb.class_names == small.class_names and emb.paths == small.paths
    assert emb.encoder == IMAGE and emb.skipped == () and len(emb) == 10
    part = emb.subset([3, 1])
    np.testing.assert_array_equal(part.vectors, emb.vectors[[3, 1]])
    assert part.paths == [small.paths[3], small.paths[1]]
    assert part.labels.tolist() == small.labels[[3, 1]].tolist()


def test_embed_by_name_of_cached_items_loads_no_model(flickr_pairs, tmp_path):
    texts = flickr_pairs.captions[:7] + flickr_pairs.captions[:2]  # repeats computed once
    paths = flickr_pairs.images[:3]
    filler = EmbeddingCache(tmp_path)
    first_t = embed(TEXT, texts, cache=filler)
    first_i = embed(IMAGE, paths, cache=filler)
    assert first_t.computed == 7 and first_i.computed == 3 and filler.encoders.loads == 2
    np.testing.assert_array_equal(first_t.vectors[7:], first_t.vectors[:2])

    reader = EmbeddingCache(tmp_path)  # another process, say
    t = embed(TEXT, texts, cache=reader)
    i = embed(IMAGE, paths, cache=reader)
    assert reader.encoders.loads == 0 and reader.encoders.loaded() == []
    assert (t.hits, t.computed, i.hits, i.computed) == (9, 0, 3, 0)
    np.testing.assert_array_equal(t.vectors, first_t.vectors)
    np.testing.assert_array_equal(i.vectors, first_i.vectors)
    # one missing text: only then is the model loaded, once
    embed(TEXT, texts + ["a brand new caption"], cache=reader)
    embed(TEXT, ["another new caption"], cache=reader)
    assert reader.encoders.loads == 1 and reader.encoders.loaded() == [TEXT]


def test_compute_false_reads_only_the_cache(flickr_pairs, tmp_path):
    cache = EmbeddingCache(tmp_path)
    embed(TEXT, flickr_pairs.captions[:3], cache=cache)
    reader = EmbeddingCache(tmp_path)
    res = embed(TEXT, flickr_pairs.captions[:5], cache=reader, compute=False)
    assert res.ok.tolist() == [True] * 3 + [False] * 2 and res.missing.tolist() == [3, 4]
    assert res.failed == () and res.computed == 0 and reader.encoders.loads == 0
    assert not res.vectors[3:].any()
    pairs = flickr_pairs.first_images(1)  # 1 image, 5 captions; the image is not cached
    emb = EmbeddedPairs.from_pairset(pairs, IMAGE, TEXT, cache=reader, compute=False)
    assert len(emb) == 0 and reader.encoders.loads == 0
    assert [(s.of, s.index) for s in emb.skipped] == [("image", 0), ("caption", 3), ("caption", 4)]
    assert {s.reason for s in emb.skipped} == {NOT_CACHED}


def test_one_unreadable_image_never_fails_the_batch(flickr_pairs, tmp_path, fresh_cache, image_encoder):
    good = [str(shutil.copy(p, tmp_path / f"good{i}.jpg")) for i, p in enumerate(flickr_pairs.images[:5])]
    truncated, text = _bad_images(tmp_path, good[0])
    items = [good[0], truncated, good[1], good[2], text, good[3], truncated, good[4]]
    seen = []
    res = embed(IMAGE, items, cache=fresh_cache, batch_size=4,
                progress=lambda d, t: seen.append((d, t)))
    assert res.ok.tolist() == [True, False, True, True, False, True, False, True]
    assert [f.index for f in res.failed] == [1, 4, 6] and res.missing.size == 0
    assert [f.item for f in res.failed] == [truncated, text, truncated]
    for failure in res.failed:
        assert ("is truncated or corrupt" in failure.reason or "is not a picture" in failure.reason) \
            and SECRET not in failure.reason
        assert failure.reason.count("\n") == 0
    np.testing.assert_allclose(res.vectors[res.ok], image_encoder.encode(good), atol=1e-5)
    assert not res.vectors[~res.ok].any()
    assert fresh_cache.count(fresh_cache.encoders.cache_id(IMAGE)) == 5  # the good ones are cached
    assert seen[0] == (0, 7) and seen[-1] == (7, 7)  # 7 unique items to compute, counted once each
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    # the next run reads the good ones and tries only the bad ones again
    again = embed(IMAGE, items, cache=fresh_cache)
    assert again.hits == 5 and again.computed == 2 and [f.index for f in again.failed] == [1, 4, 6]


def test_pairs_and_labeled_leave_out_unreadable_images(flickr_pairs, cifar_small, tmp_path, fresh_cache):
    good = [str(shutil.copy(p, tmp_path / f"p{i}.jpg")) for i, p in enumerate(flickr_pairs.images[:3])]
    truncated, text = _bad_images(tmp_path, good[0])
    images = [good[0], truncated, good[1], text, good[2]]
    pair_image = [0, 1, 1, 2, 3, 4, 4]
    captions = [f"caption {i}" for i in range(7)]
    emb = EmbeddedPairs.from_items(images, pair_image, captions, IMAGE, TEXT, cache=fresh_cache,
                                   pair_ids=[10, 11, 12, 13, 14, 15, 16])
    assert emb.pair_ids == [10, 13, 15, 16] and emb.captions == ["caption 0", "caption 3",
                                                                 "caption 5", "caption 6"]
    assert emb.images == [good[0], good[1], good[2]] and emb.pair_image.tolist() == [0, 1, 2, 2]
    assert [(s.index, s.item) for s in emb.skipped] == [(1, truncated), (3, text)]
    assert all(SECRET not in str(s) for s in emb.skipped)

    paths = list(cifar_small.paths[:4]) + [truncated]
    labeled = LabeledSet(paths, cifar_small.labels[:5], list(cifar_small.class_names),
                         [file_key(p) for p in paths], ValidationReport())
    out = EmbeddedLabeled.from_labeled(labeled, IMAGE, cache=fresh_cache)
    assert out.paths == paths[:4] and out.labels.tolist() == cifar_small.labels[:4].tolist()
    assert [(s.index, s.item) for s in out.skipped] == [(4, truncated)]


def _toy_pairs(pair_image, n_images):
    rng = np.random.default_rng(0)
    n = len(pair_image)
    return EmbeddedPairs(image_vectors=rng.standard_normal((n_images, 3)).astype(np.float32),
                         pair_image=np.asarray(pair_image, dtype=np.int64),
                         text_vectors=rng.standard_normal((n, 2)).astype(np.float32),
                         captions=[f"c{i}" for i in range(n)], images=[f"img{j}" for j in range(n_images)],
                         image_encoder=IMAGE, text_encoder=TEXT, pair_ids=list(range(100, 100 + n)))


def test_one_caption_per_image_keeps_the_first_pair_of_each_image_in_order():
    pairs = _toy_pairs([2, 0, 2, 1, 0, 1, 3], n_images=5)  # image 4 has no pair
    assert first_pair_per_image(pairs.pair_image).tolist() == [0, 1, 3, 6]
    one = pairs.one_caption_per_image()
    assert one.pair_ids == [100, 101, 103, 106] and one.captions == ["c0", "c1", "c3", "c6"]
    assert one.images == ["img2", "img0", "img1", "img3"] and one.pair_image.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(one.pair_image_vectors, pairs.pair_image_vectors[[0, 1, 3, 6]])
    np.testing.assert_array_equal(one.text_vectors, pairs.text_vectors[[0, 1, 3, 6]])
    assert one.one_caption_per_image().pair_ids == one.pair_ids  # idempotent
    assert pairs.pairs_of_image(2).tolist() == [0, 2] and pairs.pair_paths[1] == "img0"


def test_real_one_caption_per_image(flickr_pairs, flickr_embeddings, embedding_cache):
    pairs = flickr_pairs.first_images(4)
    emb = EmbeddedPairs.from_pairset(pairs, IMAGE, TEXT, cache=embedding_cache).one_caption_per_image()
    assert len(emb) == 4 and emb.pair_image.tolist() == [0, 1, 2, 3]
    assert emb.captions == [pairs.captions[pairs.captions_of(i)[0]] for i in range(4)]
    np.testing.assert_array_equal(emb.pair_image_vectors,
                                  flickr_embeddings[0][first_pair_per_image(pairs.pair_image)])


def test_embed_prompts_are_class_major(fresh_cache):
    names, templates = ["cat", "dog", "ship"], ["a photo of a {}.", "a picture of a {}."]
    vectors, classes = embed_prompts(names, templates, TEXT, cache=fresh_cache)
    prompts, expected = build_prompts(names, templates)
    assert vectors.shape == (6, 384) and classes.tolist() == list(expected) == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(vectors, embed(TEXT, prompts, cache=fresh_cache).vectors)


def test_bad_shapes_are_refused(fresh_cache):
    with pytest.raises(ValueError, match="pair image rows"):
        EmbeddedPairs.from_items(["a.jpg"], [0, 0], ["one"], IMAGE, TEXT, cache=fresh_cache)
    with pytest.raises(ValueError, match="must index"):
        EmbeddedPairs.from_items(["a.jpg"], [1], ["one"], IMAGE, TEXT, cache=fresh_cache)
    with pytest.raises(ValueError, match="keys for"):
        embed(TEXT, ["a", "b"], cache=fresh_cache, keys=[b"\0" * 32])
