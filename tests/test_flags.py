"""core.flags on real data: planted near-duplicate photos (made at test time) and captions are found,
an unrelated picture is the top outlier, swapped captions score as mismatches."""
from __future__ import annotations

import numpy as np
import pytest

from bench.map import paraphrase, plant_photo, vectors
from core import flags as F

N_PLANT = 8


@pytest.fixture(scope="module")
def photos(flickr_pairs, flickr_embeddings):
    first = np.unique(flickr_pairs.pair_image, return_index=True)[1]
    return flickr_embeddings[0][first]


def test_neighbours_never_list_the_row_itself():
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    idx, sims = F.neighbours(x, k=2)
    assert idx.shape == (5, 2)
    assert not (idx == np.arange(5)[:, None]).any()
    assert sims[0].tolist() == [1.0, 1.0]  # its two copies


def test_planted_photo_copies_are_grouped_with_their_source(flickr_pairs, photos, tmp_path):
    rng = np.random.default_rng(5)
    src = rng.choice(len(photos), size=N_PLANT, replace=False)
    paths = []
    for j, s in enumerate(src.tolist()):
        plant_photo(flickr_pairs.images[s], str(tmp_path / f"c{j}.jpg"), rng)
        paths.append(str(tmp_path / f"c{j}.jpg"))
    x = np.concatenate([photos, vectors("efficientnet-lite0", paths)])
    thumbs = F.thumbnails(list(flickr_pairs.images) + paths)
    group, best = F.near_duplicates(x, F.IMAGE_DUPLICATE, thumbs=thumbs)
    copies = len(photos) + np.arange(N_PLANT)
    found = (group[copies] >= 0) & (group[copies] == group[src])
    assert found.mean() >= 0.75
    assert (group >= 0).sum() <= 2 * N_PLANT + 2  # few other photos are flagged
    assert best.shape == (len(x),) and (best[copies] >= best[: len(photos)].mean()).all()
    # thumbnails confirm: a copy correlates with its source far more than with another photo
    own = np.einsum("ij,ij->i", thumbs[copies], thumbs[src])
    assert np.median(own) > 0.9 > np.median(thumbs[copies] @ thumbs[: len(photos)].T)
    # an unreadable file has a zero thumbnail: it confirms nothing
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    assert not F.thumbnails([str(tmp_path / "broken.jpg")]).any()


def test_paraphrased_captions_are_grouped_and_siblings_are_not(flickr_pairs, flickr_embeddings):
    caps = list(flickr_pairs.captions)
    rng = np.random.default_rng(3)
    src = rng.choice(len(caps), size=N_PLANT, replace=False)
    texts = caps + [paraphrase(caps[s], rng) for s in src.tolist()]
    x = np.concatenate([flickr_embeddings[1], vectors("minilm", texts[len(caps):])])
    group, _ = F.near_duplicate_captions(x, texts, F.CAPTION_DUPLICATE)
    copies = len(caps) + np.arange(N_PLANT)
    assert ((group[copies] >= 0) & (group[copies] == group[src])).all()
    # two captions of one photo that differ by more than one word are not near-duplicates
    a, b = "A dog runs across the green grass .", "A brown dog is running on the grass ."
    pair = vectors("minilm", [a, b])
    assert (F.near_duplicate_captions(pair, [a, b], 0.0)[0] == -1).all()
    assert (F.near_duplicate_captions(pair, [a, a.upper() + "!"], 0.0)[0] == 0).all()


def test_word_edits():
    w = F.words
    assert w("A Dog, running!") == ["a", "dog", "running"]
    assert F.word_edits(w("a dog runs"), w("A dog runs ."), 1) == 0
    assert F.word_edits(w("a dog runs"), w("a puppy runs"), 1) == 1
    assert F.word_edits(w("a dog runs"), w("one dog runs fast"), 1) == 2  # over the limit
    assert F.word_edits(w("a dog runs"), w("a dog runs far away"), 1) == 2


def test_an_unrelated_picture_is_the_top_outlier(photos, tmp_path):
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    x = np.concatenate([photos, vectors("efficientnet-lite0", [str(tmp_path / "noise.png")])])
    scores = F.outlier_scores(x)
    assert int(np.argmax(scores)) == len(photos)
    flagged = F.outliers(scores, 0.01)
    assert flagged[-1] and flagged.sum() == int(np.ceil(0.01 * len(x)))


def test_planted_odd_pictures_and_captions_are_the_top_outliers(flickr_pairs, flickr_embeddings, photos, tmp_path):
    """Six noise and six flat-colour pictures among the photos, and ten sentences from Python's
    help topics among the captions, are the highest outlier scores with OUTLIER_K neighbours; with
    fewer neighbours than the planted group, its members vouch for each other and hide."""
    from bench.map import odd_picture, other_domain_sentences

    rng = np.random.default_rng(3)
    paths = []
    for j in range(12):
        paths.append(str(tmp_path / f"odd{j}.jpg"))
        odd_picture(paths[-1], "noise" if j % 2 else "blocks", rng)
    x = np.concatenate([photos, vectors("efficientnet-lite0", paths)])
    planted = np.arange(len(photos), len(x))
    top = np.argsort(-F.outlier_scores(x, F.OUTLIER_K), kind="stable")[:12]
    assert np.isin(top, planted).mean() >= 10 / 12
    hidden = np.argsort(-F.outlier_scores(x, 3), kind="stable")[:12]
    assert np.isin(hidden, planted).mean() < np.isin(top, planted).mean()

    sentences = other_domain_sentences()
    odd = [sentences[i] for i in rng.choice(len(sentences), 10, replace=False)]
    cap = np.concatenate([flickr_embeddings[1], vectors("minilm", odd)])
    top = np.argsort(-F.outlier_scores(cap, F.OUTLIER_K), kind="stable")[:10]
    assert np.isin(top, np.arange(len(cap) - 10, len(cap))).mean() >= 0.8


def test_pair_flags_columns_and_swapped_captions(flickr_pairs, flickr_embeddings, photos):
    cap = flickr_embeddings[1].copy()
    texts = list(flickr_pairs.captions)
    rng = np.random.default_rng(1)
    swap = rng.choice(len(cap), size=20, replace=False)
    cap[swap] = cap[swap[::-1]]  # 20 captions moved to other photos
    cols = F.pair_flags(photos, flickr_pairs.pair_image, cap, texts)
    n = len(cap)
    assert all(len(v) == n for v in cols.values())
    assert {"photo_dup_group", "caption_dup_group", "photo_outlier", "caption_outlier", "mismatch"} <= set(cols)
    pi = np.asarray(flickr_pairs.pair_image)
    moved = np.zeros(n, dtype=bool)
    moved[swap] = pi[swap[::-1]] != pi[swap]  # the caption now describes another photo
    score = cols["mismatch_score"]
    auc = float((score[moved][:, None] > score[~moved][None, :]).mean())
    assert auc > 0.65  # a moved caption usually scores above a kept one (chance: 0.5; 100 photos only)


def test_bad_inputs():
    with pytest.raises(ValueError):
        F.near_duplicates(np.zeros((1, 3)), 0.9)
    with pytest.raises(ValueError):
        F.near_duplicates(np.eye(3), 1.5)
    with pytest.raises(ValueError):
        F.near_duplicate_captions(np.eye(3), ["a", "b"], 0.9)
