"""Foundation benchmark: import time, encoder throughput, and cached-vector load time.

Measures, on this machine (and on CUDA when present, or with ``--device``):

* import time of ``core.encoders``/``core.cache``/``core.data`` (lazy: no torch) and of torch itself,
  each in a fresh interpreter;
* model load time and throughput of each built-in encoder: images/s on ``--images`` Flickr8k photos
  (file paths in, decoding + preprocessing included) and captions/s on ``--captions`` Flickr8k captions,
  after one warm-up batch;
* time to load 35,000 cached vectors (384-d and 1280-d) written through the cache's own ``put`` path
  (shards of 4,096, as ``embed`` writes them) into a fresh :class:`EmbeddingCache` object (a new
  process's view), against the cold baseline of computing them (35,000 / measured rate), and the
  end-to-end ``core.embedded.embed`` of 35,000 distinct captions from a warm cache (hashing included).

    python bench/encoders.py [--images 64] [--captions 512] [--encoders efficientnet-lite0,...]
                             [--device cpu|cuda] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from core import cache as C  # noqa: E402
from core import data as D  # noqa: E402
from core import encoders as E  # noqa: E402
from core.embedded import embed  # noqa: E402


def import_time(statement: str, repeats: int = 3) -> float:
    """Median wall time of ``python -c <statement>`` minus a bare interpreter start."""
    def run(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        return time.perf_counter() - t0

    bare = statistics.median(run("pass") for _ in range(repeats))
    return max(0.0, statistics.median(run(statement) for _ in range(repeats)) - bare)


def throughput(name: str, items: list, device: str, batch_size: int | None) -> dict:
    t0 = time.perf_counter()
    enc = E.get_encoder(name, device=device)
    load_s = time.perf_counter() - t0
    enc.encode(items[: min(8, len(items))], batch_size=batch_size)  # warm-up
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    load_before = os.getloadavg()[0]
    c0 = time.process_time()
    t0 = time.perf_counter()
    out = enc.encode(items, batch_size=batch_size)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    assert out.shape == (len(items), enc.dim)
    return {"encoder": name, "modality": enc.modality, "dim": enc.dim, "device": device, "n": len(items),
            "batch_size": batch_size or enc.batch_size, "seconds": round(secs, 3),
            "per_second": round(len(items) / secs, 1), "load_seconds": round(load_s, 2),
            "cpu_ms_per_item": round(1000 * cpu / len(items), 2),
            "loadavg": round((load_before + os.getloadavg()[0]) / 2, 2)}


def cached_load(n: int, dim: int, repeats: int = 5) -> dict:
    """Write ``n`` synthetic vectors through ``put`` (4,096 per shard); time fresh-object lookups."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = C.EmbeddingCache(tmp)
        keys = [C.text_key(f"caption {i}") for i in range(n)]
        vecs = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
        for lo in range(0, n, C.FLUSH_EVERY):
            cache.put(f"bench-{dim}|v1", keys[lo:lo + C.FLUSH_EVERY], vecs[lo:lo + C.FLUSH_EVERY])
        times = []
        for _ in range(repeats):
            fresh = C.EmbeddingCache(tmp)
            t0 = time.perf_counter()
            got, found = fresh.lookup(f"bench-{dim}|v1", keys)
            times.append(time.perf_counter() - t0)
            assert found.all() and np.array_equal(got, vecs)
        # end to end: hash 35k texts + lookup, through embed by name (no model load)
        texts = [f"caption {i}" for i in range(n)]
        e2e = []
        if dim == 384:
            C.EmbeddingCache(tmp).put(E.BUILTIN_ENCODERS["minilm"].cache_id, keys, vecs)
            for _ in range(repeats):
                fresh = C.EmbeddingCache(tmp)
                t0 = time.perf_counter()
                out = embed("minilm", texts, cache=fresh).vectors
                e2e.append(time.perf_counter() - t0)
                assert out.shape == (n, dim) and fresh.encoders.loads == 0
    return {"n": n, "dim": dim, "lookup_seconds": round(statistics.median(times), 4),
            "embed_seconds": round(statistics.median(e2e), 4) if e2e else None}


def real_cached(pairs) -> dict | None:
    """When the user cache already holds Flickr8k (``python -m core embed``): time a fresh cache
    object serving all 35,000 captions (minilm, hashing included) and 7,000 images (lite0)."""
    cache = C.EmbeddingCache(C.cache_root())
    caption_keys = [C.text_key(t) for t in pairs.captions]
    if not cache.contains(E.BUILTIN_ENCODERS["minilm"].cache_id, caption_keys).all() or \
            not cache.contains(E.BUILTIN_ENCODERS["efficientnet-lite0"].cache_id, pairs.image_keys).all():
        return None
    out = {}
    fresh = C.EmbeddingCache(C.cache_root())
    t0 = time.perf_counter()
    txt = embed("minilm", pairs.captions, cache=fresh).vectors
    out["captions_35k_minilm_seconds"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    img = embed("efficientnet-lite0", pairs.images, cache=fresh, keys=pairs.image_keys).vectors
    out["images_7k_lite0_seconds"] = round(time.perf_counter() - t0, 4)
    out["computed"] = fresh.misses
    assert txt.shape == (len(pairs), 384) and img.shape == (len(pairs.images), 1280)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--captions", type=int, default=512)
    parser.add_argument("--encoders", default="efficientnet-lite0,efficientnet-lite2,minilm,mpnet")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = args.device or E.default_device()
    src = D.demo_sources(required=True)
    pairs = D.load_pairs_folder(src["flickr8k"])
    images = pairs.images[: args.images]
    captions = list(dict.fromkeys(pairs.captions))[: args.captions]

    result: dict = {"device": device, "cpu_count": os.cpu_count()}
    try:
        import torch

        result["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda"):
            result["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    if not args.skip_import:
        result["import_seconds"] = {
            "core.encoders+cache+data": round(import_time("import core.encoders, core.cache, core.data"), 3),
            "torch": round(import_time("import torch"), 3),
            "sentence_transformers": round(import_time("import sentence_transformers"), 3),
        }
    rows = []
    for name in [n.strip() for n in args.encoders.split(",") if n.strip()]:
        items = images if E.BUILTIN_ENCODERS[name].modality == "image" else captions
        rows.append(throughput(name, items, device, args.batch_size))
        print(f"{name}: {rows[-1]['per_second']} items/s", file=sys.stderr)
    result["encoders"] = rows
    n = 35_000
    loads = [cached_load(n, 384), cached_load(n, 1280)]
    rate = {r["encoder"]: r["per_second"] for r in rows}
    for load in loads:
        enc = "minilm" if load["dim"] == 384 else "efficientnet-lite0"
        if enc in rate:
            load["cold_compute_seconds"] = round(n / rate[enc], 1)
            load["cold_baseline"] = enc
            load["speedup"] = round(load["cold_compute_seconds"] / load["lookup_seconds"])
    result["cached_35k"] = loads
    result["real_flickr_cached"] = real_cached(pairs)

    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"device: {device}  (cpu cores: {result['cpu_count']}, torch threads: "
          f"{result.get('torch_threads')})")
    for k, v in result.get("import_seconds", {}).items():
        print(f"import {k}: {v:.3f} s")
    print("| encoder | device | items | per second (wall) | CPU ms/item | load avg | model load s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        unit = "images" if r["modality"] == "image" else "captions"
        print(f"| {r['encoder']} | {r['device']} | {r['n']} {unit} | {r['per_second']} | "
              f"{r['cpu_ms_per_item']} | {r['loadavg']} | {r['load_seconds']} |")
    for load in loads:
        print(f"35,000 cached {load['dim']}-d vectors: lookup {load['lookup_seconds'] * 1000:.0f} ms"
              + (f", embed by name end to end {load['embed_seconds'] * 1000:.0f} ms"
                 if load["embed_seconds"] else "")
              + (f"; cold compute with {load['cold_baseline']} ≈ {load['cold_compute_seconds']} s "
                 f"({load['speedup']}x)" if "speedup" in load else ""))
    real = result["real_flickr_cached"]
    if real:
        print(f"real Flickr8k from the user cache (fresh process view): 35,000 captions "
              f"{real['captions_35k_minilm_seconds'] * 1000:.0f} ms, 7,000 images "
              f"{real['images_7k_lite0_seconds'] * 1000:.0f} ms, recomputed {real['computed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
