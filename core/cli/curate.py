"""`python -m core asif curate …`: auto-curate an ASIF model on a tuning split, report the held-out test.

    python -m core asif curate --anchors <pairs> --test <labeled folder> --tune-fraction 0.5 --seed 0 \
        --max-removals 500 [--per-round 50] [--holdout-fraction 0.3] \
        [--add-pool <labeled folder> --max-additions 500] [--limit-anchors N] [--per-class N] --json

The labeled folder is split, stratified by class and seeded (:func:`core.curation.stratified_split`,
keyed by the reference the app stores for each image, :func:`split_keys`: the same split as the
app's), into a tuning part that
chooses and a test part that only scores. Pairs are pruned by :func:`core.curation.auto_curate`;
with ``--add-pool``, :func:`core.curation.suggest_additions` first proposes pool images captioned with
the class prompt and adds them, ``--per-round`` at a time (one edit per round) (then the pruning runs on top, as the benchmark's
"combined" recipe). ``--json`` prints one object with ``tune_before``,
``tune_after``, ``test_before``, ``test_after`` (fractions), ``removed``, ``added`` and the settings.
Defaults are the app's (encoders, k, p, templates, strategy; the demo Flickr8k pairs and CIFAR-10
test images).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


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
    """The split key of each labeled image, the reference the app stores for it (so the CLI and the
    app split alike): ``demo:<path relative to the data folder>`` inside the demo data folder
    (:mod:`core.demo`), the absolute path elsewhere (:func:`core.store.eval_items_from_labeled`)."""
    from core.data import data_dir

    root = data_dir(required=False)
    keys = []
    for path in labeled.paths:
        p = Path(path)
        if root is not None and p.is_relative_to(root):
            keys.append(f"demo:{p.relative_to(root).as_posix()}")
        else:
            keys.append(str(p.resolve()))
    return keys


def run_curate(args) -> int:
    from core.asif import (DEFAULT_K, DEFAULT_P, DEFAULT_TEMPLATE_STRATEGY, DEFAULT_TEMPLATES, AsifModel,
                           fill_template)
    from core.cache import default_cache
    from core.curation import STOP_RULE, add_suggested, auto_curate, stratified_split
    from core.data import data_dir, load_labeled, load_pairs
    from core.edits import EditSession
    from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed, embed_prompts

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
    stratified_split(split_keys(labeled), labeled.labels, args.tune_fraction, args.seed,
                     class_names=labeled.class_names)  # a class too small to split fails before embedding
    k = args.k if args.k is not None else min(DEFAULT_K, len(pairs))
    p = args.p if args.p is not None else DEFAULT_P
    templates = args.template or list(DEFAULT_TEMPLATES)
    strategy = args.strategy or DEFAULT_TEMPLATE_STRATEGY
    cache = default_cache()
    emb = EmbeddedPairs.from_pairset(pairs, image_encoder, text_encoder, cache=cache,
                                     progress=_counts_progress("embedding anchors", quiet))
    lab = EmbeddedLabeled.from_labeled(labeled, image_encoder, cache=cache,
                                       progress=_counts_progress("embedding labeled images", quiet))
    if len(emb) == 0 or len(lab) == 0:
        raise ValueError("No anchor pair or no labeled image could be embedded.")
    tune = stratified_split(split_keys(lab), lab.labels, args.tune_fraction, args.seed,
                            class_names=lab.class_names)
    prompt_emb, prompt_classes = embed_prompts(lab.class_names, templates, text_encoder, cache=cache)
    name_of = dict(zip(pairs.images, pairs.image_names))
    model = AsifModel(emb.pair_image_vectors, emb.text_vectors, k=k, p=p, template_strategy=strategy,
                      metadata=[{"image": name_of[path], "caption": c}
                                for path, c in zip(emb.pair_paths, emb.captions)],
                      info={"image_encoder": image_encoder, "text_encoder": text_encoder})
    session = EditSession(model, lab.vectors, lab.labels, prompt_emb, prompt_classes,
                          class_names=lab.class_names)
    test_mask = ~tune
    tune_before, test_before = session.accuracy_on(tune), session.accuracy_on(test_mask)
    t_ready = time.perf_counter()

    added = 0
    plan_info = None
    if args.add_pool and args.max_additions:
        pool = load_labeled(args.add_pool)
        if list(pool.class_names) != list(lab.class_names):
            raise ValueError("The pool's class folders must have the same names as the labeled set's.")
        if args.pool_per_class:
            pool = pool.per_class(args.pool_per_class)
        pool = EmbeddedLabeled.from_labeled(pool, image_encoder, cache=cache,
                                            progress=_counts_progress("embedding the pool", quiet))
        pool_emb = pool.vectors
        captions = [fill_template(templates[0], c) for c in lab.class_names]
        caption_emb = embed(text_encoder, captions, cache=cache).vectors
        done = add_suggested(session, pool_emb, pool.labels, caption_emb, captions, tune, args.max_additions,
                             per_round=args.per_round, progress=_stderr_progress("additions", quiet))
        added = len(done)
        quota: dict[str, int] = {}
        for s in done:
            quota[s.class_name] = quota.get(s.class_name, 0) + 1
        plan_info = {"per_class": quota, "captions": captions, "pool": str(args.add_pool),
                     "n_pool": len(pool)}
    after_additions = {"tune": session.accuracy_on(tune), "test": session.accuracy_on(test_mask)}
    holdout = 0.3 if args.holdout_fraction is None else args.holdout_fraction
    report = auto_curate(session, tune, max_removals=args.max_removals, per_round=args.per_round,
                         holdout_fraction=holdout, seed=args.seed,
                         progress=_stderr_progress("auto-curate", quiet))
    out = {
        "tune_before": tune_before, "tune_after": session.accuracy_on(tune),
        "test_before": test_before, "test_after": session.accuracy_on(test_mask),
        "after_additions": after_additions,
        "removed": int(report.removed.size), "added": added, "rounds": len(report.rounds),
        "stopped_because": report.stopped_because,
        "holdout_before": report.holdout_before, "holdout_after": report.holdout_after,
        "n_anchors_before": model.n_anchors, "n_anchors_after": session.n_anchors,
        "n_tune": int(tune.sum()), "n_test": int(test_mask.sum()),
        "settings": {"anchors": str(anchors), "test": str(test), "image_encoder": image_encoder,
                     "text_encoder": text_encoder, "k": k, "p": p, "templates": templates,
                     "strategy": strategy, "tune_fraction": args.tune_fraction, "seed": args.seed,
                     "split_key": "the app's image reference (demo:<relative path> or absolute path)", "max_removals": args.max_removals,
                     "per_round": args.per_round, "holdout_fraction": holdout,
                     "max_additions": args.max_additions, "stopping_rule": STOP_RULE,
                     "tolerance": report.settings["tolerance"],
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
