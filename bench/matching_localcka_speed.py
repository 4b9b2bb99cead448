"""Local-CKA scoring: our factorised LocalCKA vs a faithful re-implementation of the reference loop.

The reference (mayug/0-shot-llm-vision, ``src/utils.py``: ``kernel_local_CKA`` + ``KernelCKA``) scores
every (query, target) pair with a full kernel CKA of the base set augmented by the pair: torch,
float32, an explicit centring matrix H and ``H K H`` products, the RBF bandwidth re-estimated per call
(median distance, ``sigma=None``), three HSICs per call. We run it on the same inputs (stretched
Flickr8k embeddings, base = 320 k-means pairs, 500 caption queries x 500 image targets) but only on
the first ``--ref-rows`` query rows (default 1 row = 500 calls; the full 250,000 calls would take
about 7 hours at the ~0.1 s per call measured here),
and report per-pair times, their ratio, and the largest score difference on the rows both computed.

    python bench/matching_localcka_speed.py [--image-encoder efficientnet-lite0] [--text-encoder minilm]
                                            [--ref-rows 4] [--synthetic] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# One thread for both implementations (numpy's BLAS and torch): a fair comparison, and on a shared
# 2-core machine multi-threaded BLAS/OpenMP spin-waits make small GEMMs up to 10x slower.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import matching as mt  # noqa: E402


# ---- faithful re-implementation of the reference's double loop (torch, float32) -----------------

def reference_kernel_local_cka(source_base, target_base, source_query, target_query, rows):
    import torch

    def rbf(X, sigma=None):
        GX = torch.matmul(X, X.T)
        KX = torch.diag(GX) - GX + (torch.diag(GX) - GX).T
        if sigma is None:
            mdist = torch.median(KX[KX != 0])
            sigma = torch.sqrt(mdist)
        KX *= -0.5 / (sigma * sigma)
        KX = torch.exp(KX)
        return KX

    class KernelCKA:
        def __init__(self, n, device):
            unit = torch.ones(n, n).to(device)
            I = torch.eye(n).to(device)
            self.H = I - unit / n

        def centering(self, K):
            return torch.matmul(torch.matmul(self.H, K), self.H)

        def kernel_HSIC(self, X, Y, sigma=None):
            return torch.sum(self.centering(rbf(X, sigma)) * self.centering(rbf(Y, sigma)))

        def calculate(self, X, Y, sigma=None):
            hsic = self.kernel_HSIC(X, Y, sigma)
            var1 = torch.sqrt(self.kernel_HSIC(X, X, sigma))
            var2 = torch.sqrt(self.kernel_HSIC(Y, Y, sigma))
            return hsic / (var1 * var2)

    sb, tb = torch.tensor(source_base, dtype=torch.float32), torch.tensor(target_base, dtype=torch.float32)
    sq, tq = torch.tensor(source_query, dtype=torch.float32), torch.tensor(target_query, dtype=torch.float32)
    cka = KernelCKA(tb.shape[0] + 1, "cpu")
    graph = []
    for source_ind in range(rows):
        source = sq[source_ind:source_ind + 1, :]
        row = []
        for target_ind in range(tq.shape[0]):
            target = tq[target_ind:target_ind + 1, :]
            row.append(cka.calculate(torch.cat((source, sb), axis=0), torch.cat((target, tb), axis=0)))
        graph.append(row)
    return torch.tensor(graph).numpy()


def load(args):
    if args.synthetic:
        rng = np.random.default_rng(0)
        n = 2000
        Z = rng.normal(size=(n, 32))
        img = Z @ rng.normal(size=(32, 1280)) + 3 * rng.normal(size=(n, 1280))
        txt = np.tanh(Z @ rng.normal(size=(32, 384))) + rng.normal(size=(n, 384))
        return img, txt, "synthetic"
    from core.cache import default_cache

    pairs = mt.pair_embeddings(None, args.image_encoder, args.text_encoder, cache=default_cache(),
                               first_images=args.first_images)
    img, txt = pairs.pair_image_vectors, pairs.text_vectors
    return img, txt, f"flickr8k {args.image_encoder} x {args.text_encoder}, {img.shape[0]} pairs (one caption per image)"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-encoder", default="efficientnet-lite0")
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--n-base", type=int, default=320)
    ap.add_argument("--n-query", type=int, default=500)
    ap.add_argument("--ref-rows", type=int, default=1)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--first-images", type=int, default=None, help="use only the first N Flickr8k images")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    img, txt, what = load(args)
    img_s, txt_s = mt.stretch(img), mt.stretch(txt)
    base = mt.kmeans_base(img, args.n_base, seed=0)
    rest = np.setdiff1d(np.arange(img.shape[0]), base)
    q = np.random.default_rng(0).choice(rest, size=args.n_query, replace=False)
    sb, tb, sq, tq = txt_s[base], img_s[base], txt_s[q], img_s[q]  # captions -> images

    t0 = time.perf_counter()
    ours = mt.LocalCKA(sb, tb).score(sq, tq)
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = reference_kernel_local_cka(sb, tb, sq, tq, args.ref_rows)
    t_ref = time.perf_counter() - t0

    per_ours = t_ours / ours.size
    per_ref = t_ref / ref.size
    diff = float(np.abs(ours[: args.ref_rows] - ref).max())
    same_top = bool(np.array_equal(np.argsort(-ours[: args.ref_rows], axis=1)[:, :10],
                                   np.argsort(-ref, axis=1)[:, :10]))
    out = {
        "data": what, "n_base": args.n_base, "n_query": args.n_query,
        "ours_seconds_full_grid": t_ours, "ours_pairs": int(ours.size), "ours_us_per_pair": 1e6 * per_ours,
        "reference_seconds": t_ref, "reference_pairs": int(ref.size), "reference_us_per_pair": 1e6 * per_ref,
        "speedup_per_pair": per_ref / per_ours,
        "reference_full_grid_estimate_seconds": per_ref * ours.size,
        "max_abs_score_diff": diff, "same_top10_order": same_top,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>38}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
