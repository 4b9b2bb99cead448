"""Dashboard timings: cached demo -> interactive, and one removal -> new accuracy.

Usage::

    .venv/bin/python bench/dashboard.py [--images N] [--per-class M] [--repeats R] [--browser] [--json]

What is measured (each against a named baseline, in the same run):

* ``open_s``: a fresh process opens a demo workspace whose embeddings are cached: read the workspace,
  look every vector up in the embedding cache (``core.live.WorkspaceVectors``) and build the
  incremental engine (``core.live.LiveModel``) — what the app does before the first page can be used.
  ``--browser`` also times the real thing: ``streamlit run app.py`` started -> the Classify page shows
  its explanation in headless Chromium.
* ``remove_ms``: removing one pair through the app's one edit path (a SQLite transaction around the
  incremental re-score of both the tuning and the test part), median over ``--repeats`` random pairs
  (each undone afterwards). Baseline: ``full_recompute_ms``, re-classifying every labeled picture
  from scratch over the same live pairs (``EditSession.full_recompute``), as an app without the
  incremental engine would.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _browser_open_s(ws_path: Path) -> dict | None:
    """Seconds from `streamlit run` to the Classify page's prediction in headless Chromium, for a
    copy of the (cached) bench workspace."""
    if not os.path.exists("/usr/bin/chromium"):
        return None
    import shutil

    sys.path.insert(0, str(ROOT / "tests"))
    import app_helpers as H
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(ws_path, tmp / "ws" / "demo")
        port = H.free_port()
        t0 = time.perf_counter()
        proc = H.start_server(port, tmp / "ws", tmp / "server.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=H.CHROMIUM, args=H.CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"http://127.0.0.1:{port}")
                expect(page.get_by_text("It's a", exact=False).first).to_be_visible(timeout=600_000)
                elapsed = time.perf_counter() - t0
                # a second visitor on the running server (model shared via st.cache_resource)
                t1 = time.perf_counter()
                page2 = browser.new_page(viewport={"width": 1400, "height": 1600})
                page2.goto(f"http://127.0.0.1:{port}")
                expect(page2.get_by_text("It's a", exact=False).first).to_be_visible(timeout=600_000)
                again = time.perf_counter() - t1
                browser.close()
        finally:
            H.stop_server(proc)
    return {"server_start_to_prediction_s": round(elapsed, 2), "new_session_to_prediction_s": round(again, 2)}


def _open(ws_path: str) -> dict:
    """Open a workspace as the app does: import, vectors from the cache, the engine."""
    t0 = time.perf_counter()
    from core import store
    from core.cache import EmbeddingCache
    from core.live import LiveModel, WorkspaceVectors

    ws = store.Workspace(ws_path)
    t1 = time.perf_counter()
    vectors = WorkspaceVectors(ws, EmbeddingCache())
    t2 = time.perf_counter()
    live = LiveModel(ws, vectors)
    t3 = time.perf_counter()
    return {"import_s": round(t1 - t0, 3), "vectors_s": round(t2 - t1, 3), "engine_s": round(t3 - t2, 3),
            "open_s": round(t3 - t0, 3), "metrics": live.metrics().to_dict()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=7000, help="Flickr8k photos (x5 captions)")
    ap.add_argument("--per-class", type=int, default=1000, help="CIFAR-10 test pictures per class")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--open-only", metavar="WORKSPACE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.open_only:
        print(json.dumps(_open(args.open_only)))
        return 0

    import subprocess

    import numpy as np

    from core import demo, store
    from core.cache import EmbeddingCache, cache_root
    from core.live import LiveModel, WorkspaceVectors

    out: dict = {"images": args.images, "per_class": args.per_class}
    root = cache_root() / "bench-workspaces"
    name = f"demo-{args.images}-{args.per_class}-k{args.k or 'default'}"
    try:
        ws = store.open_workspace(name, root=root)
    except ValueError:
        ws = demo.create_demo_workspace(name, args.images, args.per_class, root=root)
        if args.k:
            ws.update_settings(k=args.k)
    # first open in this process: fills the embedding cache (if needed) and the engine snapshot
    t0 = time.perf_counter()
    vectors = WorkspaceVectors(ws, EmbeddingCache())
    live = LiveModel(ws, vectors)
    out["first_open_s"] = round(time.perf_counter() - t0, 3)
    m = live.metrics()
    out.update(n_pairs=len(vectors.pair_ids), n_images=len(vectors.img_refs), n_labeled=len(vectors.items),
               k=live.k, p=vectors.p, tune=m.tune, test=m.test)
    # the cached open, in a fresh process (what a restarted app does)
    cmd = [sys.executable, __file__, "--open-only", str(ws.path)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    cached = json.loads(res.stdout.strip().splitlines()[-1])
    out.update({f"cached_{k}": v for k, v in cached.items() if k != "metrics"})
    assert cached["metrics"] == m.to_dict(), "a restored engine disagrees"

    rng = np.random.default_rng(0)
    ids = rng.choice(sorted(live.active_ids()), size=args.repeats, replace=False)
    app_ms, recompute_ms, changed = [], [], 0
    for pid in ids.tolist():
        t = time.perf_counter()
        r = live.remove([pid])
        app_ms.append((time.perf_counter() - t) * 1000)
        changed += r.after != r.before
        t = time.perf_counter()
        full = live.session.full_recompute()
        recompute_ms.append((time.perf_counter() - t) * 1000)
        assert np.array_equal(full, live.session.predictions), "incremental != full recompute"
        live.undo()
    med = statistics.median
    out.update(remove_ms=round(med(app_ms), 2), remove_ms_max=round(max(app_ms), 2),
               full_recompute_ms=round(med(recompute_ms), 1), speedup=round(med(recompute_ms) / med(app_ms), 1),
               removals_changing_a_number=changed, repeats=args.repeats)
    if args.browser:
        out.update(_browser_open_s(ws.path) or {})
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:28s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
