"""Shared inputs for the ASIF benchmarks: real cached embeddings (Flickr8k anchors, CIFAR-10) or
synthetic ones of the same shapes. Real embeddings are only read from the embedding cache: nothing
is encoded here (run `python -m core embed` first); when they are missing the caller is told."""
from __future__ import annotations

import platform
import time

import numpy as np


def machine() -> str:
    import os

    import torch
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, load avg {load:.1f} at start")


def real_inputs(image_encoder: str = "efficientnet-lite0", text_encoder: str = "minilm",
                n_anchors: int | None = None, split: str = "test", partial_queries: bool = False):
    """Flickr8k pairs (all or first n) + CIFAR-10 ``split`` images, all from the cache.

    Returns dict(anchor_img, anchor_txt, meta, q, y, class_names, prompts_emb, prompt_classes)."""
    from core.asif import DEFAULT_TEMPLATES
    from core.cache import default_cache
    from core.data import data_dir, load_labeled, load_pairs_folder
    from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed_prompts

    cache = default_cache()
    root = data_dir(required=True)
    pairs = load_pairs_folder(root / "flickr8k")
    if n_anchors:
        pairs = pairs.subset(range(min(n_anchors, len(pairs))))
    anchors = EmbeddedPairs.from_pairset(pairs, image_encoder, text_encoder, cache=cache, compute=False)
    _require_cached(anchors.skipped, "anchor")
    test = EmbeddedLabeled.from_labeled(load_labeled(root / "cifar10" / split), image_encoder,
                                        cache=cache, compute=False)
    if not partial_queries:  # else: only the CIFAR-10 images already cached
        _require_cached(test.skipped, "query")
    pe, pc = embed_prompts(test.class_names, DEFAULT_TEMPLATES, text_encoder, cache=cache)
    name_of = dict(zip(pairs.images, pairs.image_names))
    meta = [{"image": name_of[path], "caption": c} for path, c in zip(anchors.pair_paths, anchors.captions)]
    return dict(anchor_img=anchors.pair_image_vectors, anchor_txt=anchors.text_vectors, meta=meta,
                q=test.vectors, y=test.labels, class_names=list(test.class_names), prompts_emb=pe,
                prompt_classes=pc)


def _require_cached(skipped, what: str) -> None:
    if skipped:
        raise SystemExit(f"{len(skipped)} {what} items have no cached embedding yet (e.g. "
                         f"{skipped[0]}); run `python -m core embed` for this data first.")


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
