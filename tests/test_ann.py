"""core.ann: FAISS IVF-SQ8 + exact re-rank behind the model's image-side search.

Synthetic clustered vectors are generated at test time (two-level clusters, several copies of each
image row as with several captions per picture); the exact path is the reference."""
from __future__ import annotations

import numpy as np
import pytest

from core.ann import AnnIndex, AnnSettings, image_search_index, measure, prediction_agreement
from core.asif import AsifModel
from core.search import ExactIndex


def clustered(n: int, d: int = 64, topics: int = 8, subtopics: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = rng.standard_normal((topics, d)) / np.sqrt(d)
    sub = top[np.arange(subtopics) % topics] + 0.8 * rng.standard_normal((subtopics, d)) / np.sqrt(d)
    x = sub[rng.integers(0, subtopics, n)] + 0.6 * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def base():
    distinct = clustered(3000)
    copies = np.random.default_rng(1).integers(1, 4, distinct.shape[0])   # 1–3 captions per image
    return np.repeat(distinct, copies, axis=0)


def test_probing_every_list_equals_exact_search_bit_for_bit(base):
    queries = clustered(50, seed=2)
    ann = AnnIndex(base, AnnSettings(min_anchors=0, nlist=16, nprobe=16, shortlist=100.0))
    ai, av = ann.topk(queries, 60)
    ei, ev = ExactIndex(base).topk(queries, 60)
    np.testing.assert_array_equal(ai, ei)
    np.testing.assert_array_equal(av, ev)


def test_few_probes_keep_retained_similarities_exact_and_recall_high(base):
    queries = clustered(80, seed=3)
    ann = AnnIndex(base, AnnSettings(min_anchors=0, nlist=32, nprobe=10))
    ai, av = ann.topk(queries, 100)
    ei, ev = ExactIndex(base).topk(queries, 100)
    exact = {(q, int(i)): v for q in range(len(queries)) for i, v in zip(ei[q], ev[q])}
    shared = [(q, int(i), v) for q in range(len(queries)) for i, v in zip(ai[q], av[q]) if (q, int(i)) in exact]
    assert len(shared) > 0.9 * ai.size
    assert all(exact[(q, i)] == v for q, i, v in shared)           # re-ranked values are the exact ones
    assert np.all(np.diff(av, axis=1) <= 0)                           # canonical order
    report = measure(ann, queries, 100, sample=40)
    assert 0.9 < report["recall"] <= 1.0 and report["n_queries"] == 40
    assert report["exact_seconds"] > 0 and report["ann_seconds"] > 0


def test_index_is_saved_once_and_reopened_memory_mapped(base, tmp_path):
    settings = AnnSettings(min_anchors=0, folder=str(tmp_path), nlist=16, nprobe=4)
    first = AnnIndex(base, settings)
    again = AnnIndex(base, settings)
    assert first.built and not again.built and again.path == first.path and first.path.is_file()
    queries = clustered(20, seed=4)
    np.testing.assert_array_equal(first.topk(queries, 30)[0], again.topk(queries, 30)[0])
    other = AnnIndex(base[::-1].copy(), settings)                     # another anchor set: its own file
    assert other.built and other.path != first.path
    first.path.write_bytes(b"cut short")                              # a damaged file is rebuilt
    assert AnnIndex(base, settings).built


def test_threshold_chooses_exact_below_and_faiss_above(base):
    distinct = np.unique(base, axis=0).shape[0]
    assert isinstance(image_search_index(base, AnnSettings(min_anchors=distinct + 1)), ExactIndex)
    assert isinstance(image_search_index(base, AnnSettings(min_anchors=distinct)), AnnIndex)
    assert isinstance(image_search_index(base, AnnSettings(min_anchors=None)), ExactIndex)


def test_model_classifies_through_the_ann_index(base):
    rng = np.random.default_rng(5)
    text = clustered(base.shape[0], d=48, seed=6)
    exact = AsifModel(base, text, k=50, p=8)
    exact.ann = AnnSettings(min_anchors=None)
    fast = AsifModel(base, text, k=50, p=8)
    fast.ann = AnnSettings(min_anchors=0, nlist=32, nprobe=8)
    images = clustered(100, seed=7)
    prompts = text[rng.choice(text.shape[0], 6, replace=False)]
    a = exact.classify(images, prompts)
    b = fast.classify(images, prompts)
    assert isinstance(fast.search_index("image"), AnnIndex)
    assert prediction_agreement(a.predictions, b.predictions) >= 0.95
    with pytest.raises(ValueError):
        prediction_agreement(a.predictions, b.predictions[:3])


def test_explain_uses_the_same_image_search_as_classify(base):
    text = clustered(base.shape[0], d=48, seed=6)
    model = AsifModel(base, text, k=50, p=8)
    model.ann = AnnSettings(min_anchors=0, nlist=32, nprobe=2)        # few probes: some rows missed
    image, prompts = clustered(1, seed=8), text[:4]
    explanation = model.explain(image, prompts)
    scores = model.classify(image, prompts).scores[0]
    np.testing.assert_allclose(explanation.scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(np.sort(explanation.positions), np.sort(model.represent_images(image)[0][0]))


def test_an_unwritable_folder_keeps_the_index_in_memory(base, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the index folder should be")
    ann = AnnIndex(base, AnnSettings(min_anchors=0, folder=str(blocker / "ann"), nlist=16, nprobe=16,
                                     shortlist=100.0))
    assert ann.path is None and ann.built
    np.testing.assert_array_equal(ann.topk(clustered(5, seed=9), 20)[0],
                                  ExactIndex(base).topk(clustered(5, seed=9), 20)[0])


def test_edit_session_shares_the_model_arrays_and_builds_its_lists_with_its_index(base):
    from core.edits import EditSession

    text = clustered(base.shape[0], d=48, seed=6)
    model = AsifModel(base, text, k=50, p=8)
    model.ann = AnnSettings(min_anchors=0, nlist=32, nprobe=2)        # few probes: the lists are the index's
    images, labels = clustered(60, seed=9), np.arange(60) % 4
    prompts = text[np.random.default_rng(10).choice(text.shape[0], 4, replace=False)]
    session = EditSession(model, images, labels, prompts)
    for side, array in ((session.anchors.img, model.image_embeddings), (session.anchors.txt, model.text_embeddings)):
        assert side.base is array                                     # shared, not copied
    np.testing.assert_array_equal(session.predictions, model.classify(images, prompts).predictions)
    np.testing.assert_array_equal(session.img_side.rows[:, :50], model.represent_images(images)[0])
    session.add(clustered(3, seed=11), clustered(3, d=48, seed=12))  # added rows go to their own block
    assert session.anchors.img.base is model.image_embeddings and session.n_anchors == base.shape[0] + 3
    with pytest.raises(ValueError, match="shared"):
        session.anchors.img[np.array([0])] = 0.0


def test_a_model_saved_mapped_reopens_mapped_and_classifies_the_same(base, tmp_path):
    text = clustered(base.shape[0], d=48, seed=6)
    settings = AnnSettings(min_anchors=0, folder=str(tmp_path / "index"), nlist=32, nprobe=8)
    model = AsifModel(base * 3.0, text, k=50, p=8, info={"source": "test"})   # normalised here
    model.ann = settings
    images, prompts = clustered(40, seed=13), text[:5]
    before = model.classify(images, prompts)
    folder = tmp_path / "model"
    model.save_mapped(folder, "key-1")
    assert AsifModel.open_mapped(folder, "key-2") is None            # another source: never read stale
    assert AsifModel.open_mapped(tmp_path / "missing", "key-1") is None
    again = AsifModel.open_mapped(folder, "key-1")
    assert isinstance(again.image_embeddings, np.memmap) and isinstance(again.text_embeddings, np.memmap)
    assert (again.k, again.p, again.info) == (50, 8.0, {"source": "test"})
    np.testing.assert_array_equal(again.image_embeddings, model.image_embeddings)
    again.ann = settings
    index = again.search_index("image")
    assert isinstance(index, AnnIndex) and not index.built            # the saved FAISS index, same grouping
    np.testing.assert_array_equal(index.first, model.search_index("image").first)
    after = again.classify(images, prompts)
    np.testing.assert_array_equal(after.predictions, before.predictions)
    np.testing.assert_array_equal(after.scores, before.scores)
    (folder / "distinct_inverse.npy").write_bytes(b"not an array")  # a damaged folder: rebuilt, not read
    assert AsifModel.open_mapped(folder, "key-1") is None


def test_report_of_a_model_over_chosen_rows_measures_the_index_it_searches(base):
    """After an edit the app's model searches its opened model's FAISS index over the live rows
    (:meth:`AsifModel.over_rows`): the report measures that index, and its exact baseline is the
    same rows searched exactly."""
    from core.ann import report

    text = clustered(base.shape[0], d=48, seed=6)
    opened = AsifModel(base, text, k=50, p=8)
    opened.ann = AnnSettings(min_anchors=0, nlist=32, nprobe=32)      # every list probed: exact
    rng = np.random.default_rng(3)
    rows = np.sort(np.concatenate([rng.choice(base.shape[0], base.shape[0] - 40, replace=False),
                                   base.shape[0] + np.arange(2)]))
    extra_img, extra_txt = clustered(2, seed=13), clustered(2, d=48, seed=14)
    edited = AsifModel.over_rows(opened, extra_img, extra_txt, [10**6, 10**6 + 1], None, rows, k=50, p=8)
    assert edited.image_index() is opened.search_index("image")
    copy = AsifModel(np.concatenate([base, extra_img])[rows], np.concatenate([text, extra_txt])[rows],
                     k=50, p=8)
    copy.ann = AnnSettings(min_anchors=None)
    images, prompts = clustered(30, seed=15), text[:4]
    exact = edited.with_exact_image_search()
    for model in (edited, exact):
        np.testing.assert_array_equal(model.classify(images, prompts).predictions,
                                      copy.classify(images, prompts).predictions)
    r = report(edited, images, prompts, np.arange(4), sample=30)
    assert r is not None and r["agreement"] == 1.0 and r["n_queries"] == 30
    assert report(exact, images, prompts, np.arange(4)) is None
