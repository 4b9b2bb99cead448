"""`python -m core asif curate …`: auto-curate an ASIF model on a tuning split, report the held-out test.

    python -m core asif curate --anchors <pairs> --test <labeled folder> --tune-fraction 0.5 --seed 0 \
        --max-removals 500 [--per-round 50] [--holdout-fraction 0.3] \
        [--add-pool <labeled folder> --max-additions 500] [--limit-anchors N] [--per-class N] --json

The labeled folder is split, stratified by class and seeded (:func:`core.curation.stratified_split`,
keyed by each image's path relative to the folder, ``<class>/<file>``), into a tuning part that
chooses and a test part that only scores. Pairs are pruned by :func:`core.curation.auto_curate`;
with ``--add-pool``, :func:`core.curation.suggest_additions` proposes pool images captioned with the
class prompt and all are added as one edit. ``--json`` prints one object with ``tune_before``,
``tune_after``, ``test_before``, ``test_after`` (fractions), ``removed``, ``added`` and the settings.
Defaults are the app's (encoders, k, p, templates, strategy; the demo Flickr8k pairs and CIFAR-10
test images).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def register(asif_subparsers) -> None:
    """Add ``curate`` to the ``asif`` command group."""
    p = asif_subparsers.add_parser("curate", help="auto-curate on a tuning split; report the held-out test split")
    p.add_argument("--anchors", default=None,
                   help="anchor pairs: folder with captions.csv, CSV, COCO JSON or zip (default: demo Flickr8k)")
    p.add_argument("--test", default=None,
                   help="labeled images, one sub-folder per class, split into tuning and test "
                        "(default: demo CIFAR-10 test)")
    p.add_argument("--tune-fraction", type=float, default=0.5, help="share of each class used for tuning")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (and of the held-back slice)")
    p.add_argument("--max-removals", type=int, default=500, help="removal budget (pairs)")
    p.add_argument("--per-round", type=int, default=50, help="pairs removed per round (one edit each)")
    p.add_argument("--holdout-fraction", type=float, default=None,
                   help="share of the tuning part held back for the stopping rule (default 0.3)")
    p.add_argument("--add-pool", default=None,
                   help="labeled images (one sub-folder per class, same class names) to propose additions from")
    p.add_argument("--max-additions", type=int, default=0, help="additions budget (pairs)")
    p.add_argument("--image-encoder", default=None)
    p.add_argument("--text-encoder", default=None)
    p.add_argument("--k", type=int, default=None, help="non-zeros per relative representation (default 800)")
    p.add_argument("--p", type=float, default=None, help="similarity exponent (default 8)")
    p.add_argument("--template", action="append", default=None,
                   help="prompt template with {} for the class name; repeat for several (default: the app's 8)")
    p.add_argument("--strategy", choices=["mean", "per-template"], default=None,
                   help="how templates become candidates (default: the app's)")
    p.add_argument("--limit-anchors", type=int, default=None, help="use the first N pairs only")
    p.add_argument("--per-class", type=int, default=None, help="use the first N labeled images of each class")
    p.add_argument("--pool-per-class", type=int, default=None, help="use the first N pool images of each class")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_curate)


def _stderr_progress(label: str, quiet: bool):
    def f(fraction: float, message: str) -> None:
        if not quiet:
            print(f"\r{label}: {fraction:5.1%} {message[:70]:70s}", end="" if fraction < 1 else "\n",
                  file=sys.stderr)
    return f


def _counts_progress(label: str, quiet: bool):
    def f(done: int, total: int) -> None:
        if not quiet and total:
            print(f"\r{label}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr)
    return f


def split_keys(labeled) -> list[str]:
    """The split key of each labeled image: its path relative to the set's folder, ``<class>/<file>``."""
    return [Path(os.path.relpath(p, labeled.root)).as_posix() for p in labeled.paths]


def run_curate(args) -> int:
    from core.asif import DEFAULT_K, DEFAULT_P, DEFAULT_TEMPLATE_STRATEGY, DEFAULT_TEMPLATES, AsifModel, build_prompts
    from core.cache import embed_labeled, embed_pairs, embed_texts
    from core.curation import (STOP_RULE, auto_curate, class_caption, stratified_split,
                               suggest_additions)
    from core.data import data_dir, load_labeled, load_pairs
    from core.edits import EditSession

    t0 = time.perf_counter()
    quiet = bool(args.json)
    if args.max_removals < 0 or args.max_additions < 0:
        raise ValueError("Budgets must be at least 0.")
    if args.max_additions and not args.add_pool:
        raise ValueError("--max-additions needs --add-pool, the labeled images to propose pairs from.")
    root = data_dir(required=True) if args.anchors is None or args.test is None else None
    anchors = Path(args.anchors) if args.anchors else Path(root) / "flickr8k"
    test = Path(args.test) if args.test else Path(root) / "cifar10" / "test"
    image_encoder = args.image_encoder or "efficientnet-lite0"
    text_encoder = args.text_encoder or "minilm"
    pairs = load_pairs(anchors)
    if args.limit_anchors:
        pairs = pairs.subset(range(min(args.limit_anchors, len(pairs))))
    if len(pairs) == 0:
        raise ValueError(f"No usable pairs in {anchors}.")
    labeled = load_labeled(test)
    if args.per_class:
        labeled = labeled.per_class(args.per_class)
    if len(labeled) == 0:
        raise ValueError(f"No usable labeled images in {test}.")
    tune = stratified_split(split_keys(labeled), labeled.labels, args.tune_fraction, args.seed,
                            class_names=labeled.class_names)
    k = args.k if args.k is not None else min(DEFAULT_K, len(pairs))
    p = args.p if args.p is not None else DEFAULT_P
    templates = args.template or list(DEFAULT_TEMPLATES)
    strategy = args.strategy or DEFAULT_TEMPLATE_STRATEGY
    img, txt = embed_pairs(pairs, image_encoder, text_encoder,
                           progress=_counts_progress("embedding anchors", quiet))
    q = embed_labeled(labeled, image_encoder, progress=_counts_progress("embedding labeled images", quiet))
    prompts, prompt_classes = build_prompts(labeled.class_names, templates)
    prompt_emb = embed_texts(text_encoder, prompts)
    model = AsifModel(img, txt, k=k, p=p, template_strategy=strategy,
                      metadata=[{"image": pairs.image_names[i], "caption": c}
                                for i, c in zip(pairs.pair_image.tolist(), pairs.captions)],
                      info={"image_encoder": image_encoder, "text_encoder": text_encoder})
    session = EditSession(model, q, labeled.labels, prompt_emb, prompt_classes,
                          class_names=labeled.class_names)
    test_mask = ~tune
    tune_before, test_before = session.accuracy_on(tune), session.accuracy_on(test_mask)
    t_ready = time.perf_counter()

    holdout = 0.3 if args.holdout_fraction is None else args.holdout_fraction
    report = auto_curate(session, tune, max_removals=args.max_removals, per_round=args.per_round,
                         holdout_fraction=holdout, seed=args.seed,
                         progress=_stderr_progress("auto-curate", quiet))
    after_removal = {"tune": session.accuracy_on(tune), "test": session.accuracy_on(test_mask)}
    added = 0
    plan_info = None
    if args.add_pool and args.max_additions:
        pool = load_labeled(args.add_pool)
        if list(pool.class_names) != list(labeled.class_names):
            raise ValueError("The pool's class folders must have the same names as the labeled set's.")
        if args.pool_per_class:
            pool = pool.per_class(args.pool_per_class)
        pool_emb = embed_labeled(pool, image_encoder, progress=_counts_progress("embedding the pool", quiet))
        captions = [class_caption(templates[0], c) for c in labeled.class_names]
        caption_emb = embed_texts(text_encoder, captions)
        plan = suggest_additions(session, pool_emb, pool.labels, caption_emb, captions, tune,
                                 args.max_additions, preview=False)
        if plan.suggestions:
            idx = np.asarray([s.pool_index for s in plan.suggestions])
            cls = np.asarray([s.class_index for s in plan.suggestions])
            session.add(pool_emb[idx], caption_emb[cls],
                        metadata=[{"image": os.path.relpath(pool.paths[i], pool.root), "caption": captions[c]}
                                  for i, c in zip(idx.tolist(), cls.tolist())])
            added = int(idx.size)
        plan_info = {"quota": plan.quota, "captions": captions, "pool": str(args.add_pool),
                     "n_pool": len(pool)}
    out = {
        "tune_before": tune_before, "tune_after": session.accuracy_on(tune),
        "test_before": test_before, "test_after": session.accuracy_on(test_mask),
        "after_removals": after_removal,
        "removed": int(report.removed.size), "added": added, "rounds": len(report.rounds),
        "stopped_because": report.stopped_because,
        "holdout_before": report.holdout_before, "holdout_after": report.holdout_after,
        "n_anchors_before": model.n_anchors, "n_anchors_after": session.n_anchors,
        "n_tune": int(tune.sum()), "n_test": int(test_mask.sum()),
        "settings": {"anchors": str(anchors), "test": str(test), "image_encoder": image_encoder,
                     "text_encoder": text_encoder, "k": k, "p": p, "templates": templates,
                     "strategy": strategy, "tune_fraction": args.tune_fraction, "seed": args.seed,
                     "split_key": "path relative to the labeled folder", "max_removals": args.max_removals,
                     "per_round": args.per_round, "holdout_fraction": holdout,
                     "max_additions": args.max_additions, "stopping_rule": STOP_RULE,
                     "limit_anchors": args.limit_anchors, "per_class": args.per_class},
        "additions": plan_info,
        "seconds": {"prepare": round(t_ready - t0, 2), "curate": round(time.perf_counter() - t_ready, 2)},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"tuning {out['tune_before']:.1%} -> {out['tune_after']:.1%}; "
              f"test (held out) {out['test_before']:.1%} -> {out['test_after']:.1%}; "
              f"removed {out['removed']} pairs in {out['rounds']} rounds ({report.stopped_because}), "
              f"added {added}")
    return 0
