"""Experiments of the modality-inversion issue, wired to real data: data -> cached embeddings
(``core.embedded``, through the :class:`core.cache.EmbeddingCache` every data-reading function takes)
-> our contrastive model -> inversion (``core.inversion``) -> gap and retrieval metrics (``core.gap``).

Used by ``python -m core invert …`` and the Invert page; every function returns plain dicts/arrays.
The built-in model is LiT-style (``core.contrastive``): frozen EfficientNet-Lite0 + frozen MiniLM with
trained linear heads. Data come from ``core.data.demo_sources()`` (Flickr8k pairs, CIFAR-10).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from core import gap
from core.arrays import l2_normalize
from core.cache import EmbeddingCache
from core.contrastive import (DEFAULT_HEADS, ContrastiveConfig, ContrastiveHeads, MiniLMTextEncoder,
                              load_heads, load_minilm, save_heads, train_contrastive, zero_shot_classify)
from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed_prompts
from core.inversion import ASIFObjective, InversionResult, nearest_vocabulary, oti

ProgressFn = Callable[[int, int], None]
IMAGE_ENCODER = "efficientnet-lite0"
TEXT_ENCODER = "minilm"


# --------------------------------------------------------------------------------------------------
# data and embeddings (through the shared cache)
# --------------------------------------------------------------------------------------------------
def _sources() -> dict:
    from core.data import demo_sources

    return demo_sources(required=True)


def flickr_pairs(n_images: Optional[int] = None, folder: Optional[str | Path] = None):
    """The Flickr8k :class:`core.data.PairSet` (first ``n_images`` images, all their captions)."""
    from core.data import load_pairs_folder

    pairs = load_pairs_folder(folder or _sources()["flickr8k"])
    if len(pairs) == 0:
        raise ValueError(f"No image-caption pairs found: {pairs.report.summary()}")
    return pairs.first_images(n_images) if n_images else pairs


def flickr_embedded(n_images: Optional[int] = None, image_encoder: str = IMAGE_ENCODER,
                    text_encoder: str = TEXT_ENCODER, *, cache: EmbeddingCache,
                    progress: Optional[ProgressFn] = None) -> EmbeddedPairs:
    """The Flickr8k pairs (first ``n_images`` images, all their captions), embedded."""
    return EmbeddedPairs.from_pairset(flickr_pairs(n_images), image_encoder, text_encoder,
                                      cache=cache, progress=progress)


def cifar_embedded(split: str = "test", per_class: Optional[int] = None,
                   image_encoder: str = IMAGE_ENCODER, *, cache: EmbeddingCache,
                   progress: Optional[ProgressFn] = None) -> EmbeddedLabeled:
    """CIFAR-10 ``split`` ("test"/"train"), the first ``per_class`` images of each class, embedded."""
    from core.data import load_labeled

    folder = _sources()[f"cifar10_{split}"]
    if folder is None:
        raise ValueError(f"CIFAR-10 {split} images are missing from the demo data folder.")
    labeled = load_labeled(folder)
    if per_class:
        labeled = labeled.per_class(per_class)
    return EmbeddedLabeled.from_labeled(labeled, image_encoder, cache=cache, progress=progress)


# --------------------------------------------------------------------------------------------------
# our model
# --------------------------------------------------------------------------------------------------
def train_on_flickr(n_images: Optional[int] = None, config: Optional[ContrastiveConfig] = None,
                    progress: Optional[ProgressFn] = None, save_to: Optional[str | Path] = None, *,
                    cache: EmbeddingCache):
    """Train the LiT heads on the Flickr8k pairs (all, or the first ``n_images`` images)."""
    pairs = flickr_embedded(n_images, cache=cache)
    result = train_contrastive(pairs.pair_image_vectors, pairs.text_vectors, pairs.pair_image, config,
                               progress=progress)
    result.info.update({"data": "flickr8k", "n_images": int(len(pairs.images))})
    if save_to:
        save_heads(result, save_to)
    return result


def get_model(path: str | Path = DEFAULT_HEADS, train_if_missing: bool = True,
              progress: Optional[ProgressFn] = None, *,
              cache: Optional[EmbeddingCache] = None) -> tuple[ContrastiveHeads, dict]:
    """The trained heads (``assets/``); trained on first use (all Flickr8k pairs, embedded through
    ``cache``) if absent."""
    path = Path(path)
    if not path.exists():
        if not train_if_missing:
            raise ValueError(f"No trained heads at {path}; run `python -m core train-contrastive`.")
        if cache is None:
            raise ValueError("Training the heads reads the Flickr8k embeddings: pass cache=.")
        train_on_flickr(progress=progress, save_to=path, cache=cache)
    return load_heads(path)


def cifar_zero_shot(heads: ContrastiveHeads, templates: Optional[Sequence[str]] = None,
                    per_class: Optional[int] = None, *, cache: EmbeddingCache) -> dict:
    """CIFAR-10 test zero-shot accuracy of our model (class × template prompts averaged per class)."""
    from core.asif import DEFAULT_TEMPLATES

    test = cifar_embedded("test", per_class, cache=cache)
    templates = list(templates or DEFAULT_TEMPLATES)
    pe, _ = embed_prompts(test.class_names, templates, TEXT_ENCODER, cache=cache)
    pred = zero_shot_classify(heads, test.vectors, pe.reshape(len(test.class_names), len(templates), -1))
    return {"accuracy": float((pred == test.labels).mean()), "n_test": int(len(test)),
            "n_templates": len(templates)}


def asif_zero_shot(n_images: Optional[int] = None, per_class: Optional[int] = None, k: Optional[int] = None,
                   p: Optional[float] = None, *, cache: EmbeddingCache) -> dict:
    """ASIF's CIFAR-10 zero-shot accuracy with the same Flickr8k pairs and the same two encoders."""
    from core.asif import DEFAULT_K, DEFAULT_P, DEFAULT_TEMPLATES, AsifModel

    pairs = flickr_embedded(n_images, cache=cache)
    k = min(k or DEFAULT_K, len(pairs))
    model = AsifModel(pairs.pair_image_vectors, pairs.text_vectors, k=k, p=p or DEFAULT_P)
    test = cifar_embedded("test", per_class, cache=cache)
    prompts, classes = embed_prompts(test.class_names, DEFAULT_TEMPLATES, TEXT_ENCODER, cache=cache)
    cls = model.classify(test.vectors, prompts, classes)
    return {"accuracy": cls.accuracy(test.labels), "n_anchors": model.n_anchors, "n_test": int(len(test)),
            "k": model.k, "p": model.p}


# --------------------------------------------------------------------------------------------------
# inversion experiments
# --------------------------------------------------------------------------------------------------
def minilm_tokens(cache: Optional[EmbeddingCache] = None, head=None) -> MiniLMTextEncoder:
    """MiniLM's token space for OTI, sharing the model ``cache.encoders`` loaded (a fresh load
    without a cache); ``head`` (our text projection) lands it in our shared space."""
    model = cache.encoders.get(TEXT_ENCODER).model if cache is not None else load_minilm()
    return MiniLMTextEncoder(model, head=head)


def lit_text_encoder(heads: ContrastiveHeads, *,
                     cache: Optional[EmbeddingCache] = None) -> MiniLMTextEncoder:
    """MiniLM + our text head: OTI through it lands in our shared space."""
    return minilm_tokens(cache, head=heads.text_proj)


def oti_lit(heads: ContrastiveHeads, image_features: np.ndarray, *,
            cache: Optional[EmbeddingCache] = None, **kwargs) -> InversionResult:
    """OTI of raw image-encoder features ``[B, d_i]`` into our model's text side; ``features`` are in
    the shared space (normalised text-head outputs). kwargs go to :func:`core.inversion.oti`."""
    target = heads.encode_image_features(image_features)
    return oti(lit_text_encoder(heads, cache=cache), target, **kwargs)


def asif_oti(image_features: np.ndarray, anchor_images: np.ndarray, anchor_texts: np.ndarray,
             k: int, p: float, *, cache: Optional[EmbeddingCache] = None, **kwargs) -> InversionResult:
    """OTI into the ASIF space: learn a MiniLM pseudo-token whose sentence embedding's relative
    representation over the anchor captions matches the image's over the anchor images.
    ``features`` are MiniLM sentence embeddings ``[B, 384]``."""
    from core.asif import relative_representation

    idx, val = relative_representation(image_features, anchor_images, k, p)
    objective = ASIFObjective(anchor_texts, idx, val, k, p)
    return oti(minilm_tokens(cache), objective=objective, **kwargs)


def nearest_texts(features: np.ndarray, text_bank: np.ndarray, texts: Sequence[str], k: int = 5):
    """Top-``k`` ``(text, cosine)`` per row of ``features`` against ``text_bank [M, d]``."""
    s = l2_normalize(features) @ l2_normalize(text_bank).T
    top = np.argsort(-s, axis=1)[:, :k]
    return [[(texts[j], float(s[i, j])) for j in row] for i, row in enumerate(top)]


def cifar_query_gallery(per_class: int = 50, queries_per_class: int = 10, *, cache: EmbeddingCache):
    """CIFAR-10 test images, first ``per_class`` of each class: the first ``queries_per_class`` of each
    class are queries, the rest the gallery (disjoint). Returns raw features and labels of both, and
    the class names."""
    if not 0 < queries_per_class < per_class:
        raise ValueError("queries_per_class must be between 1 and per_class - 1.")
    test = cifar_embedded("test", per_class, cache=cache)
    feats, labels, names = test.vectors, test.labels, test.class_names
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rank[labels == c] = np.arange((labels == c).sum())
    q = rank < queries_per_class
    return feats[q], labels[q], feats[~q], labels[~q], names


def image_retrieval_experiment(heads: ContrastiveHeads, per_class: int = 50, queries_per_class: int = 10,
                               steps: int = 150, seed: int = 0, batch_size: int = 256,
                               progress: Optional[ProgressFn] = None, *, cache: EmbeddingCache) -> dict:
    """CIFAR-10 image->image mAP (relevant: same class; queries and gallery disjoint, see
    :func:`cifar_query_gallery`) with native image queries vs OTI-inverted queries, in our space."""
    q_raw, q_lab, g_raw, g_lab, _ = cifar_query_gallery(per_class, queries_per_class, cache=cache)
    q = heads.encode_image_features(q_raw)
    g = heads.encode_image_features(g_raw)
    rel = gap.label_relevance(q_lab, g_lab)
    native = gap.mean_average_precision(q, g, rel)
    inv = oti_lit(heads, q_raw, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                  cache=cache)
    inverted = gap.mean_average_precision(inv.features, g, rel)
    mixed = gap.mean_average_precision(l2_normalize(q + inv.features), g, rel)
    return {"native_mAP": native["mAP"], "oti_mAP": inverted["mAP"], "native_plus_oti_mAP": mixed["mAP"],
            "n_queries": native["n_queries"], "n_gallery": int(len(g)), "oti": inv.to_json(),
            "oti_features": inv.features}


def text_retrieval_experiment(heads: Optional[ContrastiveHeads], n_images: Optional[int] = None, *,
                              cache: EmbeddingCache) -> dict:
    """Flickr8k text->text mAP (first caption queries, the image's other captions relevant) in our
    space and in MiniLM's own space. OVI is not applicable to our model (no ViT patches)."""
    pairs = flickr_embedded(n_images, cache=cache)
    txt = pairs.text_vectors
    queries, rel, exc = gap.caption_relevance(pairs.pair_image)
    out = {"minilm_mAP": gap.mean_average_precision(txt[queries], txt, rel, exc)["mAP"],
           "n_queries": int(len(queries)), "n_gallery": int(len(txt))}
    if heads is not None:
        t = heads.encode_text_features(txt)
        out["lit_mAP"] = gap.mean_average_precision(t[queries], t, rel, exc)["mAP"]
    return out


def gap_report(heads: ContrastiveHeads, n_images: Optional[int] = None, *,
               cache: EmbeddingCache) -> dict:
    """Modality gap of our model on Flickr8k (images vs their captions, in the shared space)."""
    pairs = flickr_embedded(n_images, cache=cache)
    x = heads.encode_image_features(pairs.image_vectors)
    t = heads.encode_text_features(pairs.text_vectors)
    return gap.modality_gap(x, t, (pairs.pair_image, np.arange(len(t))))


def recovery_experiment(heads: ContrastiveHeads, n_images: Optional[int] = 3000,
                        ranks: Sequence[Optional[int]] = (None,), *,
                        cache: EmbeddingCache) -> list[dict]:
    """Supplement A on our model: recover image-image similarities from caption-image ones
    (Flickr8k, the first caption of each of the first ``n_images`` images × those images), compared
    with the true ones. ``None`` in ``ranks`` = the numerical rank of S_inter (the model's dimension)."""
    pairs = flickr_embedded(n_images, cache=cache).one_caption_per_image()
    x = heads.encode_image_features(pairs.pair_image_vectors)
    t = heads.encode_text_features(pairs.text_vectors)
    truth = x @ x.T
    rows = []
    for r in ranks:
        res = gap.recover_intra_from_inter(t @ x.T, rank=r)
        row = res.to_json()
        if res.s_intra is not None:
            iu = np.triu_indices(len(x), 1)
            row["max_abs_error"] = float(np.abs(res.s_intra - truth).max())
            row["pearson_r"] = float(np.corrcoef(res.s_intra[iu], truth[iu])[0, 1])
        rows.append(row)
    return rows


def projection_experiment(heads: ContrastiveHeads, axes: Sequence[int] = (4, 8, 16, 32, 64),
                          per_class: int = 50, queries_per_class: int = 10,
                          templates: Optional[Sequence[str]] = None, *,
                          cache: EmbeddingCache) -> list[dict]:
    """Supplement B on our model: CIFAR-10 image->image mAP with image embeddings projected onto the
    top principal axes of class-name text embeddings (class names × prompt templates: at most
    C·T − 1 axes), with and without mean adjustment."""
    from core.asif import DEFAULT_TEMPLATES

    q_raw, q_lab, g_raw, g_lab, names = cifar_query_gallery(per_class, queries_per_class, cache=cache)
    prompts, _ = embed_prompts(names, templates or DEFAULT_TEMPLATES, TEXT_ENCODER, cache=cache)
    cls = heads.encode_text_features(prompts)
    q, g = heads.encode_image_features(q_raw), heads.encode_image_features(g_raw)
    rel = gap.label_relevance(q_lab, g_lab)
    rows = [{"axes": "none (native)", "mean_adjust": None, "mAP": gap.mean_average_precision(q, g, rel)["mAP"]}]
    both = np.concatenate([q, g])
    for n in axes:
        if n > len(cls) - 1:
            continue
        for adjust in (False, True):
            pr = gap.class_axis_projection(both, cls, n, mean_adjust=adjust)
            rows.append({"axes": n, "mean_adjust": adjust,
                         "mAP": gap.mean_average_precision(pr[:len(q)], pr[len(q):], rel)["mAP"]})
    return rows


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def asif_space_gap(image_features: np.ndarray, text_features: np.ndarray, k: int, p: float,
                   n_queries: int = 500, seed: int = 0, max_values: int = 20000) -> dict:
    """The modality gap *in the ASIF space* of any two encoders: paired per-pair features
    ``image [P, d_i]`` / ``text [P, d_t]``; ``n_queries`` pairs (seeded) are held out as queries, the
    rest are anchors; images are represented over the anchor images and captions over the anchor
    captions (``core.asif.relative_representation``), densified ``[n_queries, N]``; returns
    ``{"gap": modality_gap(...), "distributions": similarity_distributions(...)}``."""
    from core.asif import relative_representation

    img, txt = np.asarray(image_features, np.float32), np.asarray(text_features, np.float32)
    if len(img) != len(txt):
        raise ValueError("Image and text features must be paired (one row per pair).")
    n_queries = min(n_queries, len(img) // 2)
    if n_queries < 2:
        raise ValueError("Need at least 4 pairs for the ASIF-space gap.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(img))
    q, a = perm[:n_queries], perm[n_queries:]
    k = min(k, len(a))

    def dense(x, anchors):
        idx, val = relative_representation(x, anchors, k, p)
        out = np.zeros((len(x), len(anchors)), np.float32)
        np.put_along_axis(out, idx, val, axis=1)
        return out

    xi, xt = dense(img[q], img[a]), dense(txt[q], txt[a])
    return {"gap": gap.modality_gap(xi, xt, (np.arange(len(q)), np.arange(len(q)))),
            "distributions": gap.similarity_distributions(xi, xt, max_values=max_values, seed=seed),
            "k": int(k), "p": float(p), "n_anchors": int(len(a)), "n_queries": int(len(q))}


def lit_space_gap(heads: ContrastiveHeads, image_features: np.ndarray, text_features: np.ndarray,
                  inverted: Optional[np.ndarray] = None, seed: int = 0) -> dict:
    """Gap and similarity distributions of paired raw features in our model's shared space;
    ``inverted`` (OTI features of the same images, already in the shared space) adds OTI-image."""
    x, t = heads.encode_image_features(image_features), heads.encode_text_features(text_features)
    n = np.arange(len(x))
    return {"gap": gap.modality_gap(x, t, (n, n)),
            "distributions": gap.similarity_distributions(x, t, inverted=inverted, seed=seed)}


def asif_oti_experiment(n_images: Optional[int] = None, per_class: int = 5, k: Optional[int] = None,
                        p: Optional[float] = None, steps: int = 150, seed: int = 0, batch_size: int = 256,
                        n_words: int = 5, progress: Optional[ProgressFn] = None, *,
                        cache: EmbeddingCache) -> dict:
    """OTI into the ASIF space for CIFAR-10 test images (first ``per_class`` of each class), Flickr8k
    pairs as anchors: each image becomes a MiniLM pseudo-token. Reports the loss, the nearest words of
    each learned token, and how often the pseudo-sentence "a photo of <token>" is closest (MiniLM
    cosine, text-text) to the right class prompt, next to ASIF's own accuracy on the same images."""
    from core.asif import DEFAULT_K, DEFAULT_P, DEFAULT_TEMPLATES, AsifModel

    pairs = flickr_embedded(n_images, cache=cache)
    img, txt = pairs.pair_image_vectors, pairs.text_vectors
    k = min(k or DEFAULT_K, len(txt))
    p = float(p or DEFAULT_P)
    test = cifar_embedded("test", per_class, cache=cache)
    feats, labels, names = test.vectors, test.labels, test.class_names
    result = asif_oti(feats, img, txt, k, p, steps=steps, seed=seed, batch_size=batch_size,
                      progress=progress, cache=cache)
    prompts, classes = embed_prompts(names, DEFAULT_TEMPLATES, TEXT_ENCODER, cache=cache)
    pe = prompts.reshape(len(names), len(DEFAULT_TEMPLATES), -1).mean(1)
    pred = (result.features @ l2_normalize(pe).T).argmax(1)
    asif = AsifModel(img, txt, k=k, p=p).classify(feats, prompts, classes)
    words = nearest_vocabulary(minilm_tokens(cache), result.pseudo.reshape(len(feats), -1), n_words)
    return {"n_images": int(len(feats)), "k": k, "p": p, "n_anchors": int(len(txt)),
            "oti": result.to_json(), "pseudo_sentence_accuracy": float((pred == labels).mean()),
            "asif_accuracy": asif.accuracy(labels),
            "examples": [{"class": names[labels[i]], "words": [w for w, _ in words[i]],
                          "final_loss": float(result.final_losses[i])} for i in range(len(feats))]}
