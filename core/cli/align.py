"""`python -m core align …`: CKA, matching/retrieval and suspicious pairs on a pair set.

    python -m core align cka        [--pairs SRC] [--image-encoder E] [--text-encoder E] [--shuffle] --json
    python -m core align match      [--n-base 320] [--n-query 500] [--seeds 0 1 2] [--methods …] --json
    python -m core align suspicious [--top 20] [--method rank] [--swap 0.05] --json

``--pairs`` defaults to the demo Flickr8k folder; embeddings come through the embedding cache.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", default=None, help="pair set: folder with captions.csv, CSV, COCO JSON or zip "
                   "(default: the demo Flickr8k data)")
    p.add_argument("--image-encoder", default="efficientnet-lite0")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--all-captions", action="store_true",
                   help="keep every caption (default: the first caption of each image)")
    p.add_argument("--limit", type=int, default=None, help="use a random subset of this many pairs")
    p.add_argument("--first-images", type=int, default=None, help="use only the pairs of the first N images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def register(subparsers) -> None:
    parser = subparsers.add_parser("align", help="alignment lab: CKA, matching without training, suspicious pairs")
    sub = parser.add_subparsers(dest="align_command", required=True)

    p = sub.add_parser("cka", help="linear and RBF CKA of the paired embeddings (and the shuffle curve)")
    _common(p)
    p.add_argument("--unbiased", action="store_true", help="unbiased HSIC estimator")
    p.add_argument("--shuffle", action="store_true", help="also CKA vs fraction of shuffled pairs")
    p.add_argument("--max-rbf", type=int, default=10000,
                   help="RBF CKA on at most this many pairs (random subset; memory is O(n^2))")
    p.set_defaults(run=run_cka)

    p = sub.add_parser("match", help="matching accuracy and top-k retrieval (QAP, local CKA, baselines)")
    _common(p)
    p.add_argument("--n-base", type=int, default=320)
    p.add_argument("--n-query", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["qap", "local_cka", "linear", "relative"])
    p.add_argument("--qap-restarts", type=int, default=3)
    p.add_argument("--no-stretch", action="store_true")
    p.add_argument("--base", choices=["kmeans", "random"], default="kmeans")
    p.add_argument("--direction", choices=["text->image", "image->text"], default="text->image")
    p.set_defaults(run=run_match)

    p = sub.add_parser("suspicious", help="label-free ranking of pairs whose image and caption disagree")
    _common(p)
    p.add_argument("--method", default="rank", choices=["rank", "agreement", "loo_cka"])
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--swap", type=float, default=0.0,
                   help="validation: swap the captions of this fraction of pairs first and report "
                        "precision@k and ROC-AUC at finding them")
    p.set_defaults(run=run_suspicious)


def _load(args):
    """``(image [P, di], text [P, dt], EmbeddedPairs, seconds)`` of the chosen pairs."""
    from core.cache import default_cache
    from core.matching import pair_embeddings

    t0 = time.perf_counter()
    pairs = pair_embeddings(
        args.pairs, args.image_encoder, args.text_encoder, cache=default_cache(),
        one_caption_per_image=not args.all_captions, limit=args.limit, seed=args.seed,
        first_images=args.first_images,
        progress=None if args.json else _progress_printer(),
    )
    if not args.json:
        for item in pairs.skipped:
            print(f"skipped {item}", file=sys.stderr)
    return pairs.pair_image_vectors, pairs.text_vectors, pairs, time.perf_counter() - t0


def _progress_printer():
    def cb(done: int, total: int) -> None:
        if total:
            print(f"\rembedding {done}/{total}", end="", file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr)
    return cb


def _emit(args, payload: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(payload, indent=None, default=float))
    else:
        print("\n".join(lines))
    return 0


def run_cka(args) -> int:
    from core import cka

    img, txt, pairs, load_s = _load(args)
    n = img.shape[0]
    t0 = time.perf_counter()
    lin = cka.linear_cka(img, txt, unbiased=args.unbiased)
    t_lin = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    sub = np.sort(rng.choice(n, size=min(n, args.max_rbf), replace=False))
    t0 = time.perf_counter()
    rbf = cka.rbf_cka(img[sub], txt[sub], unbiased=args.unbiased)
    t_rbf = time.perf_counter() - t0
    payload = {
        "n_pairs": n, "image_encoder": args.image_encoder, "text_encoder": args.text_encoder,
        "unbiased": bool(args.unbiased), "linear_cka": lin, "rbf_cka": rbf, "rbf_n": int(sub.size),
        "seconds": {"load": load_s, "linear": t_lin, "rbf": t_rbf},
    }
    lines = [f"{n} pairs  {args.image_encoder} x {args.text_encoder}",
             f"linear CKA {lin:.4f}", f"RBF CKA    {rbf:.4f}  (n={sub.size})"]
    if args.shuffle:
        curve_n = min(n, 5000)
        s2 = np.sort(rng.choice(n, size=curve_n, replace=False))
        curve = cka.shuffle_curve(img[s2], txt[s2], kernel="linear", seed=args.seed)
        payload["shuffle_curve"] = curve
        payload["shuffle_curve_n"] = curve_n
        lines.append("shuffled  " + "  ".join(f"{c['fraction']:.0%}:{c['cka']:.3f}" for c in curve))
    return _emit(args, payload, lines)


def run_match(args) -> int:
    from core import matching

    img, txt, pairs, load_s = _load(args)
    rows = matching.evaluate(
        img, txt, n_base=args.n_base, n_query=args.n_query, seeds=args.seeds, methods=args.methods,
        do_stretch=not args.no_stretch, base_selection=args.base, direction=args.direction,
        qap_restarts=args.qap_restarts,
    )
    summary = matching.summarize(rows)
    payload = {
        "n_pairs": int(img.shape[0]), "image_encoder": args.image_encoder, "text_encoder": args.text_encoder,
        "n_base": args.n_base, "n_query": args.n_query, "seeds": args.seeds, "direction": args.direction,
        "stretch": not args.no_stretch, "base": args.base, "summary": summary, "runs": rows,
    }
    lines = [f"{img.shape[0]} pairs  {args.image_encoder} x {args.text_encoder}  base {args.n_base}  "
             f"queries {args.n_query}  seeds {args.seeds}",
             f"{'method':<10} {'match':>7} {'top1':>7} {'top5':>7} {'top10':>7} {'sec':>7}"]
    for s in summary:
        f = lambda v: "    -  " if v is None else f"{100 * v:6.1f}%"
        lines.append(f"{s['method']:<10} {f(s['matching_acc'])} {f(s['top1'])} {f(s['top5'])} {f(s['top10'])} "
                     f"{s['seconds']:7.2f}")
    return _emit(args, payload, lines)


def run_suspicious(args) -> int:
    from core import matching

    img, txt, pairs, load_s = _load(args)
    n = img.shape[0]
    captions = list(pairs.captions)
    swapped = np.zeros(n, dtype=bool)
    if args.swap > 0:
        rng = np.random.default_rng(args.seed + 1000)
        txt, captions, swapped = swap_captions(txt, captions, args.swap, rng)
    t0 = time.perf_counter()
    scores = matching.suspicious_pair_scores(img, txt, method=args.method, seed=args.seed,
                                             groups=pairs.pair_image)
    secs = time.perf_counter() - t0
    order = np.argsort(-scores, kind="stable")
    top = [{"pair_id": pairs.pair_ids[i], "image": pairs.pair_paths[i], "caption": captions[i],
            "score": float(scores[i]), **({"swapped": bool(swapped[i])} if args.swap > 0 else {})}
           for i in order[: args.top]]
    payload = {"n_pairs": n, "method": args.method, "seconds": secs, "top": top}
    lines = [f"{n} pairs, method {args.method}, {secs:.1f}s"]
    if args.swap > 0:
        payload["validation"] = detection_metrics(scores, swapped)
        v = payload["validation"]
        lines.append(f"swapped {v['n_swapped']}: ROC-AUC {v['roc_auc']:.3f}  precision@k "
                     + "  ".join(f"{k}:{p:.2f}" for k, p in v["precision_at_k"].items()))
    for t in top:
        lines.append(f"{t['score']:.3f}  {t['caption'][:70]}  [{t['image'].rsplit('/', 1)[-1]}]")
    return _emit(args, payload, lines)


def swap_captions(txt: np.ndarray, captions: list[str], fraction: float, rng: np.random.Generator):
    """Swap the captions of a random ``fraction`` of pairs among themselves (a derangement: every
    chosen pair gets another chosen pair's caption). Returns ``(txt, captions, swapped [n] bool)``."""
    n = txt.shape[0]
    m = max(2, int(round(fraction * n)))
    chosen = rng.choice(n, size=m, replace=False)
    shift = chosen[np.roll(np.arange(m), 1)]  # cyclic shift of a random set = derangement
    txt = txt.copy()
    txt[chosen] = txt[shift]
    captions = list(captions)
    orig = [captions[i] for i in shift]
    for i, c in zip(chosen.tolist(), orig):
        captions[i] = c
    swapped = np.zeros(n, dtype=bool)
    swapped[chosen] = True
    return txt, captions, swapped


def detection_metrics(scores: np.ndarray, positives: np.ndarray, ks=None) -> dict:
    """ROC-AUC (rank formula, ties averaged) and precision@k of ``scores`` at finding ``positives``."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    r = rankdata(scores)
    auc = (r[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) if n_pos and n_neg else float("nan")
    order = np.argsort(-scores, kind="stable")
    ks = ks or sorted({10, 50, 100, n_pos})
    prec = {str(k): float(positives[order[:k]].mean()) for k in ks if k <= positives.size}
    return {"n_swapped": n_pos, "roc_auc": float(auc), "precision_at_k": prec}
