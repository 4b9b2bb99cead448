"""Interaction latency of the dashboard in a real browser (Playwright + Debian chromium, headless).

On the demo (default: all 7,000 Flickr8k photos = 35,000 pairs, 100 CIFAR-10 test pictures per class),
``--reps`` times each, median and p90 (ms) of:

* ``classify_remove_visible``  Classify & explain: click a pair's Remove → the headline shows the new
  numbers (its anchor-pair count drops by one: the accuracies sit in the same row, drawn together)
* ``classify_remove_settled``  … → the page is settled (no run in progress: Streamlit's status widget
  gone and no element left stale; the widget shows only after 500 ms of a run, so the stale elements
  decide before that), timed at the start of an idle spell that still holds 100 ms later
* ``curate_whatif_row``        Curate: click the influence table's first row → the "What if" preview
  shown (the row's selection cell, clicked by position: the grid is a canvas; the table is fresh)
* ``curate_remove_visible`` / ``curate_remove_settled``  Curate: click "Remove 1 pair" → as above
* ``curate_whatif``            … then at once pick a pair in "Selected pairs" (dropdown opened, option
  clicked) → the "What if" preview shown: the table is still being re-measured meanwhile
* ``curate_table_fresh``       from the Remove click until the influence table describes the new
  anchor set (its "Updating the influence numbers" note gone) and the page is settled
* ``visit_<page>``             click a page in the navigation → its title shown and the page settled

Every "shown" is checked on each animation frame (``wait_for_function(polling="raf")``), never with a
locator's ``wait_for``: Playwright polls those at 0, 20, 70, 170, 270 ms, then every 500 ms, which
made anything shown 270-770 ms after a click read as ~800-1,000 ms.

Each app runs on its own server and workspaces folder; ``--baseline-root`` names a checkout of the
code before a change (e.g. ``git worktree add /tmp/base main``), and the two take turns rep by rep
(baseline, this code, baseline, …) so that both see the same load on a shared machine; the table
prints both and their ratio. The targets are issue #16's.

    .venv/bin/python -m bench.browser                                  # full demo, 20 repetitions
    .venv/bin/python -m bench.browser --images 300 --per-class 20 --reps 10 --baseline-root /tmp/base
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import app_helpers as H  # noqa: E402  (the tests' server and browser helpers)

PAGES = ["Classify & explain", "Curate", "Data", "Settings", "Workspaces", "Align", "Invert"]
TARGETS_MS = {"classify_remove_visible": 500, "classify_remove_settled": 1500, "curate_whatif_row": 500,
              "curate_remove_visible": 500, "curate_remove_settled": 1500, "curate_whatif": 500,
              "curate_table_fresh": None,
              **{f"visit_{p}": 2000 for p in PAGES}}

#: True when no script run is in progress: no status widget ("Running…") and no stale element.
IDLE_JS = """() => !document.querySelector('[data-testid="stStatusWidget"]')
                  && !document.querySelector('[data-stale="true"]')"""
#: The value of the headline's "Anchor pairs" metric, as an integer (null when absent).
PAIRS_JS = """() => { for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
    if (m.innerText.includes('Anchor pairs')) {
        const v = m.querySelector('[data-testid="stMetricValue"]');
        return v ? parseInt(v.innerText.replace(/[^0-9]/g, '')) : null; } }
    return null; }"""


#: True when Curate's "What if" preview is on the page.
WHAT_IF_JS = """() => document.body.textContent.includes('What if')"""

#: True when the Curate influence table describes the current anchor set (no "Updating…" note).
FRESH_JS = """() => !document.body.textContent.includes('Updating the influence numbers')"""


def shown(page, js: str, timeout_ms: float = 120_000) -> float:
    """Wait until ``js`` (a JS function) is true, checked on every animation frame; returns
    ``time.perf_counter()`` then. (Not a locator's ``wait_for``: Playwright polls those at 0, 20, 70,
    170, 270 ms and then only every 500 ms, which turned anything shown 270-770 ms after the click
    into ~800-1,000 ms: the "bimodal" row click.)"""
    page.wait_for_function(js, timeout=timeout_ms, polling="raf")
    return time.perf_counter()


def settle(page, timeout_ms: float = 120_000) -> float:
    """Wait until the page is idle and still idle 100 ms later; returns ``time.perf_counter()`` at the
    start of that idle spell (the 100 ms of checking are not the page's time)."""
    while True:
        t = shown(page, IDLE_JS, timeout_ms)
        page.wait_for_timeout(100)
        if page.evaluate(IDLE_JS):
            return t


def _pairs(page) -> int | None:
    return page.evaluate(PAIRS_JS)


def visit(page, name: str) -> float:
    """Click ``name`` in the navigation; returns the ms until its title is shown and the page settled."""
    t = time.perf_counter()
    page.get_by_role("link", name=name, exact=True).click()
    shown(page, f"() => [...document.querySelectorAll('h1')].some(h => h.textContent.includes({json.dumps(name)}))")
    return (settle(page) - t) * 1000


def _click_first_row(page) -> None:
    """Click the first row of Curate's influence table (its row-selection cell: the grid is a canvas)."""
    box = page.locator('[data-testid="stDataFrame"]').first.bounding_box()
    page.mouse.click(box["x"] + 12, box["y"] + ROW_Y)


#: the first row's middle, in pixels below the top of the table (a 35 px header, 56 px rows)
ROW_Y = 35 + 28


def _pick_first(page) -> None:
    """Pick the first pair in Curate's "Selected pairs" box (dropdown opened, option clicked)."""
    page.locator('[data-testid="stMultiSelect"]').first.locator("input").click()
    shown(page, "() => !!document.querySelector('[role=\"option\"]')")  # not a locator's 500 ms polls
    page.get_by_role("option", name=re.compile(r"^#\d+")).first.click()
    page.keyboard.press("Escape")


def _open_curate(page) -> None:
    """Visit Curate and wait until its influence table is there and fresh."""
    visit(page, "Curate")
    page.get_by_text("Selected pairs", exact=False).first.wait_for(timeout=600_000)
    page.wait_for_function(FRESH_JS, polling=200, timeout=600_000)
    settle(page)


def _curate_once(page, out: dict) -> None:
    """Curate, on a settled page with a fresh influence table: click the first row → what-if shown;
    Remove it → new numbers visible → settled; at once pick a pair in the box (while the table is
    re-measured, as a curator going on would) → what-if shown; unpick it; → table refreshed."""
    n = _pairs(page)
    what_if = page.get_by_text("What if", exact=False).first
    t = time.perf_counter()
    _click_first_row(page)
    out.setdefault("curate_whatif_row", []).append((shown(page, WHAT_IF_JS) - t) * 1000)
    settle(page)
    t_remove = time.perf_counter()
    page.get_by_role("button", name="Remove 1 pair").click()
    t = shown(page, f"() => ({PAIRS_JS})() === {n - 1}", 30_000)
    out.setdefault("curate_remove_visible", []).append((t - t_remove) * 1000)
    out.setdefault("curate_remove_settled", []).append((settle(page) - t_remove) * 1000)
    t = time.perf_counter()
    _pick_first(page)
    out.setdefault("curate_whatif", []).append((shown(page, WHAT_IF_JS) - t) * 1000)
    settle(page)
    page.locator('[data-testid="stMultiSelect"]').first.locator("input").click()
    page.keyboard.press("Backspace")  # unpick it: the next row click starts from no selection
    page.keyboard.press("Escape")
    what_if.wait_for(state="detached")
    page.wait_for_function(FRESH_JS, polling=200, timeout=120_000)
    settle(page)
    out.setdefault("curate_table_fresh", []).append((time.perf_counter() - t_remove) * 1000)
    page.get_by_text("Selected pairs", exact=False).first.wait_for(timeout=600_000)


def _ready(page, url: str, images: int, log, label: str) -> None:
    """Open the app and wait until its model holds all ``5 * images`` pairs (a quick start grows)."""
    t0 = time.time()
    page.goto(url)
    page.get_by_text("It's a", exact=False).first.wait_for(timeout=1_800_000)
    while (_pairs(page) or 0) < 5 * images and time.time() - t0 < 3600:
        page.wait_for_timeout(2000)
    log(f"  {label}: model ready with {_pairs(page):,} pairs after {time.time() - t0:.0f} s")
    settle(page)


def _classify_once(page, out: dict) -> None:
    """Classify & explain: Remove the first contributing caption → visible → settled."""
    n = _pairs(page)
    t = time.perf_counter()
    # one caption's Remove ("Remove" / "Remove #id"), not a photo's "Remove all N"
    page.locator('[data-testid="stButton"] button', has_text=re.compile(r"Remove( #\d+)?$")).first.click()
    out.setdefault("classify_remove_visible", []).append((shown(page, f"() => ({PAIRS_JS})() === {n - 1}") - t) * 1000)
    out.setdefault("classify_remove_settled", []).append((settle(page) - t) * 1000)


def measure(roots: dict[str, Path], images: int, per_class: int, reps: int,
            log=print) -> dict[str, dict[str, list[float]]]:
    """Start each app (``{label: checkout}``) on its own server and fresh workspaces folder, build the
    demo, then time every interaction, the apps taking turns rep by rep (A, B, A, B …) so that both
    see the same load on a shared machine; each rep ends settled (Curate's: table refreshed)."""
    from playwright.sync_api import sync_playwright

    outs: dict[str, dict[str, list[float]]] = {label: {} for label in roots}
    procs = []
    with tempfile.TemporaryDirectory(prefix="rosetta-bench-") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=H.CHROMIUM, args=H.CHROMIUM_ARGS)
        pages = {}
        try:
            for label, root in roots.items():
                port = H.free_port()
                folder = Path(tmp) / label.replace(" ", "-")
                folder.mkdir()
                procs.append(H.start_server(port, folder / "ws", folder / "server.log", app_root=root,
                                            images=images, per_class=per_class))
                page = browser.new_context(viewport={"width": 1440, "height": 1400}).new_page()
                page.set_default_timeout(120_000)
                _ready(page, f"http://127.0.0.1:{port}", images, log, label)
                pages[label] = page
            for _ in range(reps):
                for label, page in pages.items():
                    _classify_once(page, outs[label])
            for page in pages.values():
                _open_curate(page)
            for _ in range(reps):
                for label, page in pages.items():
                    try:
                        _curate_once(page, outs[label])
                    except PlaywrightTimeout:  # a click that a polling rerun swallowed: counted, not timed
                        outs[label].setdefault("curate_lost_clicks", []).append(1.0)
                        _open_curate(page)
            for _ in range(reps):
                for name in PAGES:  # each from a different page
                    for label, page in pages.items():
                        outs[label].setdefault(f"visit_{name}", []).append(visit(page, name))
            browser.close()
        finally:
            for proc in procs:
                H.stop_server(proc)
    return outs


def _stats(values: list[float]) -> tuple[float, float]:
    return float(np.median(values)), float(np.percentile(values, 90))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=7000, help="Flickr8k photos (5 captions each)")
    ap.add_argument("--per-class", type=int, default=100, help="CIFAR-10 test pictures per class")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--app-root", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--baseline-root", type=Path, help="a checkout measured first, as the baseline")
    ap.add_argument("--json", type=Path, help="write the raw timings here")
    args = ap.parse_args(argv)
    print(f"sizes: {args.images:,} photos = {5 * args.images:,} pairs, {args.per_class} test pictures per "
          f"class, {args.reps} repetitions; load: {os.getloadavg()[0]:.1f}")
    roots = {label: root.resolve() for label, root in (("baseline", args.baseline_root),
                                                          ("this code", args.app_root)) if root is not None}
    for label, root in roots.items():
        print(f"{label}: {root}")
    runs = measure(roots, args.images, args.per_class, args.reps)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    head = f"{'interaction':34} {'target':>7}"
    for label in runs:
        head += f" {label + ' median':>18} {'p90':>7}"
    print(head + ("   baseline ÷ this code (median)" if len(runs) == 2 else ""))
    for label, r in runs.items():
        if r.get("curate_lost_clicks"):
            print(f"{label}: {len(r['curate_lost_clicks'])} Curate round(s) lost (a click with no effect in "
                  "30 s), not timed")
    for key, target in TARGETS_MS.items():
        line = f"{key:34} {'–' if target is None else f'{target:,}':>7}"
        meds = []
        for label, r in runs.items():
            if key in r:
                med, p90 = _stats(r[key])
                meds.append(med)
                line += f" {med:>18,.0f} {p90:>7,.0f}"
        if len(meds) == 2:
            line += f"   {meds[0] / meds[1]:.2f}" if meds[1] else ""
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs},
                                        indent=1))
    return runs


if __name__ == "__main__":
    main()
