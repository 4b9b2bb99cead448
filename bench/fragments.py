"""Interactions inside a page panel, in a real browser: what an ``@st.fragment`` saves (or costs).

On a small demo (default 300 Flickr8k photos = 1,500 pairs, 20 CIFAR-10 test pictures per class),
median and p90 (ms) until the page is settled (``bench.browser``'s idle check) of:

* ``classify_figure_switch``  Classify & explain: switch between the two figures (a fragment)
* ``align_queries_change``    Align: type a new number of queries (inside the matching fragment)

Each app runs on its own server and workspaces folder, one after the other; ``--baseline-root`` names
a checkout from before a change (e.g. ``git worktree add /tmp/base main``). The second app measured
meets the load the first left behind, so ``--swap`` measures this checkout first: run both orders.

    .venv/bin/python -m bench.fragments --baseline-root /tmp/base [--swap] [--reps 8]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.browser import ROOT, H, settle, visit

FIGURES = ("Similarity histograms", "Pairs map")


def _timed(page, out: dict, key: str, action) -> None:
    t = time.perf_counter()
    action()
    out.setdefault(key, []).append((settle(page) - t) * 1000)   # settle returns when the idle spell began


def measure(app_root: Path, images: int, per_class: int, reps: int) -> dict[str, list[float]]:
    """Start the app in ``app_root`` on a fresh workspaces folder and time the two interactions."""
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="rosetta-bench-") as tmp:
        port = H.free_port()
        proc = H.start_server(port, Path(tmp) / "ws", Path(tmp) / "server.log", app_root=app_root,
                              images=images, per_class=per_class)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=H.CHROMIUM, args=H.CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1440, "height": 1400})
                page.set_default_timeout(120_000)
                page.goto(f"http://127.0.0.1:{port}")
                page.get_by_text("It's a", exact=False).first.wait_for(timeout=1_800_000)
                settle(page)
                for i in range(reps):
                    button = page.locator("[data-testid=stButtonGroup] button", has_text=FIGURES[i % 2]).first
                    _timed(page, out, "classify_figure_switch", button.click)
                visit(page, "Align")
                page.get_by_text("Linear CKA").first.wait_for(timeout=600_000)
                settle(page)
                box = page.get_by_label("Queries")
                for i in range(reps):
                    _timed(page, out, "align_queries_change", lambda: (box.fill(str(100 + i)), box.press("Enter")))
                browser.close()
        finally:
            H.stop_server(proc)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--baseline-root", type=Path, required=True, help="a checkout from before the change")
    ap.add_argument("--swap", action="store_true", help="measure this checkout first")
    args = ap.parse_args(argv)
    print(f"sizes: {5 * args.images:,} pairs, {args.per_class} test pictures per class, {args.reps} "
          f"repetitions; load: {os.getloadavg()[0]:.1f}")
    order = [("baseline", args.baseline_root), ("this code", ROOT)]
    runs = {label: measure(root.resolve(), args.images, args.per_class, args.reps)
            for label, root in (order[::-1] if args.swap else order)}
    print(f"load after: {os.getloadavg()[0]:.1f}")
    for key in runs["baseline"]:
        b, t = (np.median(runs[label][key]) for label in ("baseline", "this code"))
        p90 = {label: np.percentile(runs[label][key], 90) for label in runs}
        print(f"{key:26} baseline {b:6,.0f} (p90 {p90['baseline']:,.0f})  this code {t:6,.0f} "
              f"(p90 {p90['this code']:,.0f})  baseline ÷ this code {b / t:.2f}")
    return runs


if __name__ == "__main__":
    main()
