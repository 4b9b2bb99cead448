"""core.layout on real Flickr8k embeddings: PCA, UMAP (structure kept), copies spread, disk cache."""
from __future__ import annotations

import numpy as np
import pytest

from core import layout as L


@pytest.fixture(scope="module")
def photos(flickr_pairs, flickr_embeddings):
    """``(distinct photo vectors [U, 1280], pair_image [P])`` of the first 100 Flickr8k photos."""
    img, _ = flickr_embeddings
    first = np.unique(flickr_pairs.pair_image, return_index=True)[1]
    return img[first], np.asarray(flickr_pairs.pair_image)


def _knn_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each row's k nearest rows in ``a`` that are also among its k nearest in ``b``."""
    def knn(x):
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return np.argsort(d, axis=1)[:, :k]
    na, nb = knn(a / np.linalg.norm(a, axis=1, keepdims=True)), knn(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def test_pca_matches_the_leading_principal_axes(photos):
    x, _ = photos
    xy = L.pca_2d(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    ref = centred @ vt[:2].T
    for j in range(2):
        assert abs(np.corrcoef(xy[:, j], ref[:, j])[0, 1]) > 0.999


def test_umap_keeps_neighbourhoods_better_than_pca(photos):
    x, _ = photos
    xy = L.umap_2d(x, seed=0)
    assert xy.shape == (x.shape[0], 2) and np.isfinite(xy).all()
    umap_overlap, pca_overlap = _knn_overlap(x, xy), _knn_overlap(x, L.pca_2d(x))
    assert umap_overlap > pca_overlap
    rng = np.random.default_rng(0)
    assert umap_overlap > 3 * _knn_overlap(x, rng.normal(size=xy.shape))  # far above chance


def test_layout_of_pairs_spreads_a_photos_captions_and_caches(photos, flickr_embeddings, tmp_path):
    x, pair_image = photos
    pairs_img = flickr_embeddings[0]
    progress = []
    xy = L.layout(pairs_img, "umap", cache_dir=tmp_path, progress=lambda f, m: progress.append(f))
    assert xy.shape == (pairs_img.shape[0], 2)
    assert progress and progress[-1] == 1.0
    files = list(tmp_path.glob("layout-*.npy"))
    assert len(files) == 1 and np.load(files[0]).shape == (x.shape[0], 2)  # laid out once per photo
    # a photo's captions sit on a small ring around one point: close, but distinct
    extent = np.ptp(xy, axis=0).max()
    for photo in range(3):
        ring = xy[pair_image == photo]
        assert len(np.unique(ring, axis=0)) == len(ring)
        assert np.ptp(ring, axis=0).max() < 0.02 * extent
    # the cache: same input -> the same layout, read back; other params or other data -> a miss
    assert np.array_equal(L.cached_layout(pairs_img, "umap", tmp_path), xy)
    assert np.array_equal(L.layout(pairs_img, "umap", cache_dir=tmp_path), xy)
    assert L.cached_layout(pairs_img, "umap", tmp_path, n_neighbors=5) is None
    changed = pairs_img.copy()
    changed[0, 0] += 1e-3
    assert L.cached_layout(changed, "umap", tmp_path) is None
    # a damaged cache file is recomputed, not trusted
    files[0].write_bytes(b"not a numpy file")
    assert L.cached_layout(pairs_img, "umap", tmp_path) is None


def test_relative_features_follow_the_pairs(flickr_embeddings):
    img, cap = flickr_embeddings
    f = L.relative_features(img, cap, k=50, p=8, dims=16)
    assert f.shape == (img.shape[0], 16) and np.isfinite(f).all()
    # pairs of the same photo share their image-side representation: closer than random pairs
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    same = float(np.mean(np.sum(fn[0:4] * fn[1:5], axis=1)))
    other = float(np.mean(fn[:50] @ fn[-50:].T))
    assert same > other


@pytest.mark.parametrize("bad", [np.zeros((0, 4)), np.zeros((3, 0)), np.zeros((2, 2, 2)),
                                 np.array([[np.nan, 1.0]]), np.array([["a", "b"]])])
def test_bad_input_is_a_value_error(bad, tmp_path):
    with pytest.raises(ValueError):
        L.layout(bad, "pca", cache_dir=tmp_path)


def test_unknown_method_or_parameter(photos):
    x, _ = photos
    with pytest.raises(ValueError, match="method"):
        L.layout(x, "tsne")
    with pytest.raises(ValueError, match="parameters"):
        L.layout(x, "umap", neighbours=5)
