"""Shared pytest fixtures: real data subsets from ``../shared/data`` and their real embeddings.

All fixtures are session scoped and go through the shared embedding cache (``ROSETTA_CACHE_DIR`` or the
user cache dir), so embeddings are computed once per machine and re-used across runs and test files.

* ``data_root``                   the demo data folder (tests needing it are skipped when absent)
* ``embedding_cache``             the shared :class:`core.cache.EmbeddingCache` (it owns the loaded encoders)
* ``flickr_pairs``                PairSet: the first 100 Flickr8k images with all their captions (~500)
* ``flickr_embeddings``           (image [P, 1280] efficientnet-lite0, caption [P, 384] minilm), per pair
* ``cifar_small``                 LabeledSet: the first 20 CIFAR-10 test images of each class (200)
* ``cifar_small_embeddings``      [200, 1280] efficientnet-lite0 embeddings of ``cifar_small``
* ``image_encoder`` / ``text_encoder``   the loaded efficientnet-lite0 / minilm encoders
* ``demo_root``                   (function scope) a fresh workspaces folder with the app set to a small demo
* ``server``                      (function scope) ``(url, tmp_path)``: ``streamlit run app.py`` on the small demo
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FLICKR_IMAGES = 100
CIFAR_PER_CLASS = 20
IMAGE_ENCODER = "efficientnet-lite0"
TEXT_ENCODER = "minilm"


@pytest.fixture(scope="session")
def data_root() -> Path:
    from core.data import EXPECTED_LAYOUT, data_dir

    root = data_dir(required=False)
    if root is None:
        pytest.skip(f"demo data not found.\n{EXPECTED_LAYOUT}")
    return root


@pytest.fixture(scope="session")
def flickr_pairs(data_root):
    from core.data import load_pairs_folder

    folder = data_root / "flickr8k"
    if not folder.is_dir():
        pytest.skip(f"no Flickr8k pairs under {data_root}")
    return load_pairs_folder(folder).first_images(FLICKR_IMAGES)


@pytest.fixture(scope="session")
def cifar_small(data_root):
    from core.data import load_labeled

    folder = data_root / "cifar10" / "test"
    if not folder.is_dir():
        pytest.skip(f"no CIFAR-10 test images under {data_root}")
    return load_labeled(folder).per_class(CIFAR_PER_CLASS)


@pytest.fixture(scope="session")
def embedding_cache():
    from core.cache import default_cache

    return default_cache()


@pytest.fixture(scope="session")
def image_encoder(embedding_cache):
    return embedding_cache.encoders.get(IMAGE_ENCODER)


@pytest.fixture(scope="session")
def text_encoder(embedding_cache):
    return embedding_cache.encoders.get(TEXT_ENCODER)


@pytest.fixture(scope="session")
def flickr_embeddings(flickr_pairs, embedding_cache):
    from core.embedded import EmbeddedPairs

    pairs = EmbeddedPairs.from_pairset(flickr_pairs, IMAGE_ENCODER, TEXT_ENCODER, cache=embedding_cache)
    return pairs.pair_image_vectors, pairs.text_vectors


@pytest.fixture(scope="session")
def cifar_small_embeddings(cifar_small, embedding_cache):
    from core.embedded import EmbeddedLabeled

    return EmbeddedLabeled.from_labeled(cifar_small, IMAGE_ENCODER, cache=embedding_cache).vectors


@pytest.fixture
def demo_root(data_root, tmp_path, monkeypatch) -> Path:
    """An empty workspaces folder; the app (AppTest or a served one) will build a small demo in it."""
    from app_helpers import small_env

    small_env(monkeypatch, tmp_path)
    return tmp_path


@pytest.fixture
def server(data_root, tmp_path):
    """``(url, tmp_path)`` of a real Streamlit server on the small demo (workspaces in tmp_path/ws)."""
    from app_helpers import free_port, start_server, stop_server

    port = free_port()
    proc = start_server(port, tmp_path / "ws", tmp_path / "server.log")
    yield f"http://127.0.0.1:{port}", tmp_path
    stop_server(proc)
