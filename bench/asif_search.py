"""Top-k search backends behind core.search.topk: time and measured recall@k against exact search.

    python bench/asif_search.py --n 35000 --q 1000 --d 384 --k 100 800

Synthetic unit vectors by default (the worst case for approximate search: no cluster structure);
``--real`` uses the cached Flickr8k caption embeddings as the base and the CIFAR-10 prompts + other
captions as queries (only what is cached).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.asif_common import machine  # noqa: E402
from core.arrays import l2_normalize  # noqa: E402
from core.search import build_faiss_index, exact_topk, faiss_search, recall_at_k  # noqa: E402

CONFIGS = [("faiss-flat", "flat", {}, {}),
           ("faiss-ivf", "ivf", {}, {"nprobe": 16}),
           ("faiss-ivf", "ivf", {}, {"nprobe": 64}),
           ("faiss-ivfpq", "ivfpq", {}, {"nprobe": 64}),
           ("faiss-hnsw", "hnsw", {}, {"ef_search": None})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=35000)
    ap.add_argument("--q", type=int, default=1000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, nargs="+", default=[100, 800])
    ap.add_argument("--clusters", type=int, default=200,
                    help="synthetic data drawn around this many centres (0 = uniform)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.clusters:
        centres = rng.standard_normal((args.clusters, args.d)).astype(np.float32)
        base = centres[rng.integers(0, args.clusters, args.n)] + 0.7 * rng.standard_normal((args.n, args.d)).astype(np.float32)
        qs = centres[rng.integers(0, args.clusters, args.q)] + 0.7 * rng.standard_normal((args.q, args.d)).astype(np.float32)
    else:
        base = rng.standard_normal((args.n, args.d)).astype(np.float32)
        qs = rng.standard_normal((args.q, args.d)).astype(np.float32)
    base, qs = l2_normalize(base), l2_normalize(qs)
    out = {"machine": machine(), "n": args.n, "q": args.q, "d": args.d, "clusters": args.clusters, "rows": []}
    for k in args.k:
        t = time.perf_counter()
        ei, _ = exact_topk(qs, base, k)
        t_exact = time.perf_counter() - t
        out["rows"].append({"backend": "exact (core.search)", "k": k, "build_s": 0.0,
                            "search_s": round(t_exact, 3), "recall": 1.0})
        for backend, kind, build, search in CONFIGS:
            t = time.perf_counter()
            index = build_faiss_index(base, kind, **build)
            tb = time.perf_counter() - t
            sp = dict(search)
            if kind == "hnsw":
                sp["ef_search"] = max(2 * k, 64)
            t = time.perf_counter()
            ai, _ = faiss_search(index, qs, k, **sp)
            ts = time.perf_counter() - t
            out["rows"].append({"backend": backend, "params": sp, "k": k, "build_s": round(tb, 2),
                                "search_s": round(ts, 3), "recall": round(recall_at_k(ai, ei), 4)})
            print(out["rows"][-1], file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
