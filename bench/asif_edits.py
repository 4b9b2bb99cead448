"""Benchmark (b): one edit re-scored incrementally vs a full recompute, at N anchors x Q queries.

    python bench/asif_edits.py --source real            # all cached Flickr8k pairs x CIFAR-10 test
    python bench/asif_edits.py --source synthetic --n 35000 --q 10000

Prints per-edit latency (median / p90 over --edits edits, and the median of each kind), the time
of a full recompute (classify from scratch on the edited model) and the ratio, in one run. Also
checks the incremental predictions against that full recompute. The edits cycle through four kinds:

* ``remove``: a random anchor pair;
* ``undo_remove``: puts it back (an addition that enters the lists that pair was in);
* ``add_worst``: adds one of the evaluation images, captioned with a class prompt. On CIFAR-10 it
  enters nearly every evaluation image's top-k (the worst case: ~9,700 of 10,000 lists);
* ``undo_add``: removes it again (the worst-case removal).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.asif_common import machine, real_inputs, synthetic_inputs  # noqa: E402
from core.asif import AsifModel  # noqa: E402
from core.edits import EditSession  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", choices=["real", "synthetic"], default="real")
    ap.add_argument("--n", type=int, default=35000)
    ap.add_argument("--q", type=int, default=10000)
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--p", type=float, default=8.0)
    ap.add_argument("--strategy", default="per-template")
    ap.add_argument("--edits", type=int, default=32)
    ap.add_argument("--captions-per-image", type=int, default=5,
                    help="synthetic: repeat each anchor image (5 = the Flickr8k structure)")
    ap.add_argument("--influence", action="store_true", help="also time the full influence table")
    ap.add_argument("--partial-queries", action="store_true",
                    help="real: use only the CIFAR-10 test images already in the cache")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    info = {"machine": machine(), "source": args.source}
    if args.source == "real":
        data = real_inputs(partial_queries=args.partial_queries)
    else:
        data = synthetic_inputs(args.n, args.q, 1280, 384, captions_per_image=args.captions_per_image)
        info["captions_per_image"] = args.captions_per_image
    rng = np.random.default_rng(0)
    model = AsifModel(data["anchor_img"], data["anchor_txt"], k=args.k, p=args.p, metadata=data["meta"])
    t = time.perf_counter()
    s = EditSession(model, data["q"], data["y"], data["prompts_emb"], data["prompt_classes"],
                    class_names=data["class_names"], strategy=args.strategy)
    info.update(n_anchors=model.n_anchors, n_queries=len(data["y"]), k=args.k, p=args.p,
                strategy=args.strategy, session_build_s=round(time.perf_counter() - t, 2),
                accuracy=s.accuracy)
    kinds = ("remove", "undo_remove", "add_worst", "undo_add")
    lat = {kind: [] for kind in kinds}
    cpu = []
    touched = {kind: [] for kind in kinds}
    for i in range(args.edits):
        c0 = time.process_time()
        kind = kinds[i % len(kinds)]
        if kind == "remove":
            r = s.remove(rng.choice(s.pair_ids, 1))
        elif kind == "add_worst":
            j = rng.integers(0, len(data["y"]))
            r = s.add(data["q"][j:j + 1], data["prompts_emb"][rng.integers(0, len(data["prompts_emb"])):][:1])
        else:
            r = s.undo()
        lat[kind].append(r.elapsed_ms)
        cpu.append((time.process_time() - c0) * 1000)
        touched[kind].append(r.touched_queries)
    t = time.perf_counter()
    full_pred = s.full_recompute()
    full_s = time.perf_counter() - t
    assert (full_pred == s.predictions).all(), "incremental != full recompute"
    all_ms = np.concatenate([np.asarray(v) for v in lat.values()])
    info.update({
        "edit_ms_median": round(float(np.median(all_ms)), 2),
        "edit_ms_p90": round(float(np.percentile(all_ms, 90)), 2),
        "edit_ms_by_kind": {k: round(float(np.median(v)), 2) for k, v in lat.items() if v},
        "edit_cpu_ms_median": round(float(np.median(cpu)), 2),
        "touched_queries_by_kind": {k: float(np.median(v)) for k, v in touched.items() if v},
        "full_recompute_s": round(full_s, 3),
        "speedup_median": round(full_s * 1000 / float(np.median(all_ms)), 1),
        "speedup_by_kind": {k: round(full_s * 1000 / float(np.median(v)), 1) for k, v in lat.items() if v},
        "incremental_equals_full": True,
    })
    if args.influence:
        t = time.perf_counter()
        inf = s.influence()
        info["influence_s"] = round(time.perf_counter() - t, 2)
        info["influence_paths"] = {"fast": inf.n_fast, "algebraic": inf.n_algebraic, "edit": inf.n_edit_path}
    print(json.dumps(info) if args.json else json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
