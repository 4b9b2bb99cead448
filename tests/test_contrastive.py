"""Our LiT-style model: reproducible training, save/load, MiniLM differentiable from token embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.contrastive import (ContrastiveConfig, MiniLMTextEncoder, contrastive_loss, load_heads, save_heads,
                              train_contrastive, zero_shot_classify)


def test_training_is_reproducible_on_a_real_subset(flickr_embeddings, flickr_pairs, tmp_path):
    img, txt = flickr_embeddings
    groups = flickr_pairs.pair_image
    cfg = ContrastiveConfig(embed_dim=64, epochs=8, batch_size=128, seed=7)
    seen = []
    a = train_contrastive(img, txt, groups, cfg, progress=lambda d, t: seen.append((d, t)))
    b = train_contrastive(img, txt, groups, cfg)
    assert seen[-1][0] == seen[-1][1] == len(a.losses)
    for (ka, va), (kb, vb) in zip(a.heads.state_dict().items(), b.heads.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert np.array_equal(a.losses, b.losses)
    assert a.losses[-1] < 0.7 * a.losses[0]
    c = train_contrastive(img, txt, groups, ContrastiveConfig(embed_dim=64, epochs=8, batch_size=128, seed=8))
    assert not torch.equal(a.heads.image_proj.weight, c.heads.image_proj.weight)
    # trained heads retrieve the right image for a caption far above chance on the training pairs
    x, t = a.heads.encode_image_features(img), a.heads.encode_text_features(txt)
    top1 = (t @ x.T).argmax(1)
    assert (groups[top1] == groups).mean() > 0.3
    path = save_heads(a, tmp_path / "heads.safetensors", {"note": "test"})
    heads, meta = load_heads(path)
    assert meta["note"] == "test" and meta["training"]["steps"] == len(a.losses)
    assert np.allclose(heads.encode_image_features(img[:5]), x[:5], atol=1e-6)


def test_training_validates_input():
    with pytest.raises(ValueError, match="paired"):
        train_contrastive(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        train_contrastive(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="No trained heads"):
        load_heads("/nonexistent/heads.safetensors")


def test_loss_masks_other_captions_of_the_same_image():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    groups = torch.tensor([0, 0, 1])
    masked = contrastive_loss(img, img, torch.tensor(10.0), groups)
    unmasked = contrastive_loss(img, img, torch.tensor(10.0))
    assert masked < unmasked


def test_zero_shot_classify_shapes():
    rng = np.random.default_rng(0)
    r = train_contrastive(rng.normal(size=(64, 12)), rng.normal(size=(64, 6)),
                          config=ContrastiveConfig(embed_dim=8, epochs=2, batch_size=32))
    pred = zero_shot_classify(r.heads, rng.normal(size=(5, 12)), rng.normal(size=(3, 4, 6)))
    assert pred.shape == (5,) and pred.max() < 3


def test_minilm_pseudo_token_path_equals_sentence_transformer(text_encoder):
    enc = MiniLMTextEncoder(text_encoder.model)
    prepared = enc.prepare("a photo of {}", 1, torch.device("cpu"))
    ids = enc.tokenizer("a photo of dog")["input_ids"]
    assert prepared.positions.tolist() == [4] and prepared.ids[0, 4] == enc.placeholder_id
    word = enc.embedding.weight[ids[4]].detach().view(1, 1, -1)
    with torch.no_grad():
        got = enc.encode(prepared, word)
    want = text_encoder.encode(["a photo of dog"])
    assert np.allclose(got.numpy(), want, atol=1e-5)
    # gradients reach the pseudo-token through the frozen transformer
    p = torch.zeros(1, 1, enc.token_dim, requires_grad=True)
    enc.encode(prepared, p).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
