"""core.asif: the recipe against a naive dense implementation, sign-safe power, errors, both
template strategies, retrieval, explanations, calibration, save/load; then the same on real
embeddings (efficientnet-lite0 + MiniLM on Flickr8k / CIFAR-10 subsets)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.asif import (AsifModel, build_prompts, fill_template, class_candidates, fit_temperature,
                       relative_representation, softmax)


def _naive_rel(x, a, k, p):
    """Dense ASIF recipe, written plainly: cosine, top-k (ties -> lower index), sign(v)|v|^p, L2."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    s = x.astype(np.float64) @ a.T.astype(np.float64)
    out = np.zeros_like(s)
    for r in range(len(s)):
        top = np.lexsort((np.arange(s.shape[1]), -s[r]))[:k]
        v = np.sign(s[r, top]) * np.abs(s[r, top]) ** p
        n = np.linalg.norm(v)
        out[r, top] = v / n if n > 0 else 0
    return out


def _naive_classify(img, anc_img, anc_txt, prompts, prompt_classes, k, p, strategy):
    if strategy == "mean":
        pn = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
        C = prompt_classes.max() + 1
        prompts = np.stack([pn[prompt_classes == c].sum(0) for c in range(C)])
        prompt_classes = np.arange(C)
    s = _naive_rel(img, anc_img, k, p) @ _naive_rel(prompts, anc_txt, k, p).T
    C = prompt_classes.max() + 1
    cls = np.stack([s[:, prompt_classes == c].max(1) for c in range(C)], 1)
    return cls.argmax(1), cls


@pytest.fixture(scope="module")
def synth():
    rng = np.random.default_rng(0)
    n, d1, d2 = 1500, 48, 32
    # a shared latent so images and captions of a pair are related (ASIF then beats chance)
    z = rng.normal(size=(n, 8))
    img = z @ rng.normal(size=(8, d1)) + 0.5 * rng.normal(size=(n, d1))
    W2 = rng.normal(size=(8, d2))
    txt = z @ W2 + 0.5 * rng.normal(size=(n, d2))
    centers = rng.normal(size=(6, 8))
    labels = rng.integers(0, 6, 300)
    qz = centers[labels] + 0.3 * rng.normal(size=(300, 8))
    W1 = np.linalg.lstsq(z, img, rcond=None)[0]
    q = qz @ W1 + 0.5 * rng.normal(size=(300, d1))
    prompts = np.repeat(centers, 3, axis=0) @ W2 + 0.5 * rng.normal(size=(18, d2))
    pc = np.repeat(np.arange(6), 3)
    return dict(img=img, txt=txt, q=q, labels=labels, prompts=prompts, pc=pc)


@pytest.mark.parametrize("k,p", [(1, 1), (10, 1), (64, 8), (200, 3.5)])
def test_relative_representation_matches_naive(synth, k, p):
    idx, val = relative_representation(synth["q"], synth["img"], k, p)
    dense = np.zeros((len(idx), synth["img"].shape[0]))
    np.put_along_axis(dense, idx, val, 1)
    np.testing.assert_allclose(dense, _naive_rel(synth["q"], synth["img"], k, p), atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(val, axis=1), 1, atol=1e-5)


def test_sign_safe_power():
    # anchors chosen so that the query's top-k contains negative similarities
    anchors = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2], [-0.5, -1.0]])
    q = np.array([[1.0, 0.1]])
    idx, val = relative_representation(q, anchors, 4, 2)
    sims = (q / np.linalg.norm(q)) @ (anchors / np.linalg.norm(anchors, axis=1, keepdims=True)).T
    expected = np.sign(sims[0, idx[0]]) * sims[0, idx[0]] ** 2
    np.testing.assert_allclose(val[0], expected / np.linalg.norm(expected), rtol=1e-5)
    assert (val[0] < 0).sum() == 2  # the naive v**p would have made them positive


@pytest.mark.parametrize("case", ["k_big", "k_zero", "k_float", "p_small", "p_nan", "empty_q", "empty_a",
                                  "nan_row", "inf_row", "dims"])
def test_relative_representation_errors(case):
    a = np.random.default_rng(0).normal(size=(20, 4))
    q = a[:3].copy()
    kw = dict(x=q, anchors=a, k=5, p=2)
    if case == "k_big":
        kw["k"] = 21
    elif case == "k_zero":
        kw["k"] = 0
    elif case == "k_float":
        kw["k"] = 2.5
    elif case == "p_small":
        kw["p"] = 0.5
    elif case == "p_nan":
        kw["p"] = float("nan")
    elif case == "empty_q":
        kw["x"] = q[:0]
    elif case == "empty_a":
        kw["anchors"] = a[:0]
    elif case == "nan_row":
        q[1, 0] = np.nan
    elif case == "inf_row":
        kw["anchors"] = a.copy()
        kw["anchors"][4, 2] = np.inf
    elif case == "dims":
        kw["anchors"] = a[:, :3]
    with pytest.raises(ValueError):
        relative_representation(**kw)


@pytest.mark.parametrize("strategy", ["mean", "per-template"])
def test_classify_identical_to_naive(synth, strategy):
    m = AsifModel(synth["img"], synth["txt"], k=60, p=6)
    res = m.classify(synth["q"], synth["prompts"], synth["pc"], strategy=strategy)
    pred, cls = _naive_classify(synth["q"], synth["img"], synth["txt"], synth["prompts"], synth["pc"],
                                60, 6, strategy)
    np.testing.assert_array_equal(res.predictions, pred)
    np.testing.assert_allclose(res.scores, cls, atol=1e-5)
    assert res.accuracy(synth["labels"]) > 0.5  # the latent structure is learnable (chance = 1/6)
    np.testing.assert_allclose(res.probabilities.sum(1), 1, atol=1e-5)


def test_fill_template_articles():
    assert fill_template("a photo of a {}.", "automobile") == "a photo of an automobile."
    assert fill_template("A {} in the wild", "eagle") == "An eagle in the wild"
    assert fill_template("a photo of the {}.", "airplane") == "a photo of the airplane."
    assert fill_template("a photo of a {}.", "traffic_light") == "a photo of a traffic light."

    assert build_prompts(["airplane"], ["a photo of a {}."])[0] == ["a photo of an airplane."]


def test_build_prompts_and_candidates():
    prompts, cls = build_prompts(["cat", "fire_truck"], ["a photo of a {}.", "art of the {}"])
    assert prompts == ["a photo of a cat.", "art of the cat", "a photo of a fire truck.", "art of the fire truck"]
    np.testing.assert_array_equal(cls, [0, 0, 1, 1])
    with pytest.raises(ValueError):
        build_prompts([], ["{}"])
    with pytest.raises(ValueError):
        build_prompts(["a", "a"], ["{}"])
    emb = np.eye(4)
    cand, cc = class_candidates(emb, cls, "mean")
    np.testing.assert_allclose(cand[0], [2 ** -0.5, 2 ** -0.5, 0, 0], atol=1e-6)
    with pytest.raises(ValueError):
        class_candidates(emb, cls, "median")


def test_retrieval_explanation_and_scores(synth):
    m = AsifModel(synth["img"], synth["txt"], k=40, p=4, metadata=[{"caption": f"c{i}"} for i in range(1500)])
    # image -> caption: each anchor image should find its own caption near the top
    idx, sc = m.image_to_text(synth["img"][:50], synth["txt"][:200], top=5)
    assert np.mean([i in row for i, row in enumerate(idx)]) > 0.8
    assert (np.diff(sc, axis=1) <= 1e-7).all()
    idx2, _ = m.text_to_image(synth["txt"][:50], synth["img"][:200], top=5)
    assert np.mean([i in row for i, row in enumerate(idx2)]) > 0.8
    res = m.classify(synth["q"][:5], synth["prompts"], synth["pc"], strategy="per-template")
    for j in range(5):
        e = m.explain(synth["q"][j], synth["prompts"], synth["pc"], strategy="per-template",
                      class_names=list("abcdef"))
        assert e.prediction == res.predictions[j]
        np.testing.assert_allclose(e.scores, res.scores[j], atol=1e-5)
        np.testing.assert_allclose(e.product.sum(1), e.scores, atol=1e-5)  # score = sum of products
        rows = e.contributions(top=10)
        assert rows and all(r1["product"] >= r2["product"] for r1, r2 in zip(rows, rows[1:]))
        assert rows[0]["caption"].startswith("c") and "image_weight" in rows[0]
        assert e.all_image_similarity.shape == (1500,) and e.all_caption_similarity.shape == (6, 1500)
        assert set(e.positions) <= set(np.argsort(-e.all_image_similarity)[:45])
        pts = e.scatter_data()
        assert {"class_name", "image_similarity", "caption_similarity", "product", "caption"} <= set(pts[0])
        # Fig. 7: per class, the union of the image's top-k and the candidate's caption top-k; the
        # pairs with a product are exactly the ones behind the class score
        top2 = np.argsort(-e.scores, kind="stable")[:2].tolist()
        pts = e.scatter_data(top2)
        assert list(dict.fromkeys(r["class_index"] for r in pts)) == top2
        for c in top2:
            rows = [r for r in pts if r["class_index"] == c]
            support = set(e.positions.tolist()) | set(e.caption_topk[c].tolist())
            assert sorted(r["pair_id"] for r in rows) == sorted(int(m.pair_ids[i]) for i in support)
            assert {r["pair_id"] for r in rows if r["product"] > 0} == \
                {r["pair_id"] for r in e.contributions(c, top=None)}
            assert sum(r["product"] for r in rows) == pytest.approx(e.scores[c], abs=1e-5)
            assert all(r["caption"] == f"c{m.positions_of([r['pair_id']])[0]}" for r in rows)


def test_calibration():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    s = rng.normal(size=(500, 4)) * 0.01
    s[np.arange(500), y] += 0.02
    t = fit_temperature(s, y)
    assert 1e-3 < t < 0.1
    nll = lambda tt: -np.log(softmax(s, tt)[np.arange(500), y]).mean()  # noqa: E731
    assert nll(t) <= min(nll(t * 2), nll(t / 2)) + 1e-9


def test_save_load_roundtrip_and_edits(tmp_path, synth):
    m = AsifModel(synth["img"][:300], synth["txt"][:300], np.arange(1000, 1300), k=30, p=5,
                  metadata=[{"caption": f"c{i}", "image": f"{i}.jpg"} for i in range(300)],
                  info={"image_encoder": "x"}, template_strategy="per-template")
    path = m.save(tmp_path / "model")
    assert path.endswith(".npz")
    m2 = AsifModel.load(path)
    assert (m2.k, m2.p, m2.template_strategy, m2.info) == (30, 5.0, "per-template", {"image_encoder": "x"})
    np.testing.assert_array_equal(m2.pair_ids, m.pair_ids)
    np.testing.assert_array_equal(m2.image_embeddings, m.image_embeddings)
    assert m2.metadata[3] == {"caption": "c3", "image": "3.jpg"}
    with np.load(path, allow_pickle=False) as f:  # loads without pickles
        json.loads(bytes(f["meta_json"]).decode())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        AsifModel.load(bad)
    m3 = m.with_pairs_removed([1000, 1005])
    assert m3.n_anchors == 298 and 1005 not in set(m3.pair_ids.tolist())
    m4 = m3.with_pairs_added(synth["img"][300:302], synth["txt"][300:302])
    assert m4.pair_ids[-2:].tolist() == [1300, 1301]
    with pytest.raises(ValueError):
        m.with_pairs_removed([5])
    with pytest.raises(ValueError):
        AsifModel(synth["img"][:10], synth["txt"][:9])
    with pytest.raises(ValueError):
        AsifModel(synth["img"][:10], synth["txt"][:10], k=11)


# ------------------------------------------------------------------ real embeddings

@pytest.fixture(scope="module")
def real(flickr_pairs, flickr_embeddings, cifar_small, cifar_small_embeddings, embedding_cache):
    from core.embedded import embed_prompts

    prompts, pc = embed_prompts(cifar_small.class_names, ["a photo of a {}.", "a blurry photo of a {}.",
                                                          "a picture of a {}."], "minilm", cache=embedding_cache)
    img, txt = flickr_embeddings
    meta = [{"image": flickr_pairs.image_names[i], "caption": c}
            for i, c in zip(flickr_pairs.pair_image.tolist(), flickr_pairs.captions)]
    return dict(img=img, txt=txt, meta=meta, q=cifar_small_embeddings, y=cifar_small.labels,
                prompts=prompts, pc=pc, names=list(cifar_small.class_names))


@pytest.mark.parametrize("strategy", ["mean", "per-template"])
def test_real_classification_identical_to_naive(real, strategy):
    m = AsifModel(real["img"], real["txt"], k=60, p=8, metadata=real["meta"])
    res = m.classify(real["q"], real["prompts"], real["pc"], strategy=strategy)
    pred, cls = _naive_classify(real["q"], real["img"], real["txt"], real["prompts"], real["pc"], 60, 8, strategy)
    np.testing.assert_array_equal(res.predictions, pred)
    np.testing.assert_allclose(res.scores, cls, atol=1e-5)
    assert res.accuracy(real["y"]) > 0.15  # ~500 Flickr pairs already beat chance (0.10) on CIFAR-10


def test_real_explanation_names_captions(real):
    m = AsifModel(real["img"], real["txt"], k=60, p=8, metadata=real["meta"])
    e = m.explain(real["q"][0], real["prompts"], real["pc"], class_names=real["names"])
    rows = e.contributions(top=10)
    assert rows and isinstance(rows[0]["caption"], str) and rows[0]["image"].endswith(".jpg")
    np.testing.assert_allclose(sum(r["share"] for r in e.contributions(top=None)), 1.0, atol=1e-5)
    # Fig. 3: the captions of the image's top-k neighbours are closer to the predicted class text than
    # captions on average (the paper's "captions of similar images are similar")
    c = e.prediction
    assert e.caption_similarity[c].mean() > e.all_caption_similarity[c].mean()


def test_cli_asif_eval_json(data_root, flickr_embeddings, cifar_small_embeddings, capsys):
    from core.__main__ import main

    rc = main(["asif", "eval", "--anchors", str(data_root / "flickr8k"), "--test",
               str(data_root / "cifar10" / "test"), "--limit-anchors", "200", "--per-class", "5",
               "--k", "40", "--p", "8", "--template", "a photo of a {}.", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n_anchors"] == 200 and out["n_test"] == 50 and 0.0 <= out["accuracy"] <= 1.0
    assert out["k"] == 40 and len(out["per_class_accuracy"]) == 10
    assert main(["asif", "eval", "--anchors", str(data_root / "flickr8k"), "--test",
                 str(data_root / "cifar10" / "test"), "--limit-anchors", "20", "--per-class", "1",
                 "--k", "50", "--json"]) == 2  # k > anchors: a clear error, exit code 2
    assert "larger than the number of anchors" in capsys.readouterr().err
