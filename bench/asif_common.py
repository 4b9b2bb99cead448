"""Shared inputs for the ASIF benchmarks: real cached embeddings (Flickr8k anchors, CIFAR-10) or
synthetic ones of the same shapes. Real embeddings are only read from the embedding cache: nothing
is encoded here (run `python -m core embed` first); when they are missing the caller is told."""
from __future__ import annotations

import platform
import time

import numpy as np

CIFAR_TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}.",
                   "a close-up photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
                   "a low resolution photo of a {}.", "a picture of a {}."]


def machine() -> str:
    import os

    import torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, load avg {load:.1f} at start")


def _cached(encoder: str, items, keys):
    from core.cache import default_cache
    from core.encoders import cache_id_of

    cache = default_cache()
    vecs, found = cache.lookup(cache_id_of(encoder), keys, count=False)
    if vecs is None or not found.all():
        missing = int((~found).sum()) if vecs is not None else len(keys)
        raise SystemExit(f"{missing} of {len(keys)} {encoder} embeddings are not cached yet; run "
                         f"`python -m core embed` for this data first.")
    return vecs


def real_inputs(image_encoder: str = "efficientnet-lite0", text_encoder: str = "minilm",
                n_anchors: int | None = None, split: str = "test", partial_queries: bool = False):
    """Flickr8k pairs (all or first n) + CIFAR-10 ``split`` images, all from the cache.

    Returns dict(anchor_img, anchor_txt, meta, q, y, class_names, prompts_emb, prompt_classes)."""
    from core.cache import text_key
    from core.data import data_dir, load_labeled, load_pairs_folder

    from core.asif import build_prompts

    root = data_dir(required=True)
    pairs = load_pairs_folder(root / "flickr8k")
    if n_anchors:
        pairs = pairs.subset(range(min(n_anchors, len(pairs))))
    img_u = _cached(image_encoder, pairs.images, [bytes(k) for k in pairs.image_keys])
    img = img_u[np.asarray(pairs.pair_image)]
    txt = _cached(text_encoder, pairs.captions, [text_key(c) for c in pairs.captions])
    lab = load_labeled(root / "cifar10" / split)
    if partial_queries:  # only the CIFAR-10 images already cached
        from core.cache import default_cache
        from core.encoders import cache_id_of
        found = default_cache().contains(cache_id_of(image_encoder), [bytes(k) for k in lab.keys])
        lab = lab.subset(np.flatnonzero(found))
    q = _cached(image_encoder, lab.paths, [bytes(k) for k in lab.keys])
    prompts, pc = build_prompts(lab.class_names, CIFAR_TEMPLATES)
    from core.cache import embed_texts
    pe = embed_texts(text_encoder, prompts)  # 80 short prompts: computed if needed (seconds)
    meta = [{"image": pairs.image_names[i], "caption": c}
            for i, c in zip(pairs.pair_image.tolist(), pairs.captions)]
    return dict(anchor_img=img, anchor_txt=txt, meta=meta, q=q, y=lab.labels,
                class_names=list(lab.class_names), prompts_emb=pe, prompt_classes=pc, root=root,
                labeled=lab)


def synthetic_inputs(n: int, q: int, d_img: int, d_txt: int, n_classes: int = 10,
                     n_templates: int = 8, seed: int = 0, captions_per_image: int = 1):
    """Random unit vectors. ``captions_per_image`` > 1 repeats each anchor image that many times
    (Flickr8k has 5 captions per image, so its 35,000 pairs hold 7,000 distinct images)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()

    def unit(x):
        x = x.astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    n_img = -(-n // captions_per_image)
    img = np.repeat(unit(rng.standard_normal((n_img, d_img), dtype=np.float32)), captions_per_image, axis=0)[:n]
    txt = unit(rng.standard_normal((n, d_txt), dtype=np.float32))
    qq = unit(rng.standard_normal((q, d_img), dtype=np.float32))
    y = rng.integers(0, n_classes, q)
    pe = unit(rng.standard_normal((n_classes * n_templates, d_txt), dtype=np.float32))
    pc = np.repeat(np.arange(n_classes), n_templates)
    return dict(anchor_img=img, anchor_txt=txt, meta=None, q=qq, y=y,
                class_names=[f"c{i}" for i in range(n_classes)], prompts_emb=pe, prompt_classes=pc,
                build_s=time.perf_counter() - t0)
