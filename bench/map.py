"""Benchmark: the curator's map on the real demo (Flickr8k, 35,000 pairs / 7,000 photos).

    python bench/map.py --part flags      # planted near-duplicates: thresholds tuned on half A, scored on half B
    python bench/map.py --part outliers   # planted odd pictures / captions: the same, for the outlier flags
    python bench/map.py --part layout     # UMAP / PCA of 35,000 pairs, exact k-NN vs NN-descent, cache hit
    python bench/map.py --part page       # first paint from a cached layout, lasso of 1,000 -> what-if, search

Every part prints its sizes, its timings and a ratio against a baseline measured in the same run,
and (``--json``) one JSON line. Real embeddings come from the shared cache (``python -m core embed
--pairs ../shared/data/flickr8k`` first); planted copies are written to a temporary folder and
embedded through the real encoder and cache.

Planting (``plant_photo``, ``paraphrase``): a near-duplicate photo is a copy of an existing photo,
cropped 1-5 % on each side, resized to 55-90 % and re-encoded as JPEG at quality 35-75; a
near-duplicate caption is a copy with its case changed, its final punctuation changed and one word
swapped for a synonym (or an article for another). An odd picture is a CIFAR-10 test picture (past
the demo's evaluation pictures), uniform noise, or a few flat-coloured rectangles; an odd caption is
a sentence from Python's help topics (another domain) or a real caption with its words shuffled.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_ENCODER, TEXT_ENCODER = "efficientnet-lite0", "minilm"
SYNONYMS = {"dog": "puppy", "dogs": "puppies", "man": "guy", "men": "guys", "woman": "lady",
            "women": "ladies", "boy": "kid", "girl": "lass", "child": "kid", "children": "kids",
            "running": "sprinting", "runs": "sprints", "small": "little", "little": "small",
            "big": "large", "large": "big", "jumping": "leaping", "jumps": "leaps", "street": "road",
            "grass": "lawn", "water": "lake", "shirt": "top", "playing": "frolicking", "walking":
            "strolling", "sitting": "seated", "standing": "waiting", "black": "dark", "white": "pale",
            "red": "crimson", "blue": "navy", "people": "persons", "ball": "toy", "snow": "powder"}
ARTICLES = {"a": "one", "an": "one", "the": "a", "A": "One", "An": "One", "The": "A"}


def vectors(encoder: str, items) -> np.ndarray:
    """``[n, d]`` vectors of ``items`` (paths or texts) through the shared embedding cache."""
    from core.cache import default_cache
    from core.embedded import embed

    res = embed(encoder, list(items), cache=default_cache())
    if not res.ok.all():
        raise SystemExit(f"{int((~res.ok).sum())} item(s) could not be embedded by {encoder}.")
    return res.vectors


def pair_vectors(pairs) -> tuple[np.ndarray, np.ndarray]:
    """``(photos [U, di], captions [P, dt])`` of a ``core.data.PairSet`` (photos in its order)."""
    return vectors(IMAGE_ENCODER, pairs.images), vectors(TEXT_ENCODER, pairs.captions)


# ------------------------------------------------------------------------------ planting
def plant_photo(src: str, dst: str, rng: np.random.Generator) -> None:
    """A near-duplicate of the photo ``src`` at ``dst``: cropped, resized, re-encoded."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        w, h = im.size
        c = rng.uniform(0.01, 0.05, size=4)
        im = im.crop((int(c[0] * w), int(c[1] * h), w - int(c[2] * w), h - int(c[3] * h)))
        s = rng.uniform(0.55, 0.9)
        im = im.resize((max(8, int(im.width * s)), max(8, int(im.height * s))), Image.BICUBIC)
        im.save(dst, format="JPEG", quality=int(rng.integers(35, 76)))


def paraphrase(caption: str, rng: np.random.Generator) -> str:
    """A light paraphrase: other case, other final punctuation, one word swapped."""
    words = caption.strip().rstrip(" .!?").split()
    swappable = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    articles = [i for i, w in enumerate(words) if w in ARTICLES]
    if swappable:
        i = int(rng.choice(swappable))
        words[i] = SYNONYMS[words[i].lower()]
    elif articles:
        i = int(rng.choice(articles))
        words[i] = ARTICLES[words[i]]
    elif words:
        words.insert(0, "one")
    text = " ".join(words)
    text = text.lower() if text[:1].isupper() else text[:1].upper() + text[1:]
    return text + str(rng.choice(["!", " .", "...", ""]))


# ------------------------------------------------------------------------------ flags
def _half(pairs, which: int):
    """Pairs of the photos with index parity ``which`` (0: half A, 1: half B)."""
    return pairs.subset(np.flatnonzero(pairs.pair_image % 2 == which).tolist())


def _without_natural_duplicate_captions(pairs):
    """``pairs`` minus every caption that already has a near-duplicate by the issue's definition
    (same words up to case, punctuation and one word) among its 50 nearest captions with cosine
    >= 0.5 (far wider than any detector setting), so that a flag on the rest is an error unless
    planted. Returns the subset and how many were dropped."""
    from core.flags import near_duplicate_captions

    caps = vectors(TEXT_ENCODER, pairs.captions)
    group = near_duplicate_captions(caps, pairs.captions, 0.5, k=50)[0]
    keep = np.flatnonzero(group < 0)
    return pairs.subset(keep.tolist()), int(pairs.pair_image.size - keep.size)


def _planted(pairs, fraction: float, seed: int, tmp: Path):
    """Photo and caption vectors of ``pairs`` plus planted copies; returns the photo vectors and
    (copy, source) rows, the caption vectors, texts and (copy, source) rows, and a few examples."""
    rng = np.random.default_rng(seed)
    photos, caps = pair_vectors(pairs)
    n_img, n_cap = photos.shape[0], caps.shape[0]
    src_img = rng.choice(n_img, size=max(1, round(fraction * n_img)), replace=False)
    paths = []
    for j, s in enumerate(src_img.tolist()):
        dst = tmp / f"copy-{seed}-{j}.jpg"
        plant_photo(pairs.images[s], str(dst), rng)
        paths.append(str(dst))
    copies = vectors(IMAGE_ENCODER, paths)
    src_cap = rng.choice(n_cap, size=max(1, round(fraction * n_cap)), replace=False)
    texts = [paraphrase(pairs.captions[s], rng) for s in src_cap.tolist()]
    img_truth = np.stack([n_img + np.arange(len(src_img)), src_img], axis=1)
    cap_truth = np.stack([n_cap + np.arange(len(src_cap)), src_cap], axis=1)
    examples = list(zip([pairs.captions[s] for s in src_cap[:3].tolist()], texts[:3]))
    from core.flags import thumbnails

    thumbs = thumbnails(list(pairs.images) + paths)
    return (np.concatenate([photos, copies]), thumbs, img_truth,
            np.concatenate([caps, vectors(TEXT_ENCODER, texts)]), list(pairs.captions) + texts,
            cap_truth, examples)


def _score(group: np.ndarray, truth: np.ndarray) -> dict:
    """Precision: flagged rows that are a planted copy or its source. Recall: planted copies put in
    the same group as their source."""
    flagged = group >= 0
    planted = np.zeros(group.size, dtype=bool)
    planted[truth.ravel()] = True
    found = (group[truth[:, 0]] >= 0) & (group[truth[:, 0]] == group[truth[:, 1]])
    tp = int((flagged & planted).sum())
    return {"precision": round(tp / max(1, int(flagged.sum())), 4), "recall": round(float(found.mean()), 4),
            "flagged": int(flagged.sum()), "planted_rows": int(planted.sum())}


def _tune(detect, truth: np.ndarray, grid: np.ndarray) -> tuple[float, list[dict]]:
    """The threshold of ``grid`` with the best F1 of ``detect(threshold)`` on this (tuning) set
    (ties: the higher threshold), and the curve."""
    curve = []
    for t in grid:
        s = _score(detect(float(t)), truth)
        s["threshold"] = float(t)
        s["f1"] = round(2 * s["precision"] * s["recall"] / max(1e-9, s["precision"] + s["recall"]), 4)
        curve.append(s)
    best = max(curve, key=lambda r: (r["f1"], r["threshold"]))
    return best["threshold"], curve


def _datalab(x: np.ndarray, truth: np.ndarray, k: int) -> dict:
    """cleanlab Datalab's near_duplicate check on the same exact k-NN graph (for the comparison)."""
    import warnings

    from cleanlab import Datalab
    from scipy.sparse import csr_matrix

    from core.flags import neighbours

    t0 = time.perf_counter()
    idx, sims = neighbours(x, k)
    n = x.shape[0]
    graph = csr_matrix((np.clip(1 - sims, 0, None).ravel().astype(np.float64),
                        idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab = Datalab(data={"row": np.arange(n)}, verbosity=0)
        lab.find_issues(knn_graph=graph, issue_types={"near_duplicate": {}})
    issues = lab.get_issues("near_duplicate")
    sets = issues["near_duplicate_sets"].tolist()
    group = np.full(n, -1, dtype=np.int64)
    for i in np.flatnonzero(issues["is_near_duplicate_issue"].to_numpy()):
        members = [int(i)] + [int(j) for j in sets[i]]
        group[members] = min(group[m] if group[m] >= 0 else m for m in members)
    out = _score(group, truth)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def part_flags(args) -> dict:
    from core import flags as F
    from core.data import data_dir, load_pairs_folder

    pairs = load_pairs_folder(data_dir(required=True) / "flickr8k")
    if args.images:
        pairs = pairs.first_images(args.images)
    out = {"fraction": args.fraction}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {}
        for name, which, seed in (("tune", 0, 0), ("report", 1, 1)):
            half, dropped = _without_natural_duplicate_captions(_half(pairs, which))
            sets[name] = _planted(half, args.fraction, seed, Path(tmp))
            img, _, ti, cap, texts, tc, examples = sets[name]
            out[name] = {"half": "AB"[which], "seed": seed, "photos": int(img.shape[0]),
                         "captions": int(cap.shape[0]), "natural_duplicate_captions_dropped": dropped,
                         "planted_photos": len(ti), "planted_captions": len(tc),
                         "caption_examples": examples}
        img_a, th_a, ti_a, cap_a, texts_a, tc_a, _ = sets["tune"]
        t_img, curve_img = _tune(lambda t: F.near_duplicates(img_a, t)[0], ti_a,
                                 np.round(np.arange(0.60, 0.991, 0.02), 3))
        # the embedding alone, then candidates confirmed by thumbnails (both tuned on half A)
        grid = [(t, c) for t in np.round(np.arange(0.50, 0.81, 0.05), 3) for c in (0.5, 0.6, 0.7, 0.8, 0.9)]
        curve_both = []
        for t, c in grid:
            r = _score(F.near_duplicates(img_a, t, thumbs=th_a, min_thumb_corr=c)[0], ti_a)
            r.update(threshold=t, thumb_corr=c,
                     f1=round(2 * r["precision"] * r["recall"] / max(1e-9, r["precision"] + r["recall"]), 4))
            curve_both.append(r)
        best = max(curve_both, key=lambda r: (r["f1"], r["threshold"], r["thumb_corr"]))
        t_both, c_both = best["threshold"], best["thumb_corr"]
        t_cap, curve_cap = _tune(lambda t: F.near_duplicate_captions(cap_a, texts_a, t)[0], tc_a,
                                 np.round(np.arange(0.50, 0.991, 0.05), 3))
        out["chosen"] = {"image_threshold_embedding_only": t_img, "image_threshold": t_both,
                         "thumb_corr": c_both, "caption_threshold": t_cap,
                         "constants_in_core_flags": [F.IMAGE_DUPLICATE, F.THUMB_CORR, F.CAPTION_DUPLICATE]}
        out["tune_curve_photos_confirmed"] = curve_both
        out["tune_curve_photos"] = curve_img
        out["tune_curve_captions"] = curve_cap
        for name, (img, thumbs, ti, cap, texts, tc, _) in sets.items():
            out[name]["photos_embedding_only"] = _score(F.near_duplicates(img, t_img)[0], ti)
            t0 = time.perf_counter()
            g_img = F.near_duplicates(img, t_both, thumbs=thumbs, min_thumb_corr=c_both)[0]
            t1 = time.perf_counter()
            g_cap = F.near_duplicate_captions(cap, texts, t_cap)[0]
            t2 = time.perf_counter()
            out[name]["photos_result"] = {**_score(g_img, ti), "seconds": round(t1 - t0, 3)}
            out[name]["captions_result"] = {**_score(g_cap, tc), "seconds": round(t2 - t1, 3)}
            if args.datalab:
                out[name]["datalab_photos"] = _datalab(img, ti, F.K)
                out[name]["datalab_captions"] = _datalab(cap, tc, F.K)
    return out


# ------------------------------------------------------------------------------ outliers
ODD_PICTURES = ("cifar10", "noise", "blocks")
ODD_CAPTIONS = ("other domain", "shuffled words")


def odd_picture(dst: str, kind: str, rng: np.random.Generator) -> None:
    """A generated picture unlike any photo: ``noise`` (uniform RGB noise) or ``blocks`` (a few
    flat-coloured rectangles), 160-400 px a side, written as JPEG to ``dst``."""
    from PIL import Image, ImageDraw

    w, h = (int(v) for v in rng.integers(160, 401, size=2))
    if kind == "noise":
        im = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    else:
        im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            draw.rectangle((x0, y0, int(rng.integers(x0 + 10, w)), int(rng.integers(y0 + 10, h))),
                           fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    im.save(dst, format="JPEG", quality=90)


def other_domain_sentences() -> list[str]:
    """Sentences of 6-20 words from Python's own help topics (``pydoc_data``): English prose about
    programming, a domain no photo caption is from. Sorted, distinct."""
    import re

    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    out = set()
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = " ".join(s.split())
        if 6 <= len(s.split()) <= 20 and s[:1].isupper() and not re.search(r"[=(){}\[\]*`'\">:_|#]", s):
            out.add(s)
    return sorted(out)


def shuffled_words(caption: str, rng: np.random.Generator) -> str:
    """The caption's words in a random order (the same words, no sentence)."""
    words = caption.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


def _planted_outliers(pairs, fraction: float, seed: int, tmp: Path, cifar: list[str], sentences: list[str]):
    """Photo vectors of ``pairs`` plus planted odd pictures (CIFAR-10 pictures, noise, blocks, in
    turn) and caption vectors plus planted odd captions (other-domain sentences, shuffled
    captions, in turn), ``fraction`` of each side; returns ``(photos, photo kinds, captions,
    caption kinds)`` where a kind is "" for a real row."""
    rng = np.random.default_rng(seed)
    photos, caps = pair_vectors(pairs)
    n_img, n_cap = max(3, round(fraction * photos.shape[0])), max(2, round(fraction * caps.shape[0]))
    kinds_i = [ODD_PICTURES[j % 3] for j in range(n_img)]
    paths, picked = [], rng.choice(len(cifar), size=n_img, replace=False)
    for j, kind in enumerate(kinds_i):
        if kind == "cifar10":
            paths.append(cifar[picked[j]])
        else:
            paths.append(str(tmp / f"odd-{seed}-{j}.jpg"))
            odd_picture(paths[-1], kind, rng)
    kinds_c = [ODD_CAPTIONS[j % 2] for j in range(n_cap)]
    src = rng.choice(caps.shape[0], size=n_cap, replace=False)
    other = rng.choice(len(sentences), size=n_cap, replace=False)
    texts = [sentences[other[j]] if kind == "other domain" else shuffled_words(pairs.captions[src[j]], rng)
             for j, kind in enumerate(kinds_c)]
    return (np.concatenate([photos, vectors(IMAGE_ENCODER, paths)]), np.array([""] * photos.shape[0] + kinds_i),
            np.concatenate([caps, vectors(TEXT_ENCODER, texts)]), np.array([""] * caps.shape[0] + kinds_c))


def _pr(flagged: np.ndarray, kinds: np.ndarray) -> dict:
    """Precision, recall (overall and per planted kind) of ``flagged`` rows against planted rows."""
    planted = kinds != ""
    tp = int((flagged & planted).sum())
    out = {"precision": round(tp / max(1, int(flagged.sum())), 4), "recall": round(tp / max(1, int(planted.sum())), 4),
           "flagged": int(flagged.sum()), "planted": int(planted.sum())}
    out["recall_by_kind"] = {k: round(float(flagged[kinds == k].mean()), 3) for k in sorted(set(kinds) - {""})}
    return out


#: Neighbours per row tried for the outlier score (chosen on half A).
OUTLIER_K_GRID = (10, 30, 50, 100)


def _f1(r: dict) -> float:
    return round(2 * r["precision"] * r["recall"] / max(1e-9, r["precision"] + r["recall"]), 4)


def _tune_threshold(scores: np.ndarray, kinds: np.ndarray) -> float:
    """The score threshold (flag ``score >= t``) with the best F1 on this (tuning) half, among the
    half's own scores from its 80th percentile up (ties: the higher threshold)."""
    best = (-1.0, 0.0)
    for t in np.unique(scores[scores >= np.quantile(scores, 0.8)]):
        r = _pr(scores >= t, kinds)
        f1 = 2 * r["precision"] * r["recall"] / max(1e-9, r["precision"] + r["recall"])
        best = max(best, (f1, float(t)))
    return best[1]


def _datalab_outlier_scores(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab Datalab's outlier check on the same exact k-NN graph: ``(score [n], its own flag [n])``,
    the score negated so that higher = more outlying, as ours."""
    import warnings

    from cleanlab import Datalab
    from scipy.sparse import csr_matrix

    from core.flags import neighbours

    idx, sims = neighbours(x, k)
    n = x.shape[0]
    graph = csr_matrix((np.clip(1 - sims, 1e-12, None).ravel().astype(np.float64), idx.ravel(),
                        np.arange(0, n * k + 1, k)), shape=(n, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab = Datalab(data={"row": np.arange(n)}, verbosity=0)
        lab.find_issues(knn_graph=graph, issue_types={"outlier": {}})
    issues = lab.get_issues("outlier")
    return -issues["outlier_score"].to_numpy(), issues["is_outlier_issue"].to_numpy()


def part_outliers(args) -> dict:
    """Photo and caption outliers (``core.flags.outlier_scores``) against planted odd rows: k (of
    :data:`OUTLIER_K_GRID`) and the score threshold are chosen on half A (best F1), precision /
    recall reported on half B; beside it the page's rank rule (top ``OUTLIER_FRACTION``) and, with
    ``--datalab``, cleanlab Datalab's outlier check on the same k-NN graph."""
    from core import flags as F
    from core.data import data_dir, load_pairs_folder

    root = data_dir(required=True)
    pairs = load_pairs_folder(root / "flickr8k")
    if args.images:
        pairs = pairs.first_images(args.images)
    # CIFAR-10 test pictures past the 100 per class the demo evaluates on
    cifar = sorted(str(p) for p in (root / "cifar10" / "test").glob("*/*.jpg") if int(p.stem) >= 500)
    sentences = other_domain_sentences()
    out = {"fraction": args.outlier_fraction, "other_domain_sentences": len(sentences)}
    sides = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, which, seed in (("tune", 0, 10), ("report", 1, 11)):
            img, ki, cap, kc = _planted_outliers(_half(pairs, which), args.outlier_fraction, seed,
                                                 Path(tmp), cifar, sentences)
            sides[name] = {"photos": (img, ki), "captions": (cap, kc)}
            out[name] = {"half": "AB"[which], "photos": int(img.shape[0]), "planted_photos": int((ki != "").sum()),
                         "captions": int(cap.shape[0]), "planted_captions": int((kc != "").sum())}
    for side in ("photos", "captions"):
        kinds = {name: sides[name][side][1] for name in sides}
        by_k, all_scores = {}, {}
        for k in OUTLIER_K_GRID:  # k and the threshold are both chosen on half A
            scores = {}
            for name in ("tune", "report"):
                t0 = time.perf_counter()
                scores[name] = F.outlier_scores(sides[name][side][0], k)
                seconds = round(time.perf_counter() - t0, 2)
            t = _tune_threshold(scores["tune"], kinds["tune"])
            a = _pr(scores["tune"] >= t, kinds["tune"])
            by_k[k] = {"threshold_chosen_on_A": round(t, 4), "A": a, "f1_A": _f1(a),
                       "B": _pr(scores["report"] >= t, kinds["report"]),
                       "B_top_fraction_rule": _pr(F.outliers(scores["report"], F.OUTLIER_FRACTION), kinds["report"]),
                       "seconds_B": seconds}
            all_scores[k] = scores
        k = max(OUTLIER_K_GRID, key=lambda kk: (by_k[kk]["f1_A"], -kk))
        scores = all_scores[k]
        res = {"k_chosen_on_A": k, **by_k[k],
               "by_k": {kk: {"f1_A": v["f1_A"], "B": [v["B"]["precision"], v["B"]["recall"]],
                             "B_recall_by_kind": v["B"]["recall_by_kind"]} for kk, v in by_k.items()}}
        if args.datalab:
            t0 = time.perf_counter()
            dl = {name: _datalab_outlier_scores(sides[name][side][0], k) for name in sides}
            td = _tune_threshold(dl["tune"][0], kinds["tune"])
            res["datalab"] = {"own_flag_B": _pr(dl["report"][1], kinds["report"]),
                              "threshold_chosen_on_A": round(td, 4),
                              "tuned_B": _pr(dl["report"][0] >= td, kinds["report"]),
                              "seconds_A_and_B": round(time.perf_counter() - t0, 2)}
        if side == "captions":  # shuffled captions keep their words, so stay among their neighbours:
            keep = {name: kinds[name] != "shuffled words" for name in sides}  # the flag without them
            t2 = _tune_threshold(scores["tune"][keep["tune"]], kinds["tune"][keep["tune"]])
            res["other_domain_only"] = {
                "threshold_chosen_on_A": round(t2, 4),
                "A": _pr(scores["tune"][keep["tune"]] >= t2, kinds["tune"][keep["tune"]]),
                "B": _pr(scores["report"][keep["report"]] >= t2, kinds["report"][keep["report"]]),
                "B_top_fraction_rule": _pr(F.outliers(scores["report"], F.OUTLIER_FRACTION)[keep["report"]],
                                           kinds["report"][keep["report"]])}
        out[side] = res
        print(f"  {side}: {json.dumps(res)}", flush=True)
    return out


# ------------------------------------------------------------------------------ layout
def _real_vectors(n_images: int | None):
    from core.data import data_dir, load_pairs_folder

    pairs = load_pairs_folder(data_dir(required=True) / "flickr8k")
    if n_images:
        pairs = pairs.first_images(n_images)
    photos, cap = pair_vectors(pairs)
    return pairs, photos[np.asarray(pairs.pair_image)], cap


def part_layout(args) -> dict:
    from core import layout as L

    pairs, img, cap = _real_vectors(args.images)
    out = {"pairs": int(img.shape[0]), "photos": int(len(pairs.images))}
    with tempfile.TemporaryDirectory() as tmp:
        def timed(label, fn):
            t0 = time.perf_counter()
            fn()
            out[label] = round(time.perf_counter() - t0, 2)
            print(f"  {label}: {out[label]} s", flush=True)

        timed("umap_warmup_small_s", lambda: L.umap_2d(img[:300]))  # numba JIT, once per machine
        timed("pca_pairs_s", lambda: L.layout(img, "pca"))
        timed("umap_photos_exact_knn_s", lambda: L.layout(img, "umap", cache_dir=tmp))
        timed("umap_photos_cache_hit_s", lambda: L.layout(img, "umap", cache_dir=tmp))
        timed("umap_captions_exact_knn_s", lambda: L.layout(cap, "umap"))
        timed("umap_captions_spectral_init_s", lambda: L.layout(cap, "umap", init="spectral"))
        if args.full:
            timed("umap_captions_nndescent_s", lambda: L.layout(cap, "umap", knn="nndescent"))
            # 35,000 distinct rows x 1280: the pairs' photo vectors tiled to 35,000 rows with noise
            # (sigma 1e-3) so no row repeats (the worst case: nothing collapses to distinct photos)
            rows = np.resize(np.arange(img.shape[0]), 35000)
            noisy = img[rows] + np.random.default_rng(0).normal(scale=1e-3, size=(35000, img.shape[1])).astype(np.float32)
            timed("umap_35000x1280_distinct_rows_exact_knn_s", lambda: L.layout(noisy, "umap"))
            timed("umap_35000x1280_distinct_rows_nndescent_s", lambda: L.layout(noisy, "umap", knn="nndescent"))
        out["ratio_umap_vs_cache_hit"] = round(out["umap_photos_exact_knn_s"]
                                               / max(out["umap_photos_cache_hit_s"], 1e-3), 1)
    return out


# ------------------------------------------------------------------------------ page
def part_page(args) -> dict:
    """First paint from a cached layout, a 1,000-point lasso -> what-if, and a search, on the real
    demo workspace built in a temporary folder (vectors from the cache)."""
    import plotly.io as pio

    os.environ["ROSETTA_WORKSPACES"] = tempfile.mkdtemp()
    from core import layout as L
    from core.anchor_search import AnchorSearch
    from core.cache import EmbeddingCache
    from core.demo import create_demo_workspace
    from core.live import LiveModel, WorkspaceVectors
    from core.encoders import get_encoder
    from ui.map_figure import figure

    out = {}
    t0 = time.perf_counter()
    ws = create_demo_workspace("demo", n_images=args.images, per_class=args.per_class)
    bank = WorkspaceVectors(ws, EmbeddingCache())
    model = LiveModel(ws, bank)
    out.update(pairs=int(len(bank.pair_ids)), photos=int(bank.img.shape[0]),
               labeled_pictures=int(len(bank.item_labels)), build_s=round(time.perf_counter() - t0, 1))
    cache = ws.state_dir
    t0 = time.perf_counter()
    L.layout(bank.img, "umap", cache_dir=cache)
    out["umap_compute_s"] = round(time.perf_counter() - t0, 2)

    import pandas as pd

    def paint():
        xy = L.spread_copies(L.cached_layout(bank.img, "umap", cache), bank.pair_img)
        df = pd.DataFrame({"pair_id": bank.pair_ids, "caption": bank.captions, "status": "kept",
                           "influence": np.zeros(len(bank.pair_ids))})
        fig = figure(df, xy, "status (kept / removed / added)", [])
        return len(pio.to_json(fig, validate=False))

    t0 = time.perf_counter()
    size = paint()
    out["first_paint_s"] = round(time.perf_counter() - t0, 3)
    out["figure_json_mb"] = round(size / 1e6, 2)
    out["ratio_recompute_umap_vs_first_paint"] = round(out["umap_compute_s"] / out["first_paint_s"], 1)

    rng = np.random.default_rng(0)
    xy = L.spread_copies(L.cached_layout(bank.img, "umap", cache), bank.pair_img)
    session = model.session
    walls, cpus, base_walls, edit_walls, deltas, recomputed = [], [], [], [], [], []
    for _ in range(args.lassos):  # round lasso regions of 1,000 pairs
        centre = xy[rng.integers(len(xy))]
        lasso = bank.pair_ids[np.argsort(((xy - centre) ** 2).sum(axis=1))[:1000]]
        t0, c0 = time.perf_counter(), time.process_time()
        what = model.what_if_remove(lasso)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        deltas.append(round(100 * (what.after.tune - what.before.tune), 2))
        recomputed.append(session.what_if_remove(lasso).recomputed_queries)
        t0 = time.perf_counter()  # baseline 1: the edit path (what the what-if did before: apply, revert)
        session.remove(lasso)
        session.undo()
        edit_walls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # baseline 2: classify again from scratch without the lasso
        session.current_model().with_pairs_removed(lasso).classify(bank.item_vecs, bank.prompts,
                                                                   bank.prompt_classes)
        base_walls.append(time.perf_counter() - t0)
    out["what_if_1000_ms_median"] = round(1000 * float(np.median(walls)), 1)
    out["what_if_1000_ms_max"] = round(1000 * float(np.max(walls)), 1)
    out["what_if_1000_cpu_ms_median"] = round(1000 * float(np.median(cpus)), 1)
    out["what_if_1000_lists_searched_again"] = recomputed
    out["edit_path_remove_undo_ms_median"] = round(1000 * float(np.median(edit_walls)), 1)
    out["full_rescore_baseline_ms_median"] = round(1000 * float(np.median(base_walls)), 1)
    out["ratio_edit_path_vs_what_if"] = round(float(np.median(edit_walls) / np.median(walls)), 1)
    out["ratio_full_rescore_vs_what_if"] = round(float(np.median(base_walls) / np.median(walls)), 1)
    out["what_if_tuning_delta_pts"] = deltas
    singles, single_edits = [], []
    for pid in rng.choice(session.pair_ids, 30, replace=False):  # one pair (the Curate page's preview)
        t0 = time.perf_counter()
        session.what_if_remove([pid])
        singles.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        session.remove([pid])
        session.undo()
        single_edits.append(time.perf_counter() - t0)
    out["what_if_1_ms_median"] = round(1000 * float(np.median(singles)), 2)
    out["edit_path_1_remove_undo_ms_median"] = round(1000 * float(np.median(single_edits)), 2)
    out["ratio_edit_path_vs_what_if_1"] = round(float(np.median(single_edits) / np.median(singles)), 1)

    enc = get_encoder(bank.text_encoder)
    t0 = time.perf_counter()
    search = AnchorSearch(model.current_model(), bank.img, bank.pair_img, bank.cap)
    search.by_text(enc.encode_texts(["warm up"])[0])
    out["search_prepare_s"] = round(time.perf_counter() - t0, 2)
    walls, cpus, enc_times = [], [], []
    for q in ["children playing in the snow", "a dog catching a frisbee", "a man on a surfboard",
              "a red car on a street", "people at a concert"]:
        t0 = time.perf_counter()
        v = enc.encode_texts([q])[0]
        enc_times.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        search.by_text(v)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out["search_answer_ms_median"] = round(1000 * float(np.median(walls)), 1)
    out["search_answer_cpu_ms_median"] = round(1000 * float(np.median(cpus)), 1)
    out["search_encode_query_ms_median"] = round(1000 * float(np.median(enc_times)), 1)
    out["ratio_prepare_vs_answer"] = round(out["search_prepare_s"] * 1000 / out["search_answer_ms_median"], 1)
    # by picture: image-encoder neighbours and ASIF picture -> caption retrieval (5 anchor photos)
    t0 = time.perf_counter()
    search.by_image(bank.img[0])
    out["search_picture_prepare_s"] = round(time.perf_counter() - t0, 2)
    walls = []
    for row in rng.choice(bank.img.shape[0], 5, replace=False):
        t0 = time.perf_counter()
        search.by_image(bank.img[row])
        walls.append(time.perf_counter() - t0)
    out["search_picture_answer_ms_median"] = round(1000 * float(np.median(walls)), 1)
    return out


def main(argv=None) -> int:
    from bench.asif_common import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["flags", "outliers", "layout", "page"], required=True)
    ap.add_argument("--images", type=int, default=None, help="first N Flickr8k photos (default all)")
    ap.add_argument("--per-class", type=int, default=100, help="page: CIFAR-10 test images per class")
    ap.add_argument("--lassos", type=int, default=5, help="page: lasso regions of 1,000 pairs")
    ap.add_argument("--fraction", type=float, default=0.02, help="flags: planted fraction per side")
    ap.add_argument("--datalab", action="store_true", help="flags, outliers: also run cleanlab Datalab")
    ap.add_argument("--outlier-fraction", type=float, default=0.01, help="outliers: planted fraction per side")
    ap.add_argument("--full", action="store_true", help="layout: also NN-descent and 35,000 distinct rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    info = {"machine": machine(), "part": args.part}
    t0 = time.perf_counter()
    info.update({"flags": part_flags, "outliers": part_outliers, "layout": part_layout,
                 "page": part_page}[args.part](args))
    info["total_s"] = round(time.perf_counter() - t0, 1)
    info["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(info) if args.json else json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
