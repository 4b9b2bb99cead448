"""`python -m core asif …`: evaluate an ASIF model from a pair set and a labeled image folder.

    python -m core asif eval --anchors <pairs dataset> --test <labeled image folder> \
        --image-encoder NAME --text-encoder NAME --k K --p P [--template T ...] \
        [--strategy mean|per-template] [--limit-anchors N] [--per-class N] [--save model.npz] --json

``--anchors`` / ``--test`` default to the demo data (Flickr8k pairs, CIFAR-10 test). Embeddings go
through the embedding cache. ``--json`` prints one object with at least ``accuracy``,
``n_anchors`` and ``n_test``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    parser = subparsers.add_parser("asif", help="ASIF models: zero-shot evaluation")
    sub = parser.add_subparsers(dest="asif_command", required=True)
    p = sub.add_parser("eval", help="zero-shot accuracy of an ASIF model on a labeled image folder")
    p.add_argument("--anchors", default=None,
                   help="anchor pairs: folder with captions.csv, CSV, COCO JSON or zip (default: demo Flickr8k)")
    p.add_argument("--test", default=None,
                   help="labeled images, one sub-folder per class (default: demo CIFAR-10 test)")
    p.add_argument("--image-encoder", default="efficientnet-lite0")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--k", type=int, default=None, help="non-zeros per relative representation (default 800)")
    p.add_argument("--p", type=float, default=None, help="similarity exponent (default 8)")
    p.add_argument("--template", action="append", default=None,
                   help="prompt template with {} for the class name; repeat for several "
                        "(default: a built-in set of 8)")
    p.add_argument("--strategy", choices=["mean", "per-template"], default=None,
                   help="how templates become candidates (default: the measured best)")
    p.add_argument("--limit-anchors", type=int, default=None, help="use the first N pairs only")
    p.add_argument("--per-class", type=int, default=None, help="use the first N test images of each class")
    p.add_argument("--save", default=None, help="also save the model (.npz) here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_eval)
    from core.cli import curate
    curate.register(sub)


def _progress(label: str, quiet: bool):
    def f(done, total):
        if not quiet and total:
            print(f"\r{label}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
    return f


def run_eval(args) -> int:
    from core.asif import (DEFAULT_K, DEFAULT_P, DEFAULT_TEMPLATES, AsifModel, build_prompts)
    from core.cache import embed_labeled, embed_pairs, embed_texts
    from core.data import data_dir, load_labeled, load_pairs

    t0 = time.perf_counter()
    root = None
    if args.anchors is None or args.test is None:
        root = data_dir(required=True)
    anchors = Path(args.anchors) if args.anchors else Path(root) / "flickr8k"
    test = Path(args.test) if args.test else Path(root) / "cifar10" / "test"
    pairs = load_pairs(anchors)
    if len(pairs) == 0:
        raise ValueError(f"no usable pairs in {anchors}.")
    if args.limit_anchors:
        pairs = pairs.subset(range(min(args.limit_anchors, len(pairs))))
    labeled = load_labeled(test)
    if args.per_class:
        labeled = labeled.per_class(args.per_class)
    if len(labeled) == 0:
        raise ValueError(f"no usable labeled images in {test}.")
    k = args.k if args.k is not None else min(DEFAULT_K, len(pairs))
    p = args.p if args.p is not None else DEFAULT_P
    templates = args.template or list(DEFAULT_TEMPLATES)
    quiet = bool(args.json)
    t_load = time.perf_counter()
    img, txt = embed_pairs(pairs, args.image_encoder, args.text_encoder,
                           progress=_progress("embedding anchors", quiet))
    test_emb = embed_labeled(labeled, args.image_encoder, progress=_progress("embedding test images", quiet))
    prompts, prompt_classes = build_prompts(labeled.class_names, templates)
    prompt_emb = embed_texts(args.text_encoder, prompts)
    t_embed = time.perf_counter()
    model = AsifModel(img, txt, k=k, p=p,
                      metadata=[{"image": pairs.image_names[i], "caption": c}
                                for i, c in zip(pairs.pair_image.tolist(), pairs.captions)],
                      info={"image_encoder": args.image_encoder, "text_encoder": args.text_encoder,
                            "anchors": str(anchors)})
    res = model.classify(test_emb, prompt_emb, prompt_classes, strategy=args.strategy,
                         n_classes=len(labeled.class_names))
    t_cls = time.perf_counter()
    per_class = res.per_class_accuracy(labeled.labels)
    out = {
        "accuracy": res.accuracy(labeled.labels),
        "n_anchors": model.n_anchors,
        "n_test": len(labeled),
        "k": model.k, "p": model.p, "strategy": res.strategy,
        "image_encoder": args.image_encoder, "text_encoder": args.text_encoder,
        "templates": templates,
        "class_names": list(labeled.class_names),
        "per_class_accuracy": {n: (None if np.isnan(a) else float(a))
                               for n, a in zip(labeled.class_names, per_class)},
        "seconds": {"load": round(t_load - t0, 3), "embed": round(t_embed - t_load, 3),
                    "classify": round(t_cls - t_embed, 3)},
    }
    if args.save:
        out["saved"] = model.save(args.save)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"accuracy {out['accuracy']:.4f} on {out['n_test']} images with {out['n_anchors']} anchor "
              f"pairs (k={model.k}, p={model.p:g}, {res.strategy} templates)")
        for n, a in out["per_class_accuracy"].items():
            print(f"  {n:>14s}  {a if a is None else round(a, 4)}")
    return 0
