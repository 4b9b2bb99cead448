"""`python -m core asif …`: evaluate an ASIF model from a pair set and a labeled image folder.

    python -m core asif eval --anchors <pairs dataset> --test <labeled image folder> \
        --image-encoder NAME --text-encoder NAME --k K --p P [--template T ...] \
        [--strategy mean|per-template] [--limit-anchors N] [--per-class N] [--save model.npz] --json

``--anchors`` / ``--test`` default to the demo data (Flickr8k pairs, CIFAR-10 test). Embeddings go
through the embedding cache. ``--json`` prints one object with at least ``accuracy``,
``n_anchors`` and ``n_test``; images that cannot be decoded are left out and counted in ``n_skipped``
(listed on stderr without ``--json``).
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


def _report_skipped(skipped, quiet: bool) -> None:
    """One line per item left out (an unreadable image), on stderr unless ``--json``."""
    if not quiet:
        for item in skipped:
            print(f"skipped {item}", file=sys.stderr)


def run_eval(args) -> int:
    from core.asif import DEFAULT_K, DEFAULT_P, DEFAULT_TEMPLATES, AsifModel
    from core.cache import default_cache
    from core.data import data_dir, load_labeled, load_pairs
    from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed_prompts

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
    cache = default_cache()
    emb = EmbeddedPairs.from_pairset(pairs, args.image_encoder, args.text_encoder, cache=cache,
                                     progress=_progress("embedding anchors", quiet))
    test = EmbeddedLabeled.from_labeled(labeled, args.image_encoder, cache=cache,
                                        progress=_progress("embedding test images", quiet))
    prompt_emb, prompt_classes = embed_prompts(labeled.class_names, templates, args.text_encoder,
                                               cache=cache)
    _report_skipped(emb.skipped + test.skipped, quiet)
    if len(emb) == 0 or len(test) == 0:
        raise ValueError("no anchor pair or no test image could be embedded.")
    t_embed = time.perf_counter()
    name_of = dict(zip(pairs.images, pairs.image_names))
    model = AsifModel(emb.pair_image_vectors, emb.text_vectors, k=k, p=p,
                      metadata=[{"image": name_of[path], "caption": c}
                                for path, c in zip(emb.pair_paths, emb.captions)],
                      info={"image_encoder": args.image_encoder, "text_encoder": args.text_encoder,
                            "anchors": str(anchors)})
    res = model.classify(test.vectors, prompt_emb, prompt_classes, strategy=args.strategy,
                         n_classes=len(test.class_names))
    t_cls = time.perf_counter()
    per_class = res.per_class_accuracy(test.labels)
    out = {
        "accuracy": res.accuracy(test.labels),
        "n_anchors": model.n_anchors,
        "n_test": len(test),
        "n_skipped": len(emb.skipped) + len(test.skipped),
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
