"""The matching/retrieval table on Flickr8k: base 320 by k-means, 500 queries, 3 seeds, every method,
for each offline image x text encoder pair whose embeddings are in the cache.

One caption per image (the first), 7,000 pairs; both sides stretched; captions -> images (the
reference's default direction); QAP with 3 restarts (the reference used 500 random restarts).

    python bench/matching_flickr.py [--pairs lite0:minilm lite2:mpnet …] [--seeds 0 1 2] [--json]
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


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import cka, matching as mt  # noqa: E402
from core.cache import default_cache  # noqa: E402

ALIASES = {"lite0": "efficientnet-lite0", "lite2": "efficientnet-lite2"}
DEFAULT_PAIRS = ["lite0:minilm", "lite0:mpnet", "lite2:minilm", "lite2:mpnet"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-base", type=int, default=320)
    ap.add_argument("--n-query", type=int, default=500)
    ap.add_argument("--qap-restarts", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    cache = default_cache()
    for spec in args.pairs:
        ie, te = spec.split(":")
        ie = ALIASES.get(ie, ie)
        t0 = time.perf_counter()
        try:
            pairs = mt.pair_embeddings(None, ie, te, cache=cache, limit=args.limit)
            img, txt = pairs.pair_image_vectors, pairs.text_vectors
        except ValueError as error:
            print(f"skip {spec}: {error}", file=sys.stderr)
            continue
        load_s = time.perf_counter() - t0
        rows = mt.evaluate(img, txt, n_base=args.n_base, n_query=args.n_query, seeds=args.seeds,
                           qap_restarts=args.qap_restarts)
        res = {"image_encoder": ie, "text_encoder": te, "n_pairs": int(img.shape[0]),
               "linear_cka": cka.linear_cka(img, txt), "load_seconds": load_s,
               "summary": mt.summarize(rows), "runs": rows}
        results.append(res)
        if not args.json:
            print(f"\n{ie} x {te}: {img.shape[0]} pairs, linear CKA {res['linear_cka']:.3f}")
            print(f"{'method':<10} {'match %':>12} {'top1 %':>12} {'top5 %':>12} {'top10 %':>12} {'sec':>6}")
            for s in res["summary"]:
                f = lambda k: "-".rjust(12) if s[k] is None else f"{100*s[k]:5.1f} ± {100*s[k+'_std']:4.1f}"
                print(f"{s['method']:<10} {f('matching_acc'):>12} {f('top1'):>12} {f('top5'):>12} "
                      f"{f('top10'):>12} {s['seconds']:6.2f}", flush=True)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
