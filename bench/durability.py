"""Durability of the one edit path: writers in several processes, and writers killed at random.

Usage::

    .venv/bin/python -m bench.durability [--images 40] [--per-class 5] [--writers 2] [--edits 150]
                                         [--kills 120] [--json]

What is measured, on a small demo workspace (real vectors from the embedding cache):

* ``concurrent``: ``--writers`` processes each make ``--edits`` random edits (remove 1–3 pairs, undo,
  redo; undo / redo name the edit they saw) on one workspace. Anomalies counted: a refused edit that
  was not a one-sentence ``ValueError`` (a traceback), an undo / redo applied to an edit that was not
  on top (impossible by construction: counted from the log), and stored numbers that belong to
  another pair set (every edit's stored metrics are recomputed from its replayed pair set). Baseline:
  the same number of edits by one writer alone — the ratio is the throughput cost of sharing.
* ``kills``: a writer is SIGKILLed ``--kills`` times at random moments; lost commits (a sequence
  number the writer reported that is not in the log) and a model rebuilt from the log that differs
  from the replay are counted.

The same functions back ``tests/test_live.py`` (sized for CI).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_WORKER = textwrap.dedent("""
    import json, random, sys
    sys.path.insert(0, {root!r})
    from core import store
    from core.cache import EmbeddingCache
    from core.live import LiveModel, WorkspaceVectors
    ws = store.Workspace({path!r})
    m = LiveModel(ws, WorkspaceVectors(ws, EmbeddingCache()))
    rng = random.Random({seed})
    for i in range({n}):
        try:
            r = rng.random()
            if r < 0.55:
                out = m.remove(rng.sample(sorted(m.active_ids()), rng.randint(1, 3)))
            elif r < 0.8:
                top = ws.peek_undo()
                out = m.undo(expected_seq=None if top is None else top.seq)
            else:
                top = ws.peek_redo()
                out = m.redo(expected_seq=None if top is None else top.seq)
            print(json.dumps({{"seq": out.seq}}), flush=True)
        except ValueError as error:   # busy, stale, nothing to undo: a sentence, never a traceback
            print(json.dumps({{"refused": type(error).__name__}}), flush=True)
""")


def start_writer(ws_path: Path, seed: int, n: int) -> subprocess.Popen:
    """A process making ``n`` random edits on the workspace; prints one JSON line per attempt."""
    script = _WORKER.format(root=str(ROOT), path=str(ws_path), seed=seed, n=n)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def fresh_model(ws_path: Path, cache):
    """A live model rebuilt from the log alone (what a restarted app does)."""
    from core import store
    from core.live import LiveModel, WorkspaceVectors

    ws = store.Workspace(ws_path)
    return LiveModel(ws, WorkspaceVectors(ws, cache))


def wrong_metrics(ws_path: Path, cache, sample: int | None = None, seed: int = 0) -> list[int]:
    """Sequence numbers of edits whose stored metrics are not those of the pair set they left
    (every edit, or a random ``sample`` of them plus the last)."""
    from core import store
    from core.asif import AsifModel
    from core.live import Metrics

    ws = store.Workspace(ws_path)
    edits = ws.edits()
    if not edits:
        return []
    base = {p.pair_id for p in ws.all_pairs() if p.base}
    fresh = fresh_model(ws_path, cache)
    v = fresh.vectors
    which = range(len(edits)) if sample is None else sorted(
        set(random.Random(seed).sample(range(len(edits)), min(sample, len(edits))) + [len(edits) - 1]))
    bad = []
    for i in which:
        state = store.replay(base, edits[: i + 1], 0)
        pos = v.positions(sorted(state.active))
        model = AsifModel(v.img[v.pair_img[pos]], v.cap[pos], v.pair_ids[pos], k=fresh.k, p=v.p)
        pred = model.classify(v.item_vecs, v.prompts, v.prompt_classes).predictions
        want = Metrics.of(pred, v.item_labels, v.is_tune, len(v.classes), len(state.active), fresh.k)
        if edits[i].metrics != want.to_dict():
            bad.append(edits[i].seq)
    return bad


def run_writers(ws_path: Path, seeds, n: int, timeout: float = 3600) -> dict:
    """Run one writer per seed at once; ``{"committed", "refused", "tracebacks", "seconds"}``."""
    t0 = time.perf_counter()
    procs = [start_writer(ws_path, seed, n) for seed in seeds]
    outs = [p.communicate(timeout=timeout) for p in procs]
    lines = [json.loads(line) for out, _ in outs for line in out.splitlines()]
    return {"committed": sum("seq" in d for d in lines), "refused": sum("refused" in d for d in lines),
            "tracebacks": sum("Traceback" in err for _, err in outs) + sum(p.returncode != 0 for p in procs),
            "seconds": time.perf_counter() - t0}


def kill_campaign(ws_path: Path, kills: int, seed: int = 7, max_edits_between: int = 6) -> dict:
    """SIGKILL a writer ``kills`` times, each after a random number of reported commits and a random
    delay; returns the reported sequence numbers and how many are missing from the log."""
    from core import store

    rng = random.Random(seed)
    reported: list[int] = []
    for round_ in range(kills):
        proc = start_writer(ws_path, 1000 + round_, 100_000)
        deadline = time.time() + 120
        target, got = rng.randint(1, max_edits_between), 0
        while got < target and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            d = json.loads(line)
            if "seq" in d:
                reported.append(d["seq"])
                got += 1
        time.sleep(rng.random() * 0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    in_log = {e.seq for e in store.Workspace(ws_path).edits()}
    return {"kills": kills, "reported": len(reported), "lost": len(set(reported) - in_log)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=40, help="Flickr8k photos (x5 captions)")
    ap.add_argument("--per-class", type=int, default=5, help="CIFAR-10 test pictures per class")
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--edits", type=int, default=150, help="edits per writer")
    ap.add_argument("--kills", type=int, default=120)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from core import demo, store
    from core.cache import EmbeddingCache

    cache = EmbeddingCache()
    out: dict = {"images": args.images, "per_class": args.per_class, "writers": args.writers,
                 "edits_per_writer": args.edits}
    with tempfile.TemporaryDirectory() as tmp:
        for name, seeds in (("alone", [1]), ("concurrent", list(range(1, args.writers + 1)))):
            ws = demo.create_demo_workspace(name, args.images, args.per_class, root=Path(tmp))
            fresh_model(ws.path, cache)  # the engine snapshot, so writers start fast
            r = run_writers(ws.path, seeds, args.edits if name == "concurrent" else args.edits * args.writers)
            r["wrong_metrics"] = len(wrong_metrics(ws.path, cache))
            r["edits_per_s"] = round(r["committed"] / r["seconds"], 2)
            out[name] = r
        out["sharing_cost"] = round(out["alone"]["edits_per_s"] / max(out["concurrent"]["edits_per_s"], 1e-9), 2)
        ws = demo.create_demo_workspace("killed", args.images, args.per_class, root=Path(tmp))
        fresh_model(ws.path, cache)
        k = kill_campaign(ws.path, args.kills)
        rebuilt = fresh_model(ws.path, cache)
        k["replay_differs"] = int(rebuilt.active_ids() != set(store.Workspace(ws.path).active_pair_ids()))
        k["wrong_metrics"] = len(wrong_metrics(ws.path, cache))
        out["kills"] = k
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:18s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
