"""Validation of the label-free suspicious-pair score: swap the captions of a random 5 % of the
Flickr8k pairs, score every pair without labels, report ROC-AUC and precision@k at finding them.

Two settings: one caption per image (7,000 pairs, no pair shares an image) and all captions
(~35,000 pairs, five per image; pairs of the same image form a group, so a sibling caption is never
counted as evidence against a pair). The swap is a derangement of the chosen pairs' captions.

    python bench/matching_suspicious.py [--methods rank loo_cka agreement] [--settings one all] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# One BLAS/OpenMP thread by default: on a shared 2-core machine multi-threaded spin-waits make the
# many small GEMMs here several times slower (set OMP_NUM_THREADS=2 on a quiet machine).
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import matching as mt  # noqa: E402
from core.cache import default_cache  # noqa: E402
from core.cli.align import detection_metrics, swap_captions  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--methods", nargs="+", default=["rank", "loo_cka", "agreement"])
    ap.add_argument("--settings", nargs="+", default=["one", "all"])
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cache = default_cache()
    out = []
    for setting in args.settings:
        pairs = mt.pair_embeddings(None, args.image_encoder, args.text_encoder, cache=cache,
                                   one_caption_per_image=(setting == "one"), limit=args.limit)
        img, txt, groups = pairs.pair_image_vectors, pairs.text_vectors, pairs.pair_image
        rng = np.random.default_rng(1000 + args.seed)
        txt_sw, _, swapped = swap_captions(txt, list(pairs.captions), args.fraction, rng)
        for method in args.methods:
            t0 = time.perf_counter()
            s = mt.suspicious_pair_scores(img, txt_sw, method=method, groups=groups, seed=args.seed)
            secs = time.perf_counter() - t0
            m = detection_metrics(s, swapped)
            row = {"setting": setting, "n_pairs": int(img.shape[0]), "method": method, "seconds": secs, **m}
            out.append(row)
            if not args.json:
                print(f"{setting:<4} n={img.shape[0]:>6} {method:<10} AUC {m['roc_auc']:.3f}  "
                      + "  ".join(f"P@{k} {v:.2f}" for k, v in m["precision_at_k"].items())
                      + f"  ({secs:.1f} s)", flush=True)
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
