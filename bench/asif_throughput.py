"""Benchmark (a): ASIF zero-shot classification throughput vs the reference algorithm and vs a
bare GEMM of the same shape (the hardware floor), same inputs, one run.

    python bench/asif_throughput.py --source real                       # cached Flickr8k x CIFAR-10 test
    python bench/asif_throughput.py --source synthetic --n 35000 --q 10000 --d-img 1280 --d-txt 384
    python bench/asif_throughput.py --source synthetic --n 1000000 --q 10000 --d-img 384 --d-txt 384 \
        --methods gemm rosetta reference --repeats 1

Every method runs --repeats times, round-robin; the table takes each method's fastest run (the
machine is shared, so slow spells are noise on top of the work) and also prints the medians.

Methods (all CPU; all end at predicted classes):
  gemm       the [Q, d] x [d, N] image-side product, chunked under the same memory bound, nothing else
  rosetta    core.asif.AsifModel.classify (per-template candidates, like the reference)
  rosetta-nodedup  the same with the duplicate-anchor-image shortcut disabled
  reference  bench/asif_reference.py (relreps.py's algorithm: chunked dense einsum + topk + v**p +
             sparse COO + dense einsum / sparse.mm)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.asif_common import machine, real_inputs, synthetic_inputs  # noqa: E402
from bench.asif_reference import zero_shot_classify  # noqa: E402
from core.asif import AsifModel  # noqa: E402
from core.search import DEFAULT_MEMORY_BYTES, tile_shape  # noqa: E402


def bare_gemm(q: np.ndarray, a: np.ndarray, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> float:
    """The [Q, d] x [d, N] product in the tiles of core.search.exact_topk, nothing else."""
    qt, at = torch.from_numpy(q), torch.from_numpy(a)
    qb, nb = tile_shape(q.shape[0], a.shape[0], memory_bytes)
    acc = 0.0
    with torch.no_grad():
        for s in range(0, q.shape[0], qb):
            for a0 in range(0, a.shape[0], nb):
                block = qt[s:s + qb] @ at[a0:a0 + nb].T
                acc += float(block[0, 0])
                del block
    return acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["real", "synthetic"], default="real")
    ap.add_argument("--n", type=int, default=35000)
    ap.add_argument("--q", type=int, default=10000)
    ap.add_argument("--d-img", type=int, default=1280)
    ap.add_argument("--d-txt", type=int, default=384)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--p", type=float, default=8.0)
    ap.add_argument("--captions-per-image", type=int, default=1,
                    help="synthetic: repeat each anchor image (5 = the Flickr8k structure)")
    ap.add_argument("--ref-mem-gb", type=float, default=8.0,
                    help="the reference's max_gpu_mem_gb (its default is 8)")
    ap.add_argument("--methods", nargs="+", default=["gemm", "rosetta", "rosetta-nodedup", "reference"])
    ap.add_argument("--partial-queries", action="store_true",
                    help="real: use only the CIFAR-10 test images already in the cache")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds over all methods; times are the fastest round (median also printed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {"machine": machine(), "source": args.source, "k": args.k, "p": args.p}
    if args.source == "real":
        data = real_inputs(partial_queries=args.partial_queries)
    else:
        data = synthetic_inputs(args.n, args.q, args.d_img, args.d_txt,
                                captions_per_image=args.captions_per_image)
        out["captions_per_image"] = args.captions_per_image
    ai, at, q = data["anchor_img"], data["anchor_txt"], data["q"]
    pe, pc = data["prompts_emb"], data["prompt_classes"]
    n_t = int(np.bincount(pc).max())
    out.update(n_anchors=ai.shape[0], n_queries=q.shape[0], d_img=ai.shape[1], d_txt=at.shape[1],
               n_prompts=pe.shape[0])
    times, preds = {}, {}
    for _ in range(args.repeats):  # round-robin, so slow spells of a shared machine hit every method
        for method in args.methods:
            gc.collect()
            t = time.perf_counter()
            if method == "gemm":
                bare_gemm(q, ai)
            elif method.startswith("rosetta"):
                model = AsifModel(ai, at, k=args.k, p=args.p)
                if method == "rosetta-nodedup":
                    model.search_index("image").dedup = None
                res = model.classify(q, pe, pc, strategy="per-template")
                preds[method] = res.predictions
            elif method == "reference":
                preds[method] = zero_shot_classify(torch.from_numpy(q), torch.from_numpy(pe), torch.from_numpy(ai),
                                                   torch.from_numpy(at), args.k, args.p, n_t,
                                                   max_mem_gb=args.ref_mem_gb).numpy()
            else:
                raise SystemExit(f"unknown method {method}")
            times.setdefault(method, []).append(time.perf_counter() - t)
            print(f"{method}: {times[method][-1]:.2f} s", file=sys.stderr, flush=True)
    best = {m: round(min(t), 2) for m, t in times.items()}
    out["repeats"] = args.repeats
    out["seconds"] = best
    out["seconds_median"] = {m: round(float(np.median(t)), 2) for m, t in times.items()}
    if "gemm" in best:
        out["ratio_to_gemm"] = {m: round(t / best["gemm"], 2) for m, t in best.items() if m != "gemm"}
    if "reference" in best:
        out["speedup_vs_reference"] = {m: round(best["reference"] / t, 2) for m, t in best.items()
                                       if m.startswith("rosetta")}
    if "reference" in preds and "rosetta" in preds:
        out["agreement_with_reference"] = float(np.mean(preds["reference"] == preds["rosetta"]))
    if args.source == "real":
        out["accuracy"] = {m: float(np.mean(p == data["y"])) for m, p in preds.items()}
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
