"""OTI / OVI on a random-weight open_clip model, and OTI into the ASIF space on the real MiniLM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.inversion import (ASIFObjective, CosineObjective, OpenClipTextEncoder, OpenClipVisionEncoder,
                            nearest_neighbour_repeat, nearest_vocabulary, oti, ovi)

ARCH = "ViT-S-32"  # the smallest ViT CLIP config open_clip ships (384 wide)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The per-step work is tiny (a few tokens); on a busy 2-core box OpenMP spinning across 2 threads
    made these steps 10-20x slower than 1 thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def clip():
    open_clip = pytest.importorskip("open_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, pretrained=None).eval()
    return model, open_clip.get_tokenizer(ARCH)


def _images(n=3, dim=384, seed=1):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("fast", [True, False])
def test_splice_places_pseudo_token_exactly_at_placeholder(clip, fast):
    model, tokenizer = clip
    enc = OpenClipTextEncoder(model, tokenizer, fast=fast)
    dev = torch.device("cpu")
    prepared = enc.prepare("a photo of {} on grass", 2, dev)
    ids = tokenizer(["a photo of £ £ on grass"])[0]
    expected = (ids == enc.placeholder_id).nonzero().flatten()
    assert prepared.positions.tolist() == expected.tolist() == [4, 5]
    pseudo = torch.randn(2, 2, enc.token_dim)
    x = prepared.splice(pseudo)
    assert torch.equal(x[:, prepared.positions], pseudo)
    others = torch.ones(x.shape[1], dtype=torch.bool)
    others[prepared.positions] = False
    assert torch.equal(x[:, others], prepared.base.expand(2, -1, -1)[:, others])
    # the real word's embedding at the placeholder reproduces the library's own encode_text
    real = tokenizer(["a photo of dog cat on grass"])
    words = model.token_embedding(real)[:, 4:6].detach()
    with torch.no_grad():
        got = enc.encode(prepared, words)
        want = model.encode_text(real)
    assert torch.allclose(got, want, atol=1e-4)


def test_fast_path_equals_library_path(clip):
    model, tokenizer = clip
    fast, slow = OpenClipTextEncoder(model, tokenizer), OpenClipTextEncoder(model, tokenizer, fast=False)
    dev = torch.device("cpu")
    pf, ps = fast.prepare("a photo of {}", 1, dev), slow.prepare("a photo of {}", 1, dev)
    assert pf.ids.shape[1] < ps.extra["full_ids"].shape[1]  # cut after the EOT token
    p = torch.randn(3, 1, fast.token_dim) * 0.02
    with torch.no_grad():
        assert torch.allclose(fast.encode(pf, p), slow.encode(ps, p), atol=1e-4)


def test_oti_loss_decreases_and_is_seeded(clip):
    model, tokenizer = clip
    enc = OpenClipTextEncoder(model, tokenizer)
    curve = []
    a = oti(enc, _images(), steps=15, seed=3, batch_size=3, device="cpu", on_loss=lambda s, v: curve.append(v))
    assert a.features.shape == (3, 384) and a.pseudo.shape == (3, 1, 384)
    assert np.allclose(np.linalg.norm(a.features, axis=1), 1, atol=1e-5)
    assert a.losses[-1] < a.losses[0] - 0.1
    assert len(curve) == 15 and np.isclose(curve[-1], a.losses[-1])
    b = oti(enc, _images(), steps=15, seed=3, batch_size=3, device="cpu")
    assert np.array_equal(a.features, b.features) and np.array_equal(a.losses, b.losses)
    c = oti(enc, _images(), steps=15, seed=4, batch_size=3, device="cpu")
    assert not np.array_equal(a.pseudo, c.pseudo)
    # batch size does not change the result beyond rounding (init drawn for the whole input)
    d = oti(enc, _images(), steps=15, seed=3, batch_size=2, device="cpu")
    assert np.abs(a.features - d.features).max() < 1e-2


def test_oti_validates_input(clip):
    model, tokenizer = clip
    enc = OpenClipTextEncoder(model, tokenizer)
    with pytest.raises(ValueError, match="placeholder"):
        oti(enc, _images(1), template="a photo of", steps=1)
    with pytest.raises(ValueError, match="NaN"):
        oti(enc, np.full((1, 384), np.nan, np.float32), steps=1)
    with pytest.raises(ValueError, match="amp"):
        oti(enc, _images(1), steps=1, amp="fp8")


def test_nearest_vocabulary_returns_words(clip):
    model, tokenizer = clip
    enc = OpenClipTextEncoder(model, tokenizer)
    dog = tokenizer(["dog"])[0, 1]
    words = nearest_vocabulary(enc, model.token_embedding.weight[dog].detach(), k=3)
    assert words[0][0][0] == "dog" and words[0][0][1] == pytest.approx(1.0, abs=1e-5)


def test_ovi_repeat_and_loss(clip):
    model, _ = clip
    x = torch.randn(2, 3, 5)
    ref = torch.nn.functional.interpolate(x[:, None], size=(49, 5), mode="nearest")[:, 0]
    assert torch.equal(nearest_neighbour_repeat(x, 49), ref)
    enc = OpenClipVisionEncoder(model)
    assert enc.n_patch_positions == 49
    r = ovi(enc, _images(2), n_patches=2, steps=12, seed=0, device="cpu")
    assert r.features.shape == (2, 384) and r.pseudo.shape == (2, 2, 384)
    assert r.losses[-1] < r.losses[0]
    with pytest.raises(ValueError, match="ViT"):
        OpenClipVisionEncoder(torch.nn.Module())


def test_cosine_objective():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    obj = CosineObjective(t)
    loss = obj(torch.tensor([[2.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    assert torch.allclose(loss, torch.tensor([0.0, 1.0]))


def test_asif_objective_matches_core_asif():
    from core.asif import relative_representation

    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(50, 16)).astype(np.float32)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    idx, val = relative_representation(x, anchors, 7, 3.0)
    obj = ASIFObjective(anchors, idx, val, 7, 3.0)
    my_idx, my_val = obj.relative(torch.from_numpy(x))
    assert np.array_equal(my_idx.numpy(), idx)
    assert np.allclose(my_val.numpy(), val, atol=1e-5)
    # the same vectors as target give zero loss
    assert torch.allclose(obj(torch.from_numpy(x), torch.arange(4)), torch.zeros(4), atol=1e-5)


def test_oti_into_asif_space_on_real_minilm(flickr_embeddings, flickr_pairs):
    """Invert two real images into MiniLM's token space, matching their ASIF relative representation."""
    from core.asif import relative_representation
    from core.contrastive import MiniLMTextEncoder
    from core.modality import asif_oti

    img, txt = flickr_embeddings
    first = np.unique(flickr_pairs.pair_image, return_index=True)[1]
    anchors = np.setdiff1d(np.arange(len(txt)), first[:2])  # the queries' own first pairs are not anchors
    k, p = 40, 4.0
    result = asif_oti(img[first[:2]], img[anchors], txt[anchors], k, p, steps=25, seed=0, device="cpu")
    assert result.features.shape == (2, 384)
    assert result.losses[-1] < result.losses[0] - 0.05
    # the learned sentence embedding's relative representation overlaps the image's
    i_idx, _ = relative_representation(img[first[:2]], img[anchors], k, p)
    t_idx, _ = relative_representation(result.features, txt[anchors], k, p)
    overlap = [len(set(a) & set(b)) for a, b in zip(i_idx.tolist(), t_idx.tolist())]
    assert min(overlap) > 0
    words = nearest_vocabulary(MiniLMTextEncoder(), result.pseudo[0], k=5)
    assert len(words[0]) == 5 and all(w.isalpha() for w, _ in words[0])
