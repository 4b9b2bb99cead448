"""The demo recipe: Flickr8k pairs as anchors, CIFAR-10 test pictures as the labeled set.

Everything is read at run time from the demo data folder (``core.data.demo_data_root``:
``$ROSETTA_DATA``, default ``../shared/data``) through :mod:`core.data`'s validating loaders, and
stored in a workspace as portable ``demo:<relative path>`` references.
"""
from __future__ import annotations

import os
from pathlib import Path

from core import store

#: The demo labels the first 100 CIFAR-10 test pictures of each class by default, so that a cold start
#: embeds 8,000 images rather than 17,000; ``ROSETTA_DEMO_PER_CLASS=1000`` takes all of them.
DEMO_PER_CLASS = 100


def demo_sizes() -> tuple[int | None, int | None]:
    """Demo size: ``ROSETTA_DEMO_IMAGES`` Flickr8k images (default all) and
    ``ROSETTA_DEMO_PER_CLASS`` CIFAR-10 test images per class (default :data:`DEMO_PER_CLASS`)."""
    def read(var, default):
        v = os.environ.get(var, "").strip()
        return int(v) if v else default
    return read("ROSETTA_DEMO_IMAGES", None), read("ROSETTA_DEMO_PER_CLASS", DEMO_PER_CLASS)


def demo_pairs_and_items(n_images: int | None = None, per_class: int | None = None,
                         data_root: str | Path | None = None):
    """Flickr8k pairs of the first ``n_images`` images (caption-file order) and the first
    ``per_class`` CIFAR-10 test images of each class (sorted by file name); None = all.

    Returns workspace rows ``("demo:flickr8k/images/<name>", caption)`` and
    ``("demo:cifar10/test/<class>/<name>", class)``.
    """
    from core.data import demo_data_root, load_labeled, load_pairs_folder

    data_root = Path(data_root) if data_root is not None else demo_data_root()
    flickr, test_dir = data_root / "flickr8k", data_root / "cifar10" / "test"
    if not (flickr / "captions.csv").is_file() or not test_dir.is_dir():
        raise ValueError(
            f"Demo data not found under {data_root}: expected flickr8k/captions.csv, flickr8k/images/ "
            "and cifar10/test/<class>/*.jpg. Set ROSETTA_DATA to the folder that holds them.")
    pairs: list[tuple[str, str]] = []
    if n_images != 0:
        pair_set = load_pairs_folder(flickr)
        if n_images is not None:
            pair_set = pair_set.first_images(n_images)
        pairs = [(f"demo:{Path(pair_set.images[i]).relative_to(data_root).as_posix()}", caption)
                 for i, caption in zip(pair_set.pair_image.tolist(), pair_set.captions)]
    labeled = load_labeled(test_dir, limit_per_class=per_class)
    items = [(f"demo:{Path(path).relative_to(data_root).as_posix()}", labeled.class_names[label])
             for path, label in zip(labeled.paths, labeled.labels.tolist())]
    return pairs, items


def demo_labeled_items(per_class: int | None = None) -> list[tuple[str, str]]:
    """The CIFAR-10 test pictures of the demo data (first ``per_class`` per class)."""
    return demo_pairs_and_items(0, per_class)[1]


def create_demo_workspace(name: str = "demo", n_images: int | None = None, per_class: int | None = None,
                          root: str | Path | None = None, settings: dict | None = None) -> store.Workspace:
    """Flickr8k pairs as anchors, CIFAR-10 test as the labeled set (sizes: see :func:`demo_sizes`)."""
    if n_images is None and per_class is None:
        n_images, per_class = demo_sizes()
    pairs, items = demo_pairs_and_items(n_images, per_class)
    s = {"classes": sorted({lab for _, lab in items})}
    s.update(settings or {})
    return store.create_workspace(name, pairs, items, s, root,
                                  {"kind": "demo", "n_images": n_images, "per_class": per_class})
