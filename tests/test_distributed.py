"""core.distributed: `python -m core embed --engine ray` on 2 local CPUs writes the same vectors as
the single-process path. Ray starts slowly, so everything is one test: pairs, a labeled folder, --json."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from core.__main__ import main
from core.cache import EmbeddingCache
from core.data import load_labeled, load_pairs
from core.embedded import embed

IMAGE, TEXT = "efficientnet-lite0", "minilm"


def test_ray_engine_writes_the_same_vectors_as_one_process(flickr_pairs, data_root, tmp_path, monkeypatch,
                                                           capsys):
    ray = pytest.importorskip("ray")
    pairs_dir = tmp_path / "pairs"
    (pairs_dir / "images").mkdir(parents=True)
    sub = flickr_pairs.first_images(20)
    with open(pairs_dir / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for path, caption in zip(sub.pair_paths, sub.captions):
            w.writerow([path.split("/")[-1], caption])
    for path in sub.images:
        shutil.copy(path, pairs_dir / "images")
    labeled_dir = tmp_path / "labeled"
    for cls in ("cat", "ship"):
        (labeled_dir / cls).mkdir(parents=True)
        for src in sorted((data_root / "cifar10" / "test" / cls).iterdir())[:3]:
            shutil.copy(src, labeled_dir / cls)

    monkeypatch.setenv("ROSETTA_CACHE_DIR", str(tmp_path / "ray-cache"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert main(["embed", "--engine", "ray", "--pairs", str(pairs_dir), "--json"]) == 0
        pairs_summary = json.loads(capsys.readouterr().out)
        assert main(["embed", "--engine", "ray", "--labeled", str(labeled_dir), "--json"]) == 0
        labeled_summary = json.loads(capsys.readouterr().out)
        assert main(["embed", "--engine", "ray", "--pairs", str(pairs_dir), "--json"]) == 0
        again = json.loads(capsys.readouterr().out)
    finally:
        ray.shutdown()
    assert pairs_summary["computed"] == {"images": 20, "captions": len(set(sub.captions))}
    assert labeled_summary["computed"] == 6
    assert again["computed"] == {"images": 0, "captions": 0}           # the shards are the cache's

    pairs = load_pairs(pairs_dir)
    labeled = load_labeled(labeled_dir)
    ray_cache = EmbeddingCache(tmp_path / "ray-cache")
    local_cache = EmbeddingCache(tmp_path / "local-cache")
    for name, items, keys in ((IMAGE, pairs.images, pairs.image_keys), (TEXT, pairs.captions, None),
                              (IMAGE, labeled.paths, labeled.keys)):
        by_ray = embed(name, items, cache=ray_cache, keys=keys, compute=False)
        by_one = embed(name, items, cache=local_cache, keys=keys)
        assert by_ray.ok.all() and by_ray.computed == 0 and by_one.computed > 0
        np.testing.assert_allclose(by_ray.vectors, by_one.vectors, rtol=0, atol=1e-5)
