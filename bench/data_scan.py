"""Cost of decoding every image before it is accepted (core.data.check_image), on Flickr8k.

Baseline, measured in the same run: the old quick check (PIL header parse + ``verify()``, which
misses truncated files). Also: a full-resolution decode (no ``draft``), the first scan of the folder
through ``load_pairs_folder`` (a fresh memo) and its memoised re-scan (a ``stat`` per file).

    .venv/bin/python -m bench.data_scan [--images N]
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

from PIL import Image


def _verify_only(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.verify()


def _full_decode(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=0, help="first N images only (0: all)")
    args = parser.parse_args()
    from core import data as D

    folder = D.demo_sources(required=True)["flickr8k"]
    paths = sorted((folder / "images").glob("*.jpg"))
    if args.images:
        paths = paths[: args.images]
    blobs = [p.read_bytes() for p in paths]  # bytes in memory: the timings below exclude disk reads
    print(f"{len(paths):,} Flickr8k images, {sum(map(len, blobs)) / 1e6:.0f} MB; load {os.getloadavg()}")
    timings = {}
    for name, fn in (("verify() only (old check, baseline)", _verify_only),
                     ("full decode, no draft", _full_decode),
                     ("check_image (decode at 1/8 DCT scale + SHA-256)",
                      lambda b: D.check_image("x", data=b))):
        t = time.perf_counter()
        for b in blobs:
            fn(b)
        timings[name] = time.perf_counter() - t
    base = timings["verify() only (old check, baseline)"]
    for name, seconds in timings.items():
        print(f"  {name:52s} {seconds:7.2f} s  {1e3 * seconds / len(blobs):6.2f} ms/image  "
              f"{seconds / base:6.2f}x baseline")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ROSETTA_CACHE_DIR"] = cache
        t = time.perf_counter()
        pairs = D.load_pairs_folder(folder)
        first = time.perf_counter() - t
        t = time.perf_counter()
        again = D.load_pairs_folder(folder)
        memo = time.perf_counter() - t
    assert len(pairs) == len(again)
    print(f"load_pairs_folder (all {len(pairs.images):,} images, {len(pairs):,} pairs): first scan "
          f"{first:.1f} s, memoised re-scan {memo:.2f} s ({first / memo:.0f}x faster)")


if __name__ == "__main__":
    main()
