"""Benchmark: does curation chosen on a tuning split raise accuracy on a held-out test split?

    .venv/bin/python -m bench.curation                        # the demo, 3 seeds (docs/RESULTS.md)
    .venv/bin/python -m bench.curation --limit-anchors 5000 --seeds 0   # a quick look

The demo: all Flickr8k pairs (35,000) as anchors; the demo's CIFAR-10 test images (100 per class,
``--per-class``) split 50 / 50 per seed by :func:`core.curation.stratified_split` into tuning and
test; the app's defaults (efficientnet-lite0 × minilm, k=800, p=8, 8 templates, mean strategy). Each
recipe starts from the unedited model (a fresh session) and records tuning and test
accuracy after every edit:

* ``greedy`` (named baseline): plain greedy loop, influence on the whole tuning half, the top
  ``--per-round`` pairs with positive gain removed per round, no stopping rule;
* ``influence``: :func:`core.curation.auto_curate` (held-back stop slice of the tuning half);
* ``suspicious``: label-free — the highest :func:`core.matching.suspicious_pair_scores` removed,
  ``--per-round`` at a time (the same removal budget);
* ``additions``: :func:`core.curation.suggest_additions` from CIFAR-10 train (500 per class),
  ``--per-round`` at a time, re-suggested after every round;
* ``combined``: the additions, then ``influence`` on top (≤ removals + additions edits).

Nothing that chooses reads the test labels. Incremental == full recompute is asserted at the end of
every recipe. Writes ``docs/curation_bench.json`` and ``docs/curation_curves.svg`` (hand-written
SVG: no plotting package with static export works offline here).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.asif_common import machine  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
RECIPES = ("greedy", "influence", "suspicious", "additions", "combined")


def load_demo(limit_anchors: int | None, per_class: int, pool_per_class: int | None,
              image_encoder: str, text_encoder: str):
    """Anchors, labeled set, pool and prompt/caption embeddings, through the embedding cache."""
    from core.asif import DEFAULT_TEMPLATES, fill_template
    from core.cache import default_cache
    from core.data import data_dir, load_labeled, load_pairs_folder
    from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed, embed_prompts

    cache = default_cache()
    root = data_dir(required=True)
    pairs = load_pairs_folder(root / "flickr8k")
    if limit_anchors:
        pairs = pairs.subset(range(min(limit_anchors, len(pairs))))
    anchors = EmbeddedPairs.from_pairset(pairs, image_encoder, text_encoder, cache=cache)
    labeled = EmbeddedLabeled.from_labeled(load_labeled(root / "cifar10" / "test", limit_per_class=per_class),
                                           image_encoder, cache=cache)
    pool = EmbeddedLabeled.from_labeled(load_labeled(root / "cifar10" / "train", limit_per_class=pool_per_class),
                                        image_encoder, cache=cache)
    templates = list(DEFAULT_TEMPLATES)
    prompt_emb, pc = embed_prompts(labeled.class_names, templates, text_encoder, cache=cache)
    captions = [fill_template(templates[0], c) for c in labeled.class_names]
    return dict(img=anchors.pair_image_vectors, txt=anchors.text_vectors, labeled=labeled, q=labeled.vectors,
                pool=pool, pool_emb=pool.vectors, prompt_emb=prompt_emb, prompt_classes=pc,
                captions=captions, caption_emb=embed(text_encoder, captions, cache=cache).vectors,
                templates=templates)


class Recorder:
    """Tuning / test accuracy after every edit of one recipe (edits counted in pairs)."""

    def __init__(self, session, tune):
        self.s, self.tune = session, tune
        self.curve = [(0, session.accuracy_on(tune), session.accuracy_on(~tune))]
        self.n = 0

    def remove(self, ids):
        r = self.s.remove(ids)
        self._note(len(ids))
        return r

    def add(self, img, txt):
        r = self.s.add(img, txt)
        self._note(img.shape[0])
        return r

    def _note(self, n):
        self.n += n
        self.curve.append((self.n, self.s.accuracy_on(self.tune), self.s.accuracy_on(~self.tune)))


def greedy(session, tune, budget, per_round, rec):
    """The named baseline: influence on the whole tuning half, top positive pairs, no stopping rule."""
    while rec.n < budget:
        inf = session.influence(eval_mask=tune)
        order = inf.order_most_harmful()
        order = order[np.nan_to_num(inf.loo_delta[order]) > 0][:min(per_round, budget - rec.n)]
        if order.size == 0:
            break
        rec.remove(inf.pair_ids[order])


def add_rounds(session, data, tune, budget, per_round, rec):
    from core.curation import add_suggested

    def apply(sugg):
        idx = np.asarray([x.pool_index for x in sugg])
        cls = np.asarray([x.class_index for x in sugg])
        return rec.add(data["pool_emb"][idx], data["caption_emb"][cls])

    add_suggested(session, data["pool_emb"], data["pool"].labels, data["caption_emb"], data["captions"],
                  tune, budget, per_round=per_round, apply_add=apply)


def run_seed(data, seed, args, suspicious_order, log):
    from core.asif import AsifModel
    from core.cli.curate import split_keys
    from core.curation import auto_curate, stratified_split
    from core.edits import EditSession

    lab = data["labeled"]
    tune = stratified_split(split_keys(lab), lab.labels, 0.5, seed)
    model = AsifModel(data["img"], data["txt"], k=min(args.k, len(data["img"])), p=args.p)
    t = time.perf_counter()
    s = EditSession(model, data["q"], lab.labels, data["prompt_emb"], data["prompt_classes"],
                    class_names=lab.class_names)
    log(f"seed {seed}: session {time.perf_counter() - t:.1f}s, tune {s.accuracy_on(tune):.3f} "
        f"test {s.accuracy_on(~tune):.3f}")
    neighbours = s.neighbour_state()
    out = {}
    for recipe in args.recipes:
        t = time.perf_counter()
        # a fresh session per recipe (from the saved neighbour lists: no search)
        s = EditSession(model, data["q"], lab.labels, data["prompt_emb"], data["prompt_classes"],
                        class_names=lab.class_names, neighbours=neighbours)
        rec = Recorder(s, tune)
        info = {}
        if recipe == "greedy":
            greedy(s, tune, args.max_removals, args.per_round, rec)
        elif recipe == "influence":
            rep = auto_curate(s, tune, max_removals=args.max_removals, per_round=args.per_round,
                              holdout_fraction=args.holdout_fraction, seed=seed, tolerance=args.tolerance,
                              apply_remove=rec.remove)
            info = {"stopped_because": rep.stopped_because, "rounds": len(rep.rounds)}
        elif recipe == "suspicious":
            ids = model.pair_ids[suspicious_order[:args.max_removals]]
            for i in range(0, ids.size, args.per_round):
                rec.remove(ids[i:i + args.per_round])
        elif recipe == "additions":
            add_rounds(s, data, tune, args.max_additions, args.per_round, rec)
        elif recipe == "combined":
            add_rounds(s, data, tune, args.max_additions, args.per_round, rec)
            rep = auto_curate(s, tune, max_removals=args.max_removals, per_round=args.per_round,
                              holdout_fraction=args.holdout_fraction, seed=seed, tolerance=args.tolerance,
                              apply_remove=rec.remove)
            info = {"stopped_because": rep.stopped_because, "rounds": len(rep.rounds)}
        assert np.array_equal(s.predictions, s.full_recompute()), "incremental != full recompute"
        out[recipe] = {"curve": rec.curve, "edits": rec.n, "seconds": round(time.perf_counter() - t, 1), **info}
        log(f"seed {seed} {recipe}: {rec.n} edits, tune {rec.curve[0][1]:.3f}->{rec.curve[-1][1]:.3f} "
            f"test {rec.curve[0][2]:.3f}->{rec.curve[-1][2]:.3f} ({out[recipe]['seconds']}s) {info}")
    return out


# ------------------------------------------------------------------------------- plot

COLOURS = {"greedy": "#7f7f7f", "influence": "#1f77b4", "suspicious": "#ff7f0e",
           "additions": "#2ca02c", "combined": "#d62728"}


def svg_curves(mean_curves: dict[str, dict[str, list]], title: str) -> str:
    """Two panels (tuning, test): accuracy against edits, one line per recipe (seed means)."""
    W, H, L, R, T, B, gap = 880, 360, 56, 130, 40, 44, 60
    pw = (W - L - R - gap) / 2
    ph = H - T - B
    xs_all = [x for c in mean_curves.values() for x in c["x"]]
    ys_all = [y for c in mean_curves.values() for part in ("tune", "test") for y in c[part]]
    x1 = max(xs_all) or 1
    y0, y1 = np.floor(min(ys_all) * 20) / 20, np.ceil(max(ys_all) * 20) / 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']
    for k, part in enumerate(("tune", "test")):
        ox = L + k * (pw + gap)

        def px(x, y):
            return ox + x / x1 * pw, T + (1 - (y - y0) / (y1 - y0)) * ph
        out.append(f'<rect x="{ox}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        name = "tuning half (chooses)" if part == "tune" else "test half (held out)"
        out.append(f'<text x="{ox + pw / 2}" y="{T - 6}" text-anchor="middle">{name}</text>')
        for y in np.arange(y0, y1 + 1e-9, 0.05):
            _, yy = px(0, y)
            out.append(f'<line x1="{ox}" x2="{ox + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{ox - 4}" y="{yy + 4:.1f}" text-anchor="end">{y:.0%}</text>')
        step = 250 if x1 > 600 else 100 if x1 > 200 else 20
        for x in range(0, int(x1) + 1, step):
            xx, _ = px(x, y0)
            out.append(f'<text x="{xx:.1f}" y="{T + ph + 16}" text-anchor="middle">{x}</text>')
        out.append(f'<text x="{ox + pw / 2}" y="{H - 8}" text-anchor="middle">edits (pairs removed or added)</text>')
        for recipe, c in mean_curves.items():
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in zip(c["x"], c[part])))
            dash = ' stroke-dasharray="5,3"' if recipe in ("greedy", "combined") else ""
            out.append(f'<polyline points="{pts}" fill="none" stroke="{COLOURS[recipe]}" stroke-width="2"{dash}/>')
    for i, recipe in enumerate(mean_curves):
        y = T + 14 + 18 * i
        out.append(f'<line x1="{W - R + 10}" x2="{W - R + 30}" y1="{y}" y2="{y}" stroke="{COLOURS[recipe]}" '
                   f'stroke-width="2"/><text x="{W - R + 34}" y="{y + 4}">{recipe}</text>')
    out.append("</svg>")
    return "\n".join(out)


def mean_curve(curves: list[list[tuple]]) -> dict[str, list]:
    """Seed mean at each edit count every seed reached (curves are step functions of edits)."""
    xs = sorted({x for c in curves for x, _, _ in c})
    res = {"x": [], "tune": [], "test": []}
    for x in xs:
        tu, te = [], []
        for c in curves:
            before = [(a, b, d) for a, b, d in c if a <= x]
            _, b, d = before[-1]
            tu.append(b)
            te.append(d)
        res["x"].append(x)
        res["tune"].append(float(np.mean(tu)))
        res["test"].append(float(np.mean(te)))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--limit-anchors", type=int, default=None, help="first N Flickr8k pairs (default all)")
    ap.add_argument("--per-class", type=int, default=100, help="CIFAR-10 test images per class (demo: 100)")
    ap.add_argument("--pool-per-class", type=int, default=None, help="CIFAR-10 train images per class (all 500)")
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--p", type=float, default=8.0)
    ap.add_argument("--max-removals", type=int, default=500)
    ap.add_argument("--max-additions", type=int, default=500)
    ap.add_argument("--per-round", type=int, default=50)
    ap.add_argument("--holdout-fraction", type=float, default=0.3)
    ap.add_argument("--tolerance", type=float, default=None,
                    help="auto-curate's held-back tolerance (default: one standard error; 0 = strict)")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    ap.add_argument("--out", default=str(DOCS / "curation_bench.json"))
    ap.add_argument("--plot", default=str(DOCS / "curation_curves.svg"))
    ap.add_argument("--combine", nargs="+", default=None,
                    help="summarise and plot earlier runs' JSON files (e.g. one seed each, run side by side)")
    args = ap.parse_args(argv)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.combine:
        runs = [json.loads(Path(f).read_text()) for f in args.combine]
        per_seed = {int(sd): {r: {**d, "curve": [tuple(x) for x in d["curve"]]} for r, d in recs.items()}
                    for run in runs for sd, recs in run["per_seed"].items()}
        args.seeds = sorted(per_seed)
        args.recipes = [r for r in RECIPES if all(r in per_seed[sd] for sd in args.seeds)]
        info = {"machine": runs[0]["machine"], "combined_from": list(args.combine),
                "load_avg_start": [r["load_avg_start"] for r in runs], "run_args": runs[0]["args"]}
        sizes = {k: runs[0][k] for k in ("n_anchors", "n_labeled", "n_pool")}
        t0 = time.perf_counter()
    else:
        info = {"machine": machine(), "load_avg_start": os.getloadavg()}
        t0 = time.perf_counter()
        data = load_demo(args.limit_anchors, args.per_class, args.pool_per_class, "efficientnet-lite0", "minilm")
        sizes = {"n_anchors": len(data["img"]), "n_labeled": len(data["labeled"]), "n_pool": len(data["pool"])}
        log(f"loaded {sizes['n_anchors']} anchors, {sizes['n_labeled']} labeled, {sizes['n_pool']} pool "
            f"in {time.perf_counter() - t0:.0f}s")
        suspicious_order = None
        if "suspicious" in args.recipes:
            from core.matching import suspicious_pair_scores

            t = time.perf_counter()
            score = suspicious_pair_scores(data["img"], data["txt"], seed=0)
            suspicious_order = np.argsort(-score, kind="stable")
            info["suspicious_s"] = round(time.perf_counter() - t, 1)
            log(f"suspicious scores in {info['suspicious_s']}s")
        per_seed = {seed: run_seed(data, seed, args, suspicious_order, log) for seed in args.seeds}
    summary = {}
    for recipe in args.recipes:
        rows = [per_seed[s][recipe] for s in args.seeds]
        first = [r["curve"][0] for r in rows]
        last = [r["curve"][-1] for r in rows]
        summary[recipe] = {
            "edits_mean": float(np.mean([r["edits"] for r in rows])),
            "tune_before": float(np.mean([f[1] for f in first])), "tune_after": float(np.mean([x[1] for x in last])),
            "test_before": float(np.mean([f[2] for f in first])), "test_after": float(np.mean([x[2] for x in last])),
            "test_gain_points_per_seed": [round(100 * (x[2] - f[2]), 2) for f, x in zip(first, last)],
            "seconds_mean": float(np.mean([r["seconds"] for r in rows])),
        }
        summary[recipe]["test_gain_points"] = 100 * (summary[recipe]["test_after"] - summary[recipe]["test_before"])
    if "greedy" in summary and "influence" in summary and summary["greedy"]["test_gain_points"]:
        info["influence_vs_greedy_test_gain_ratio"] = (summary["influence"]["test_gain_points"]
                                                       / summary["greedy"]["test_gain_points"])
    info.update(**sizes, args=vars(args), summary=summary, load_avg_end=os.getloadavg(),
                total_s=round(time.perf_counter() - t0, 1),
                per_seed={str(s): {r: {k: v for k, v in d.items()} for r, d in per_seed[s].items()}
                          for s in args.seeds})
    Path(args.out).write_text(json.dumps(info, indent=1))
    curves = {r: mean_curve([per_seed[s][r]["curve"] for s in args.seeds]) for r in args.recipes}
    Path(args.plot).write_text(svg_curves(
        curves, f"Curation on {sizes['n_anchors']:,} anchors, CIFAR-10 {sizes['n_labeled']:,} images split "
                f"50/50, mean of {len(args.seeds)} seed(s)"))
    for recipe, r in summary.items():
        print(f"{recipe:>10s}: {r['edits_mean']:6.0f} edits  tune {r['tune_before']:.3f}->{r['tune_after']:.3f}  "
              f"test {r['test_before']:.3f}->{r['test_after']:.3f} ({r['test_gain_points']:+.1f} pts)  "
              f"{r['seconds_mean']:.0f}s")
    if "influence_vs_greedy_test_gain_ratio" in info:
        print(f"influence / greedy test gain: {info['influence_vs_greedy_test_gain_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
