"""`python -m core embed` (fill the embedding cache for a dataset) and `python -m core info`."""
from __future__ import annotations

import argparse
import json
import sys
import time

from core.cli import ProgressBar

DEFAULT_IMAGE, DEFAULT_TEXT = "efficientnet-lite0", "minilm"


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser(
        "embed", help="embed a dataset into the cache (with a progress bar)",
        description="Fill the embedding cache for a pair set or a labeled image set. Already cached "
                    "items are never recomputed.")
    source = embed.add_mutually_exclusive_group()
    source.add_argument("--pairs", metavar="PATH",
                        help="image-caption pairs: a folder with captions.csv, a CSV, a COCO JSON or a zip "
                             "(default with neither option: the demo Flickr8k folder)")
    source.add_argument("--labeled", metavar="FOLDER", help="labeled images, one sub-folder per class")
    embed.add_argument("--image-encoder", default=None, metavar="NAME",
                       help=f"default {DEFAULT_IMAGE}; for precomputed --pairs: the encoder that made them")
    embed.add_argument("--text-encoder", default=None, metavar="NAME",
                       help=f"default {DEFAULT_TEXT}; for precomputed --pairs: the encoder that made them")
    embed.add_argument("--limit", type=int, default=None, metavar="N",
                       help="only the first N images (pairs: with all their captions)")
    embed.add_argument("--batch-size", type=int, default=None)
    embed.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this process; ray: Ray Data workers (a local Ray instance, or the "
                            "cluster RAY_ADDRESS names), same encoders, same cache")
    embed.add_argument("--json", action="store_true", help="print a JSON summary")
    embed.set_defaults(run=run_embed)

    info = subparsers.add_parser("info", help="encoders, dimensions, cache location and size")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=run_info)


def _embed(label: str, encoder: str, items, keys, cache, show: bool, batch_size: int | None,
           engine: str = "local"):
    """:func:`core.embedded.embed` (or, ``engine="ray"``, :func:`core.distributed.embed`: the same
    encoders on Ray Data workers, the same cache) behind a progress bar on stderr."""
    if engine == "ray":  # core.distributed hook
        from core.distributed import embed
    else:
        from core.embedded import embed

    bar = ProgressBar(label, show)
    try:
        return embed(encoder, items, cache=cache, keys=keys, progress=bar, batch_size=batch_size)
    finally:
        bar.close()


def run_embed(args: argparse.Namespace) -> int:
    from core import cache as C
    from core import data as D
    from core.interchange import detect_format

    started = time.perf_counter()
    cache = C.default_cache()
    show = sys.stderr.isatty() or not args.json
    if args.pairs and detect_format(args.pairs) is not None:  # core.interchange hook: precomputed vectors
        return _run_import(args, args.pairs, cache, started)
    args.image_encoder = args.image_encoder or DEFAULT_IMAGE
    args.text_encoder = args.text_encoder or DEFAULT_TEXT
    summary: dict = {"cache": str(cache.root)}
    if args.labeled:
        labeled = D.load_labeled(args.labeled)
        report = labeled.report
        if args.limit:
            labeled = labeled.subset(range(min(args.limit, len(labeled))))
        if not len(labeled):
            raise ValueError(f"nothing to embed in {args.labeled}: {report.summary()}")
        result = _embed(f"{args.image_encoder} images", args.image_encoder, labeled.paths,
                        labeled.keys, cache, show, args.batch_size, args.engine)
        summary.update({"kind": "labeled", "source": args.labeled, "images": len(labeled),
                        "classes": labeled.class_names, "image_encoder": args.image_encoder,
                        "dim": int(result.vectors.shape[1]), "cached_before": result.hits,
                        "computed": result.computed,
                        "failed": [str(f) for f in result.failed]})
    else:
        source = args.pairs
        if source is None:
            source = D.demo_sources(required=True)["flickr8k"]
            if source is None:
                raise ValueError("no demo Flickr8k folder.\n" + D.EXPECTED_LAYOUT)
        pairs = D.load_pairs(source)
        report = pairs.report
        if args.limit:
            pairs = pairs.first_images(args.limit)
        if not len(pairs):
            raise ValueError(f"nothing to embed in {source}: {report.summary()}")
        img = _embed(f"{args.image_encoder} images", args.image_encoder, pairs.images,
                     pairs.image_keys, cache, show, args.batch_size, args.engine)
        txt = _embed(f"{args.text_encoder} captions", args.text_encoder, pairs.captions, None,
                     cache, show, args.batch_size, args.engine)
        summary.update({"kind": "pairs", "source": str(source), "pairs": len(pairs),
                        "images": len(pairs.images), "image_encoder": args.image_encoder,
                        "text_encoder": args.text_encoder, "image_dim": int(img.vectors.shape[1]),
                        "text_dim": int(txt.vectors.shape[1]),
                        "cached_before": {"images": img.hits, "captions": txt.hits},
                        "computed": {"images": img.computed, "captions": txt.computed},
                        "failed": [str(f) for f in img.failed + txt.failed]})
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["report"] = report.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"source: {summary['source']}")
        print(f"validation: {report.summary()}")
        for problem in report.problems[:20]:
            print(f"  [{problem.severity}] {problem.kind}: {problem.item}: {problem.message}")
        if len(report.problems) > 20:
            print(f"  … and {len(report.problems) - 20} more (see --json)")
        print(f"computed: {summary['computed']}; already cached: {summary['cached_before']}")
        for failure in summary["failed"][:20]:
            print(f"  skipped {failure}")
        if len(summary["failed"]) > 20:
            print(f"  … and {len(summary['failed']) - 20} more skipped (see --json)")
        print(f"cache: {summary['cache']}  ({summary['seconds']} s)")
    return 0


def _run_import(args: argparse.Namespace, source: str, cache, started: float) -> int:
    """``embed --pairs`` on precomputed vectors: read and check them (nothing to compute unless an
    imagefolder holds pictures without vectors), and summarise."""
    from core.interchange import import_pairs

    bar = ProgressBar("embedding", sys.stderr.isatty() or not args.json)
    try:
        pairs = import_pairs(source, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
                             limit=args.limit, cache=cache, progress=bar)
    finally:
        bar.close()
    summary = {"cache": str(cache.root), "kind": "precomputed pairs", "source": str(source), "pairs": len(pairs),
               "images": len(pairs.images), "image_encoder": pairs.image_encoder,
               "text_encoder": pairs.text_encoder, "image_dim": int(pairs.image_vectors.shape[1]),
               "text_dim": int(pairs.text_vectors.shape[1]), "failed": [str(s) for s in pairs.skipped],
               "seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"source: {source} (precomputed vectors)")
        print(f"{len(pairs)} pairs, {len(pairs.images)} images; {pairs.image_encoder} "
              f"{summary['image_dim']}-d, {pairs.text_encoder} {summary['text_dim']}-d; "
              f"{len(pairs.skipped)} rows left out ({summary['seconds']} s)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from core import cache as C
    from core import data as D
    from core import encoders as E

    cache_info = C.default_cache().info()
    root = D.data_dir(required=False)
    out = {
        "encoders": E.list_encoders(),
        "device": E.default_device(),
        "cache": cache_info,
        "data": {"location": str(root) if root else None,
                 "sources": {k: (str(v) if v else None) for k, v in D.demo_sources().items()},
                 "expected_layout": None if root else D.EXPECTED_LAYOUT},
        "other_encoders": ["open_clip:<arch>:<pretrained tag | checkpoint path | none>:<image | text>",
                           "st:<sentence-transformers name or local folder>"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("Built-in encoders:")
    for e in out["encoders"]:
        state = "installed" if e["available"] else f"missing — {e['install']}"
        print(f"  {e['name']:<20} {e['modality']:<6} d={e['dim']:<5} {state}")
    print("  also: " + "; ".join(out["other_encoders"]))
    print(f"Device: {out['device']}")
    print(f"Cache: {cache_info['location']}  ({cache_info['bytes'] / 1e6:.1f} MB)")
    for m in cache_info["models"]:
        print(f"  {m['model_id']:<55} d={m['dim']}  {m['vectors']:>8,} vectors  {m['bytes'] / 1e6:8.1f} MB")
    if root:
        print(f"Data: {root}")
    else:
        print("Data: not found.\n" + D.EXPECTED_LAYOUT)
    return 0
