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
                   help="anchor pairs: folder with captions.csv, CSV, COCO JSON or zip, or precomputed "
                        "vectors (clip-retrieval img_emb/ text_emb/ metadata/, .parquet, a saved "
                        "datasets folder, an imagefolder with metadata.jsonl) (default: demo Flickr8k)")
    p.add_argument("--test", default=None,
                   help="labeled images, one sub-folder per class (or under train/ test/ split folders), "
                        "or precomputed vectors with a label column (.parquet, saved datasets folder) "
                        "(default: demo CIFAR-10 test)")
    p.add_argument("--image-encoder", default=None,
                   help=f"image encoder (default {DEFAULT_IMAGE_ENCODER}); with precomputed vectors: the "
                        "one that made them (read from the files when they record it)")
    p.add_argument("--text-encoder", default=None,
                   help=f"text encoder (default {DEFAULT_TEXT_ENCODER}); with precomputed vectors: the "
                        "one that made them")
    p.add_argument("--prompt-embeddings", default=None, metavar="FILE.npy",
                   help="precomputed class-prompt vectors [classes x templates, d_txt], class-major, when "
                        "the text encoder cannot run here")
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


DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER = "efficientnet-lite0", "minilm"


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
    from core.data import data_dir, load_pairs
    from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed_prompts
    from core.interchange import (detect_format, import_labeled, import_pairs, labeled_imagefolder,
                                  require_encoder)

    t0 = time.perf_counter()
    root = None
    if args.anchors is None or args.test is None:
        root = data_dir(required=True)
    anchors = Path(args.anchors) if args.anchors else Path(root) / "flickr8k"
    test = Path(args.test) if args.test else Path(root) / "cifar10" / "test"
    p = args.p if args.p is not None else DEFAULT_P
    templates = args.template or list(DEFAULT_TEMPLATES)
    quiet = bool(args.json)
    cache = default_cache()
    # core.interchange hook: anchors and test pictures may be precomputed vectors; the encoders
    # that made them embed whatever else is needed (test pictures, prompts).
    if detect_format(anchors) is not None:
        emb = import_pairs(anchors, image_encoder=args.image_encoder, text_encoder=args.text_encoder,
                           limit=args.limit_anchors, cache=cache,
                           progress=_progress("embedding anchors", quiet))
        name_of = {}
    else:
        pairs = load_pairs(anchors)
        if len(pairs) == 0:
            raise ValueError(f"no usable pairs in {anchors}.")
        if args.limit_anchors:
            pairs = pairs.subset(range(min(args.limit_anchors, len(pairs))))
        emb = EmbeddedPairs.from_pairset(pairs, args.image_encoder or DEFAULT_IMAGE_ENCODER,
                                         args.text_encoder or DEFAULT_TEXT_ENCODER, cache=cache,
                                         progress=_progress("embedding anchors", quiet))
        name_of = dict(zip(pairs.images, pairs.image_names))
    image_encoder, text_encoder = emb.image_encoder, emb.text_encoder
    t_load = time.perf_counter()
    if detect_format(test) in ("parquet", "hf-dataset"):
        test = import_labeled(test, image_encoder=image_encoder)
        if args.per_class:
            test = test.subset(_first_per_class(test.labels, args.per_class))
    else:
        labeled = labeled_imagefolder(test)
        if args.per_class:
            labeled = labeled.per_class(args.per_class)
        if len(labeled) == 0:
            raise ValueError(f"no usable labeled images in {test}.")
        require_encoder(image_encoder, "embedding the test pictures")
        test = EmbeddedLabeled.from_labeled(labeled, image_encoder, cache=cache,
                                            progress=_progress("embedding test images", quiet))
    if args.prompt_embeddings:
        prompt_emb, prompt_classes = _prompt_file(args.prompt_embeddings, test.class_names, templates)
    else:
        require_encoder(text_encoder, "embedding the class prompts")
        prompt_emb, prompt_classes = embed_prompts(test.class_names, templates, text_encoder, cache=cache)
    _report_skipped(emb.skipped + test.skipped, quiet)
    if len(emb) == 0 or len(test) == 0:
        raise ValueError("no anchor pair or no test image could be embedded.")
    k = args.k if args.k is not None else min(DEFAULT_K, len(emb))
    t_embed = time.perf_counter()
    model = AsifModel(emb.pair_image_vectors, emb.text_vectors, k=k, p=p,
                      metadata=[{"image": name_of.get(path, path), "caption": c}
                                for path, c in zip(emb.pair_paths, emb.captions)],
                      info={"image_encoder": image_encoder, "text_encoder": text_encoder,
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
        "image_encoder": image_encoder, "text_encoder": text_encoder,
        "templates": templates,
        "class_names": list(test.class_names),
        "per_class_accuracy": {n: (None if np.isnan(a) else float(a))
                               for n, a in zip(test.class_names, per_class)},
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


def _first_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Positions of the first ``n`` items of every class."""
    counts: dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels.tolist()):
        if counts.get(y, 0) < n:
            counts[y] = counts.get(y, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def _prompt_file(path: str, class_names, templates) -> tuple[np.ndarray, np.ndarray]:
    """Precomputed prompt vectors ``[C*T, d]`` (class-major, as ``build_prompts`` orders them)."""
    from core.asif import build_prompts

    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable .npy array ({error}).") from None
    _, classes = build_prompts(list(class_names), list(templates))
    if vectors.ndim != 2 or vectors.shape[0] != classes.size:
        raise ValueError(f"{path} holds {vectors.shape} vectors; {len(class_names)} classes x "
                         f"{len(templates)} templates need [{classes.size}, d].")
    return vectors.astype(np.float32), classes
