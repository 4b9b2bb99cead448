"""`python -m core embed` (fill the embedding cache for a dataset) and `python -m core info`."""
from __future__ import annotations

import argparse
import json
import sys
import time

from core.cli import ProgressBar


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
    embed.add_argument("--image-encoder", default="efficientnet-lite0", metavar="NAME")
    embed.add_argument("--text-encoder", default="minilm", metavar="NAME")
    embed.add_argument("--limit", type=int, default=None, metavar="N",
                       help="only the first N images (pairs: with all their captions)")
    embed.add_argument("--batch-size", type=int, default=None)
    embed.add_argument("--json", action="store_true", help="print a JSON summary")
    embed.set_defaults(run=run_embed)

    info = subparsers.add_parser("info", help="encoders, dimensions, cache location and size")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=run_info)


def _embed(label: str, encoder: str, items, keys, cache, show: bool, batch_size: int | None):
    """:func:`core.embedded.embed` behind a progress bar on stderr."""
    from core.embedded import embed

    bar = ProgressBar(label, show)
    try:
        return embed(encoder, items, cache=cache, keys=keys, progress=bar, batch_size=batch_size)
    finally:
        bar.close()


def run_embed(args: argparse.Namespace) -> int:
    from core import cache as C
    from core import data as D

    started = time.perf_counter()
    cache = C.default_cache()
    show = sys.stderr.isatty() or not args.json
    summary: dict = {"cache": str(cache.root)}
    if args.labeled:
        labeled = D.load_labeled(args.labeled)
        report = labeled.report
        if args.limit:
            labeled = labeled.subset(range(min(args.limit, len(labeled))))
        if not len(labeled):
            raise ValueError(f"nothing to embed in {args.labeled}: {report.summary()}")
        result = _embed(f"{args.image_encoder} images", args.image_encoder, labeled.paths,
                        labeled.keys, cache, show, args.batch_size)
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
                     pairs.image_keys, cache, show, args.batch_size)
        txt = _embed(f"{args.text_encoder} captions", args.text_encoder, pairs.captions, None,
                     cache, show, args.batch_size)
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
