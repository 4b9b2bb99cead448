"""Benchmark: a paper-scale workspace end to end, and the float16 effect on the real demo.

    python -m bench.scale --pairs 300000             # synthetic
    python -m bench.scale --pairs 1600000            # the paper's size: peak ~15 GB, check `free -g` first
    python -m bench.scale --pairs 1600000 --sweep 8,16,64 --removals 0 --influence 0 --map 0   # nprobe frontier
    python -m bench.scale --real                     # cached Flickr8k/CIFAR-10 vectors through each format

Synthetic mode writes N pairs with realistic structure — d = 768 on both sides, two-level clusters
(60 topics, 3,000 sub-topics; classes are groups of topics), 1–3 captions per picture (mean
``--captions``), text vectors sharing a per-picture offset — as a clip-retrieval layout (float16)
in a tmp folder (or ``--out``), imports it through :func:`core.interchange.import_pairs`, then times:
building the model with its FAISS image index (once; "first open") and saving its arrays for
:meth:`core.asif.AsifModel.open_mapped`, opening it again by mapping them, with the saved index and
the caption strings ("open from cache"), classifying ``--eval`` pictures through the ANN path and through exact
search (the named baseline: ratio and prediction agreement), classifying and explaining one picture
(with a new prompt set, then again), the Fig. 3 histograms of an explanation (every anchor), recall@k
of the ANN path against exact search on a 200-picture sample (``--sweep``: for other ``nprobe`` too),
building an :class:`core.edits.EditSession` (its lists from the model's index) and re-scoring single
removals, the influence table (exact leave-one-out of every pair) and the PCA map of the anchor
pictures (skipped when it would not fit in the memory available). Peak memory is ``VmHWM`` of this
process. Times scale with the load of the shared machine: the load average is printed with the figures.

Real mode reads the cached efficientnet-lite0 / minilm vectors of Flickr8k pairs and CIFAR-10 test
pictures (nothing is encoded; only what is cached is used), exports them to every format as float32
and float16, re-imports them and reports accuracy and agreement against the original vectors.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.asif_common import machine  # noqa: E402
from core.ann import AnnIndex, AnnSettings, measure, prediction_agreement  # noqa: E402
from core.asif import AsifModel  # noqa: E402
from core.interchange import import_pairs, source_key  # noqa: E402

TOPICS, SUBTOPICS, CLASSES, TEMPLATES = 60, 3000, 10, 8


def _proc_gb(path: str, field: str, missing: float) -> float:
    """The kB figure ``field`` of the ``/proc`` file ``path``, in GB (``missing`` when absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024 ** 2
    return missing


def peak_gb() -> float:
    """Peak resident memory of this process (``VmHWM``), GB."""
    return _proc_gb("/proc/self/status", "VmHWM", float("nan"))


def available_gb() -> float:
    """``MemAvailable`` of the machine, GB (the map is skipped when it would not fit)."""
    return _proc_gb("/proc/meminfo", "MemAvailable", float("inf"))


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthesize(n_pairs: int, out: Path, *, captions: float = 2.0, d: int = 768, n_eval: int = 1000,
               seed: int = 0, dtype: str = "float16", shard_rows: int = 250_000, d_img: int | None = None,
               caption_pool: tuple[list[str], np.ndarray] | None = None,
               encoders: tuple[str, str] = ("synthetic-image-768", "synthetic-text-768")) -> dict:
    """Write ``n_pairs`` synthetic pairs as a clip-retrieval layout under ``out``; return the
    evaluation pictures, their labels and the class prompts (all from the same generative model).
    ``d_img``: the pictures' dimension (default ``d``); ``caption_pool`` ``(texts, vectors)``: each
    pair's caption and text vector drawn from these real ones instead (the app's encoder check
    then passes honestly); ``encoders``: the names recorded beside the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(d)

    def centres(rng):
        top = rng.standard_normal((TOPICS, d)) * s
        return top[np.arange(SUBTOPICS) % TOPICS] + 0.8 * rng.standard_normal((SUBTOPICS, d)) * s

    img_c, txt_c = centres(np.random.default_rng(seed + 1)), centres(np.random.default_rng(seed + 2))
    if d_img is not None and d_img != d:
        img_c = np.concatenate([img_c, centres(np.random.default_rng(seed + 3))], axis=1)[:, :d_img]
    txt_top = np.stack([txt_c[np.arange(SUBTOPICS) % TOPICS == t].mean(0) for t in range(TOPICS)])
    for sub in ("img_emb", "text_emb", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "encoders.json").write_text(json.dumps({"image_encoder": encoders[0], "text_encoder": encoders[1]}))
    hi = max(2, int(round(2 * captions)))       # captions per picture uniform in 1 .. hi-1
    written, image_no, shard = 0, 0, 0
    while written < n_pairs:
        target = min(shard_rows, n_pairs - written)          # pairs in this shard
        per = rng.integers(1, hi, int(np.ceil(target / captions)) + 1)
        if per.sum() < target:
            per[-1] += target - int(per.sum())
        per = per[:int(np.searchsorted(np.cumsum(per), target)) + 1]
        per[-1] -= int(per.sum()) - target
        sub = rng.integers(0, SUBTOPICS, per.size)
        img = _unit(img_c[sub] + 0.6 * rng.standard_normal((per.size, img_c.shape[1])) * s)
        rows = np.repeat(np.arange(per.size), per)
        if caption_pool is None:
            offset = 0.5 * rng.standard_normal((per.size, d)) * s
            txt = _unit(txt_c[sub[rows]] + offset[rows] + 0.5 * rng.standard_normal((rows.size, d)) * s)
            caps = [f"caption {written + i} of picture {image_no + r} (topic {sub[r] % TOPICS})"
                    for i, r in enumerate(rows.tolist())]
        else:
            pick = rng.integers(0, len(caption_pool[0]), rows.size)
            txt, caps = caption_pool[1][pick], [caption_pool[0][i] for i in pick.tolist()]
        np.save(out / "img_emb" / f"img_emb_{shard}.npy", img[rows].astype(dtype))
        np.save(out / "text_emb" / f"text_emb_{shard}.npy", txt.astype(dtype))
        names = [f"synthetic/{image_no + r:09d}.jpg" for r in rows.tolist()]
        pq.write_table(pa.table({"image_path": names, "caption": caps}), out / "metadata" / f"metadata_{shard}.parquet")
        written += rows.size
        image_no += per.size
        shard += 1
        del img, txt
    sub = rng.integers(0, SUBTOPICS, n_eval)
    eval_vectors = _unit(img_c[sub] + 0.6 * rng.standard_normal((n_eval, img_c.shape[1])) * s)
    labels = (sub % TOPICS) % CLASSES
    prompts = np.concatenate([
        _unit(txt_top[np.arange(TOPICS) % CLASSES == c].mean(0) + 0.3 * rng.standard_normal((TEMPLATES, d)) * s)
        for c in range(CLASSES)])
    return {"eval": eval_vectors, "labels": labels.astype(np.int64), "prompts": prompts,
            "prompt_classes": np.repeat(np.arange(CLASSES), TEMPLATES), "images": image_no}


def open_model(folder: Path, settings: AnnSettings, k: int, p: float,
               parts: dict | None = None) -> tuple[AsifModel, object, float]:
    """Import the pairs, build the model and its image index: ``(model, pairs, seconds)``; ``parts``
    receives the seconds of each step (import, model, index)."""
    t = time.perf_counter()
    pairs = import_pairs(folder)
    t_import = time.perf_counter()
    model = AsifModel(pairs.pair_image_vectors, pairs.text_vectors, k=k, p=p)
    model.ann = settings
    t_model = time.perf_counter()
    model.search_index("image")
    end = time.perf_counter()
    if parts is not None:
        parts.update(import_s=t_import - t, model_s=t_model - t_import, index_s=end - t_model)
    return model, pairs, end - t


def reopen_model(folder: Path, settings: AnnSettings, key: str, parts: dict) -> tuple[AsifModel, float]:
    """A second open: the model's arrays mapped from what :meth:`AsifModel.save_mapped` wrote, its
    saved FAISS index, and the caption strings read from the source's metadata (what the app shows):
    ``(model, seconds)``; ``parts`` receives the seconds of each step."""
    import pyarrow.parquet as pq

    t = time.perf_counter()
    model = AsifModel.open_mapped(folder / "index" / f"model-{key}", key)
    if model is None:
        raise RuntimeError("the mapped model was not found")
    model.ann = settings
    t_model = time.perf_counter()
    model.search_index("image")
    t_index = time.perf_counter()
    captions = [c for m in sorted((folder / "source" / "metadata").glob("*.parquet"))
                for c in pq.read_table(m, columns=["caption"]).column("caption").to_pylist()]
    end = time.perf_counter()
    parts.update(model_s=t_model - t, index_s=t_index - t_model, captions_s=end - t_index,
                 captions=len(captions))
    return model, end - t


def run_synthetic(args) -> dict:
    from core.edits import EditSession

    tmp = None
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rosetta-scale-"))
    if not args.out:
        tmp = out
    info: dict = {"machine": machine(), "pairs": args.pairs, "d": 768, "k": args.k, "p": args.p,
                  "eval_pictures": args.eval, "folder": str(out)}
    try:
        t = time.perf_counter()
        data = synthesize(args.pairs, out / "source", captions=args.captions, n_eval=args.eval)
        info["distinct_images"] = data["images"]
        info["write_s"] = time.perf_counter() - t
        info["folder_bytes"] = sum(f.stat().st_size for f in (out / "source").rglob("*") if f.is_file())
        settings = AnnSettings(min_anchors=args.ann_min, folder=str(out / "index"), nprobe=args.nprobe,
                               shortlist=args.shortlist)
        model, pairs, info["build_s"] = open_model(out / "source", settings, args.k, args.p)
        index = model.search_index("image")
        info["index_built"] = getattr(index, "built", None)
        info["index_kind"] = type(index).__name__
        info["index_build_s"] = getattr(index, "build_seconds", None)
        key = source_key(out / "source")
        t = time.perf_counter()
        model.save_mapped(out / "index" / f"model-{key}", key)
        info["save_mapped_s"] = time.perf_counter() - t
        del model, pairs, index
        gc.collect()
        info["open_parts"] = {}
        model, info["open_s"] = reopen_model(out, settings, key, info["open_parts"])
        info["index_opened_from_file"] = not getattr(model.search_index("image"), "built", True)
        info["peak_gb_after_open"] = peak_gb()
        q, y = data["eval"], data["labels"]
        pe, pc = data["prompts"], data["prompt_classes"]
        info["load_avg_start"] = os.getloadavg()[0]

        t = time.perf_counter()
        fast = model.classify(q, pe, pc, n_classes=CLASSES)
        info["classify_ann_s"] = time.perf_counter() - t
        exact_model = AsifModel(model.image_embeddings, model.text_embeddings, k=args.k, p=args.p)  # shares the arrays
        exact_model.ann = AnnSettings(min_anchors=None)
        t = time.perf_counter()
        exact = exact_model.classify(q, pe, pc, n_classes=CLASSES)
        info["classify_exact_s"] = time.perf_counter() - t
        info["classify_speedup"] = info["classify_exact_s"] / info["classify_ann_s"]
        t = time.perf_counter()          # again: the text index, the prompts' top-k and the index pages are warm
        model.classify(q, pe, pc, n_classes=CLASSES)
        info["classify_ann_again_s"] = time.perf_counter() - t
        info["accuracy_ann"], info["accuracy_exact"] = fast.accuracy(y), exact.accuracy(y)
        info["prediction_agreement"] = prediction_agreement(fast.predictions, exact.predictions)
        del exact_model
        gc.collect()
        t = time.perf_counter()
        explanation = model.explain(q[1], pe, pc)          # a picture the classification did not see alone
        explanation.contributions()
        info["explain_one_s"] = time.perf_counter() - t
        t = time.perf_counter()
        explanation.all_image_similarity, explanation.all_caption_similarity   # Fig. 3 histograms (every anchor)
        info["explain_histograms_s"] = time.perf_counter() - t
        del explanation
        fresh = _unit(pe + 0.01 * np.random.default_rng(3).standard_normal(pe.shape) / np.sqrt(pe.shape[1]))
        t = time.perf_counter()                    # a prompt set never seen: the text top-k is computed
        model.classify(q[2:3], fresh, pc, n_classes=CLASSES)
        model.explain(q[2], fresh, pc).contributions()
        info["classify_and_explain_new_prompts_s"] = time.perf_counter() - t
        t = time.perf_counter()                    # the same prompts again (the app's steady state)
        model.classify(q[3:4], fresh, pc, n_classes=CLASSES)
        model.explain(q[3], fresh, pc).contributions()
        info["classify_and_explain_one_s"] = time.perf_counter() - t
        if hasattr(model.search_index("image"), "settings"):
            info["ann"] = measure(model.search_index("image"), q, args.k, sample=200)
            for nprobe in args.sweep:            # the recall / speed frontier of the same saved index
                other = AnnIndex(model.image_embeddings, replace(settings, nprobe=nprobe))
                info[f"ann_nprobe_{nprobe}"] = measure(other, q, args.k, sample=200)
                del other
        gc.collect()
        info["peak_gb_before_session"] = peak_gb()
        if args.removals:
            t = time.perf_counter()
            session = EditSession(model, q, y, pe, pc)      # neighbour lists from the model's index
            info["edit_session_s"] = time.perf_counter() - t
            info["session_agreement_with_classify"] = prediction_agreement(session.predictions, fast.predictions)
            rng = np.random.default_rng(1)
            times = []
            held = np.unique(session.img_side.rows[:, :args.k])   # removals that touch some top-k
            for pid in session.anchors.ids[rng.choice(held[held >= 0], args.removals, replace=False)].tolist():
                t = time.perf_counter()
                session.remove([pid])
                times.append(time.perf_counter() - t)
            info["removal_ms_median"] = 1000 * float(np.median(times))
            info["removal_ms_max"] = 1000 * float(np.max(times))
            info["peak_gb_with_session"] = peak_gb()
            if args.edited_model:     # what core.live.LiveModel.current_model() builds after an edit
                a, n0 = session.anchors, model.n_anchors
                t = time.perf_counter()
                over = AsifModel.over_rows(model, a.img.extra[:a.size - n0], a.txt.extra[:a.size - n0],
                                           a.ids[n0:a.size], None, a.alive_rows(), k=session.k, p=session.p)
                over.explain(q[4], pe, pc).contributions()
                info["over_rows_model_and_explain_s"] = time.perf_counter() - t
                t = time.perf_counter()
                info["over_rows_agreement_with_session"] = prediction_agreement(
                    over.classify(q, pe, pc, n_classes=CLASSES).predictions, session.predictions)
                info["over_rows_classify_s"] = time.perf_counter() - t
                info["peak_gb_with_over_rows_model"] = peak_gb()
                del over
                gc.collect()
                need = 4 * model.n_anchors * (model.image_embeddings.shape[1] + model.text_embeddings.shape[1])
                if available_gb() < need / 1024 ** 3 + 2:
                    info["edited_model"] = (f"not run: needs ~{need / 1024 ** 3:.1f} GB, "
                                            f"{available_gb():.1f} GB available")
                else:
                    t = time.perf_counter()
                    edited = session.current_model()
                    edited.ann = settings
                    edited.explain(q[4], pe, pc).contributions()
                    info["edited_model_and_explain_s"] = time.perf_counter() - t   # the copy: the baseline
                    info["edited_model_speedup_over_rows"] = (info["edited_model_and_explain_s"]
                                                              / info["over_rows_model_and_explain_s"])
                    info["peak_gb_with_edited_model"] = peak_gb()
                    del edited
                    gc.collect()
            if args.influence:
                t = time.perf_counter()
                influence = session.influence()
                info["influence_s"] = time.perf_counter() - t
                info["influence_pairs"] = int(influence.pair_ids.size)
                info["influence_paths"] = [influence.n_fast, influence.n_algebraic, influence.n_edit_path]
                del influence
            del session
            gc.collect()
        if args.map:       # core.layout copies the distinct pictures twice (distinct rows, centred)
            from core.layout import layout
            need = 2.4 * data["images"] * model.image_embeddings.shape[1] * 4 / 1024 ** 3
            if available_gb() < need + 2:
                info["map_pca"] = f"not run: needs ~{need:.1f} GB more, {available_gb():.1f} GB available"
            else:
                t = time.perf_counter()
                layout(model.image_embeddings, "pca")
                info["map_pca_s"] = time.perf_counter() - t
        info["peak_gb"] = peak_gb()
        info["load_avg_end"] = os.getloadavg()[0]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def run_reopen(args) -> dict:
    """A fresh process opens a kept folder (``--out`` of an earlier run) as the app would the second
    time: the mapped model, its saved index, the captions; then the image top-k of 200 anchor
    pictures (their pages are read on use). Peak memory is this process's alone."""
    out = Path(args.reopen)
    settings = AnnSettings(min_anchors=args.ann_min, folder=str(out / "index"), nprobe=args.nprobe,
                           shortlist=args.shortlist)
    info: dict = {"machine": machine(), "folder": str(out), "load_avg_start": os.getloadavg()[0],
                  "open_parts": {}}
    t = time.perf_counter()
    key = source_key(out / "source")
    info["source_key_s"] = time.perf_counter() - t
    model, info["open_s"] = reopen_model(out, settings, key, info["open_parts"])
    info["open_s"] += info["source_key_s"]
    info["pairs"] = model.n_anchors
    info["index_opened_from_file"] = not getattr(model.search_index("image"), "built", True)
    info["peak_gb_after_open"] = peak_gb()
    queries = np.array(model.image_embeddings[np.random.default_rng(0).choice(model.n_anchors, 200)])
    t = time.perf_counter()
    model.search_index("image").topk(queries, args.k)
    info["image_topk_200_s"] = time.perf_counter() - t
    info["peak_gb"] = peak_gb()
    info["load_avg_end"] = os.getloadavg()[0]
    return info


def run_real(args) -> dict:
    from core.asif import DEFAULT_TEMPLATES
    from core.cache import default_cache
    from core.data import data_dir, load_labeled, load_pairs_folder
    from core.embedded import EmbeddedLabeled, EmbeddedPairs, embed_prompts
    from core.interchange import FORMATS, export_pairs

    cache = default_cache()
    root = data_dir(required=True)
    anchors = EmbeddedPairs.from_pairset(load_pairs_folder(root / "flickr8k"), "efficientnet-lite0", "minilm",
                                         cache=cache, compute=False)
    test = EmbeddedLabeled.from_labeled(load_labeled(root / "cifar10" / "test"), "efficientnet-lite0",
                                        cache=cache, compute=False)
    if len(anchors) < args.k or len(test) == 0:
        raise SystemExit(f"only {len(anchors)} Flickr8k pairs and {len(test)} CIFAR-10 pictures are cached; "
                         "run `python -m core embed` first.")
    pe, pc = embed_prompts(test.class_names, DEFAULT_TEMPLATES, "minilm", cache=cache)
    k = min(args.k, len(anchors))

    def classify(pairs):
        model = AsifModel(pairs.pair_image_vectors, pairs.text_vectors, k=k, p=args.p)
        return model.classify(test.vectors, pe, pc, n_classes=len(test.class_names)).predictions

    original = classify(anchors)
    info: dict = {"machine": machine(), "cached_pairs": len(anchors), "cached_test_pictures": len(test), "k": k,
                  "p": args.p, "accuracy_original": float(np.mean(original == test.labels)), "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            for dtype in ("float32", "float16"):
                dest = Path(tmp) / f"{fmt}-{dtype}{'.parquet' if fmt == 'parquet' else ''}"
                path = export_pairs(anchors, dest, fmt, dtype=dtype)
                t = time.perf_counter()
                copy = import_pairs(path)
                seconds = time.perf_counter() - t
                pred = classify(copy)
                info["formats"][f"{fmt}/{dtype}"] = {
                    "accuracy": float(np.mean(pred == test.labels)),
                    "agreement_with_original": prediction_agreement(pred, original),
                    "max_abs_text_diff": float(np.abs(copy.text_vectors - anchors.text_vectors).max()),
                    "import_s": seconds}
    return info


def run_app(args) -> dict:
    """The app's own path at ``--pairs`` pairs: what the Data page's "Create workspace" runs
    (:func:`core.interchange.create_vector_workspace` on the imported folder), then, in fresh
    processes (:func:`run_app_open`, twice: the second open replays the first one's edits), the
    app itself opening it. Pictures: synthetic 1280-d clusters named efficientnet-lite0 (not files:
    shown by caption); captions: Flickr8k's with their real minilm vectors (from the cache), so the
    encoder check passes honestly; labeled pictures: ``--per-class`` CIFAR-10 test pictures."""
    import subprocess

    from core.cache import default_cache
    from core.data import data_dir, load_pairs_folder
    from core.demo import demo_labeled_items
    from core.embedded import embed
    from core.interchange import create_vector_workspace

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rosetta-app-scale-"))
    cache = default_cache()
    flickr = load_pairs_folder(data_dir(required=True) / "flickr8k")
    pool = embed("minilm", flickr.captions, cache=cache)
    texts = [c for c, ok in zip(flickr.captions, pool.ok) if ok]
    info: dict = {"machine": machine(), "pairs": args.pairs, "d_image": 1280, "d_text": int(pool.vectors.shape[1]),
                  "caption_pool": len(texts), "folder": str(out), "load_avg_start": os.getloadavg()[0]}
    try:
        t = time.perf_counter()
        data = synthesize(args.pairs, out / "source", captions=args.captions, d_img=1280, n_eval=1,
                          caption_pool=(texts, pool.vectors[pool.ok]), encoders=("efficientnet-lite0", "minilm"))
        info["distinct_images"], info["write_s"] = data["images"], time.perf_counter() - t
        del pool, data
        t = time.perf_counter()
        pairs = import_pairs(out / "source")
        info["import_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ws, info["pictures_named_only"] = create_vector_workspace(
            "paper scale", pairs, demo_labeled_items(args.per_class), cache, root=out / "workspaces")
        info["create_workspace_s"] = time.perf_counter() - t
        info["peak_gb_create"] = peak_gb()
        del pairs, ws
        gc.collect()
        for run in ("first_open", "open_after_edits"):
            done = subprocess.run([sys.executable, "-m", "bench.scale", "--app-open", str(out), "--json"],
                                  capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
            info[run] = (json.loads(done.stdout[done.stdout.index("{"):]) if done.returncode == 0
                         else {"error": done.stderr[-2000:]})
        info["load_avg_end"] = os.getloadavg()[0]
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    return info


def run_app_open(args) -> dict:
    """One fresh process opening the workspace :func:`run_app` made, in the app (Streamlit's
    AppTest runs app.py and its pages in this process): until the model is ready, the Classify
    page with its explanation, Curate with the influence table, the Map page; then through the
    same live model the app holds: explain one picture, a what-if, a removal and an addition (one
    logged edit each), the influence table again. Peak memory is this process's (``VmHWM``)."""
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    os.environ["ROSETTA_WORKSPACES"] = str(Path(args.app_open) / "workspaces")
    sys.path.insert(0, str(root / "tests"))
    import app_helpers as H

    from core import store
    from ui import state

    info: dict = {"load_avg_start": os.getloadavg()[0]}

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        info[name] = time.perf_counter() - t
        return out

    at = AppTest.from_file(str(root / "app.py"), default_timeout=1800)
    timed("open_in_app_s", lambda: H.run_ready(at, timeout=1800))
    info["peak_gb_open"] = peak_gb()
    timed("classify_page_s", lambda: H.switch_and_wait(at, "pages/classify.py",
                                                       lambda a: "It's a" in H.texts(a), timeout=1800))
    timed("curate_page_with_influence_s", lambda: H.open_curate(at))
    at.switch_page("pages/map.py")
    timed("map_page_first_run_s", lambda: at.run(timeout=1800))
    info["map_page_says"] = ([str(e.value)[:200] for e in at.caption if "sample" in str(e.value)]
                             + [str(e.value)[:200] for e in list(at.warning) + list(at.error)])[:4]
    for page in ("data", "settings", "workspaces", "align"):
        at.switch_page(f"pages/{page}.py")
        timed(f"{page}_page_s", lambda: at.run(timeout=1800))
        info[f"{page}_page_errors"] = [str(e.value)[:200] for e in list(at.error) + list(at.exception)][:2]
    ws = store.open_workspace(store.list_workspaces()[0].name)
    model = state.model_job(ws).model
    v = model.vectors
    info["anchors"], info["edits_in_log"] = model.n_anchors, ws.state().seq
    timed("explain_one_s", lambda: model.explain(v.item_vecs[7]).contributions())
    victim = int(model.session.img_side.rows[0, 0])
    victim = int(model.session.anchors.ids[victim])
    info["what_if_ms"] = timed("what_if_s", lambda: model.what_if_remove([victim])).elapsed_ms
    info["remove_ms"] = timed("remove_s", lambda: model.remove([victim], note="bench")).elapsed_ms
    photo = str(sorted((Path(os.environ.get("ROSETTA_DATA", "")) if os.environ.get("ROSETTA_DATA")
                        else root.parent / "shared" / "data").glob("flickr8k/images/*.jpg"))[0])
    timed("add_one_photo_s", lambda: model.add([(photo, "a photo added at paper scale")], note="bench"))
    timed("explain_after_edits_s", lambda: model.explain(v.item_vecs[8]).contributions())
    timed("influence_s", lambda: model.influence())
    info["peak_gb"] = peak_gb()
    info["load_avg_end"] = os.getloadavg()[0]
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--captions", type=float, default=2.0, help="mean captions per picture")
    ap.add_argument("--eval", type=int, default=1000, help="evaluation pictures")
    ap.add_argument("--k", type=int, default=800)
    ap.add_argument("--p", type=float, default=8.0)
    ap.add_argument("--nprobe", type=int, default=AnnSettings().nprobe)
    ap.add_argument("--shortlist", type=float, default=AnnSettings().shortlist)
    ap.add_argument("--ann-min", type=int, default=0,
                    help="distinct pictures from which FAISS is used (default 0: always, to measure it)")
    ap.add_argument("--removals", type=int, default=5,
                    help="single removals re-scored by an EditSession (0: no session)")
    ap.add_argument("--sweep", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="also measure these nprobe values on the same index, e.g. 8,16,64")
    ap.add_argument("--influence", type=int, default=1, help="1: time the influence table (exact leave-one-out)")
    ap.add_argument("--edited-model", type=int, default=0,
                    help="1: time the live pairs' model after the removals and one explanation with it "
                         "(a copy of both sides: skipped when it would not fit)")
    ap.add_argument("--map", type=int, default=1, help="1: time the PCA map layout of the anchor pictures")
    ap.add_argument("--out", default=None, help="keep the files here (default: a tmp folder, removed)")
    ap.add_argument("--reopen", default=None,
                    help="a folder an earlier run kept (--out): time a fresh process opening it mapped")
    ap.add_argument("--real", action="store_true", help="float16/float32 copies of the cached demo instead")
    ap.add_argument("--app", action="store_true",
                    help="the app's own path: a workspace of --pairs imported pairs, opened in the app")
    ap.add_argument("--per-class", type=int, default=100, help="--app: CIFAR-10 test pictures per class")
    ap.add_argument("--app-open", default=None, help=argparse.SUPPRESS)   # run_app's fresh processes
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    info = (run_real(args) if args.real else run_reopen(args) if args.reopen else run_app(args) if args.app
            else run_app_open(args) if args.app_open else run_synthetic(args))
    if args.json:
        print(json.dumps(info, indent=2, default=float))
    else:
        for key, value in info.items():
            print(f"{key}: {json.dumps(value, default=float) if isinstance(value, dict) else value}")
    if args.app_open:          # the app's background jobs (map layouts) are still running: stop here
        sys.stdout.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
