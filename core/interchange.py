"""Precomputed vectors in (and out): anchor pairs and labeled sets someone already embedded.

ASIF step 1 (``../shared/papers/asif.md`` section 2) embeds the multimodal dataset with two frozen
encoders. At paper scale (1.6M pairs) researchers already hold those vectors, so a pair set can come
from the files they have instead of from pictures Rosetta embeds itself:

``clip-retrieval``
    clip-retrieval's inference output: ``img_emb/img_emb_{i}.npy``, ``text_emb/text_emb_{i}.npy`` and
    ``metadata/metadata_{i}.parquet`` (one row per pair, same order; ``caption`` plus ``image_path``
    or ``url``), shards in numeric order.
``parquet``
    a ``.parquet`` file (or a folder of them) with an image vector column, a text vector column
    (lists of floats; float16 allowed), ``caption`` and an image path or URL column.
``hf-dataset``
    a Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (``load_from_disk``; a
    ``DatasetDict`` takes ``split``), same columns as parquet.
``imagefolder``
    a Hugging Face ``imagefolder``: pictures plus ``metadata.jsonl`` / ``metadata.csv`` with
    ``file_name`` and ``caption`` (files relative to the metadata file). With vector columns it is
    imported like parquet; without, its pictures and captions are embedded by the named encoders
    through the cache (:class:`core.embedded.EmbeddedPairs`).

Labeled sets (the evaluation pictures): :func:`import_labeled` reads parquet / a saved dataset with a
``label`` column (class names or ``ClassLabel`` ids) and an image vector column, or an ``imagefolder``
with one sub-folder per class (optionally under ``train/``, ``test/`` … split folders), embedded.

Vectors may be float16 on disk; they are read into float32 and L2-normalised (rows that are not
finite or are zero are left out and listed in ``skipped``). Several rows with the same image path
or URL share one image vector (as :class:`core.embedded.EmbeddedPairs` stores them); without a path
column bit-identical image vectors are merged.

The files name no encoder, so the caller does (``image_encoder`` / ``text_encoder``); files written
by :func:`export_pairs` record them (``encoders.json`` beside folder formats, parquet schema
metadata), and a name given that contradicts the recorded one is an error. A built-in encoder name
whose dimension differs from the vectors' is an error. :func:`require_encoder` says clearly when a
text encoder needed for class prompts is not available here (then pass precomputed prompt vectors).

Public API
    ``detect_format(path)`` -> one of ``FORMATS`` or None
    ``import_pairs(path, ...)`` -> ``EmbeddedPairs``;  ``import_labeled(path, ...)`` -> ``EmbeddedLabeled``
    ``export_pairs(pairs, dest, fmt, dtype=...)`` / ``export_labeled(labeled, dest, fmt, dtype=...)``
    ``require_encoder(name, purpose)``;  ``labeled_imagefolder(folder, split=None)`` -> ``LabeledSet``
    ``create_vector_workspace(name, pairs, eval_items, cache, ...)`` -> a workspace of imported pairs
    ``picture_refs(refs, roots)`` -> the references the app may read, the others named only
    ``source_key(path, **options)`` -> a key naming a source's current files (for a saved model)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from core.embedded import EmbeddedLabeled, EmbeddedPairs, Skipped, embed
from core.search import distinct_rows

Progress = Callable[[int, int], None]

FORMATS = ("clip-retrieval", "parquet", "hf-dataset", "imagefolder")
#: Column names looked for, in order, when the caller names none.
IMAGE_VECTOR_COLUMNS = ("image_embedding", "image_embeddings", "img_emb", "image_emb", "image_vector",
                        "image_features")
TEXT_VECTOR_COLUMNS = ("text_embedding", "text_embeddings", "text_emb", "caption_embedding", "text_vector",
                       "text_features")
CAPTION_COLUMNS = ("caption", "text", "captions", "sentence")
IMAGE_REF_COLUMNS = ("image_path", "file_name", "path", "filepath", "url", "image_url", "key")
LABEL_COLUMNS = ("label", "labels", "class", "class_name")
ENCODERS_FILE = "encoders.json"
PARQUET_META_KEY = b"rosetta.encoders"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
SPLIT_NAMES = ("train", "test", "validation", "valid", "val")
#: Rows read per batch from parquet / datasets (bounds the memory of a conversion step).
READ_BATCH_ROWS = 65_536


# ------------------------------------------------------------------------------------------ detection

def _shards(folder: Path, stem: str, suffix: str) -> list[Path]:
    found = [p for p in folder.glob(f"{stem}_*{suffix}") if re.fullmatch(rf"{stem}_\d+{re.escape(suffix)}", p.name)]
    return sorted(found, key=lambda p: int(p.name[len(stem) + 1:-len(suffix)]))


def _metadata_file(folder: Path) -> Path | None:
    for name in METADATA_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def detect_format(path: str | os.PathLike) -> str | None:
    """Which precomputed layout ``path`` is (one of :data:`FORMATS`), or None for anything else
    (e.g. a folder with ``captions.csv``, read by :mod:`core.data`)."""
    p = Path(path).expanduser()
    if p.is_file():
        return "parquet" if p.suffix == ".parquet" else None
    if not p.is_dir():
        return None
    if (p / "img_emb").is_dir() and (p / "text_emb").is_dir():
        return "clip-retrieval"
    if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return "hf-dataset"
    if _metadata_file(p) is not None:
        return "imagefolder"
    if any(p.glob("*.parquet")):
        return "parquet"
    return None


# ------------------------------------------------------------------------------------------ encoders

def recorded_encoders(path: str | os.PathLike) -> dict[str, str]:
    """Encoder names a source records (``{"image_encoder": …, "text_encoder": …}``, possibly empty)."""
    p = Path(path).expanduser()
    out: dict = {}
    if p.is_dir() and (p / ENCODERS_FILE).is_file():
        try:
            out = json.loads((p / ENCODERS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError(f"{p / ENCODERS_FILE} is not valid JSON; fix or delete it.") from None
    elif p.is_file() and p.suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(p).metadata or {}
        if PARQUET_META_KEY in meta:
            out = json.loads(meta[PARQUET_META_KEY].decode("utf-8"))
    if not isinstance(out, dict):
        return {}
    return {k: str(v) for k, v in out.items() if k in ("image_encoder", "text_encoder") and v}


def _resolve_encoder(role: str, given: str | None, recorded: dict, dim: int, source: str) -> str:
    from core.encoders import BUILTIN_ENCODERS

    known = recorded.get(role)
    if given and known and given != known:
        raise ValueError(f"{source} records its {role.replace('_', ' ')} as {known!r}, not {given!r}; "
                         "name the encoder that made the vectors.")
    name = given or known
    if not name:
        flag = "--" + role.replace("_", "-")
        raise ValueError(f"{source} does not say which {role.replace('_', ' ')} made its {dim}-d vectors; "
                         f"name it ({flag} NAME, e.g. efficientnet-lite0, minilm, or any label such as "
                         "'ViT-L-14 (openai)').")
    info = BUILTIN_ENCODERS.get(name)
    if info is not None and info.dim != dim:
        raise ValueError(f"{name} makes {info.dim}-d vectors but {source} holds {dim}-d "
                         f"{role.split('_')[0]} vectors; name the encoder that made them.")
    return name


def require_encoder(name: str, purpose: str) -> None:
    """Raise a ``ValueError`` saying what to do when encoder ``name`` cannot run here (a built-in
    whose weights are not installed, or a label that names no encoder Rosetta knows)."""
    from core.encoders import BUILTIN_ENCODERS, is_available

    if name in BUILTIN_ENCODERS:
        if not is_available(name):
            raise ValueError(f"{purpose} needs {name}, which made the imported vectors, and it is not "
                             f"installed here: {BUILTIN_ENCODERS[name].install}")
        return
    if not (name.startswith("open_clip:") or name.startswith("st:")):
        raise ValueError(f"{purpose} needs the encoder that made the imported vectors ({name!r}), and "
                         "Rosetta cannot run it; give precomputed vectors instead (e.g. prompt "
                         "embeddings as a .npy file) or name a runnable encoder.")


# ------------------------------------------------------------------------------------------ reading

def _vectors_from_arrow(column, source: str, name: str) -> np.ndarray:
    """``[n, d]`` float32 numpy (a writable copy) from an arrow list / fixed-size-list column."""
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if col.null_count:
        raise ValueError(f"{source}: column {name!r} has {col.null_count} empty rows; drop them first.")
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        offsets = np.asarray(col.offsets)
        lengths = np.diff(offsets)
        if lengths.size and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ValueError(f"{source}: column {name!r} has vectors of different lengths "
                             f"({int(lengths[0])} and {int(lengths[bad])} at row {bad}).")
        d = int(lengths[0]) if lengths.size else 0
        col = col.slice(0)  # offsets may not start at 0 after slicing: flatten handles it
    else:
        raise ValueError(f"{source}: column {name!r} is {col.type}, not a list of numbers.")
    values = col.flatten()
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise ValueError(f"{source}: column {name!r} holds {values.type}, not numbers.")
    return np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), d)  # writable


def _pick(names: Sequence[str], wanted: str | None, candidates: Sequence[str], source: str,
          what: str, required: bool = True) -> str | None:
    if wanted:
        if wanted not in names:
            raise ValueError(f"{source} has no column {wanted!r}; check the column name.")
        return wanted
    for c in candidates:
        if c in names:
            return c
    if required:
        raise ValueError(f"{source} has no {what} column (looked for {', '.join(candidates)}); "
                         "name it with the matching option.")
    return None


def _table_batches(path: Path, fmt: str, split: str | None) -> tuple[list[str], Iterator, Path]:
    """``(column names, iterator of pyarrow Tables, folder that relative paths resolve from)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "parquet":
        files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
        names = pq.read_schema(files[0]).names

        def it():
            for f in files:
                for b in pq.ParquetFile(f).iter_batches(batch_size=READ_BATCH_ROWS):
                    yield pa.Table.from_batches([b])
        return names, it(), (path if path.is_dir() else path.parent)
    if fmt == "hf-dataset":
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            splits = list(ds)
            chosen = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
            if chosen not in ds:
                raise ValueError(f"{path} holds {len(splits)} splits; choose one.")
            ds = ds[chosen]
        ds = ds.with_format("arrow")

        def it():
            for r0 in range(0, len(ds), READ_BATCH_ROWS):
                yield ds[r0:r0 + READ_BATCH_ROWS]
        return list(ds.column_names), it(), path
    if fmt == "imagefolder":
        meta = _metadata_file(path)
        if meta is None:
            raise ValueError(f"{path} has no metadata.jsonl or metadata.csv.")
        if meta.suffix == ".jsonl":
            import pyarrow.json as pj

            table = pj.read_json(meta)
        elif meta.suffix == ".csv":
            import pyarrow.csv as pc

            table = pc.read_csv(meta)
        else:
            table = pq.read_table(meta)
        return table.column_names, iter([table]), path
    raise ValueError(f"unknown precomputed format {fmt!r}; one of {', '.join(FORMATS)}.")


def _ref_resolver(root: Path) -> Callable[[str], str]:
    """Image references as the app can show them: URLs and absolute paths as given; relative paths
    joined to ``root`` when the first one exists there (one look, not one per row), else as given
    (the app shows the caption alone where a picture is not reachable)."""
    decided: list[bool] = []

    def resolve(ref: str) -> str:
        if not ref or "://" in ref or os.path.isabs(ref):
            return ref
        if not decided:
            decided.append((root / ref).is_file())
        return os.path.normpath(os.path.join(os.path.abspath(root), ref)) if decided[0] else ref
    return resolve


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise float32 rows in place, in blocks (as :func:`core.search.l2_normalize`: rows
    within 1e-6 of unit norm are left bit-for-bit as they are); rows that are zero or not finite
    (their norm is 0, NaN or infinite) are set to zero. Returns those rows, bool ``[n]``. One pass,
    no ``[n, d]`` temporary (at 1.6M caption rows × 768 that would be 4.9 GB)."""
    bad = np.zeros(x.shape[0], dtype=bool)
    for r0 in range(0, x.shape[0], READ_BATCH_ROWS):
        block = x[r0:r0 + READ_BATCH_ROWS]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))[:, None]
        unusable = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
        bad[r0:r0 + READ_BATCH_ROWS] = unusable
        block[unusable] = 0
        norms[unusable | (np.abs(norms[:, 0] - 1.0) <= 1e-6)] = 1.0
        np.divide(block, norms, out=block, casting="same_kind")
    return bad


def _group_images(refs: list[str] | None, image_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(pair_image [P], first [U])``: pairs grouped by image reference (numbered by first use),
    or, without references, by bit-identical image vectors."""
    if refs is None:
        first, pair_image = distinct_rows(np.ascontiguousarray(image_rows))
        return pair_image, first
    groups: dict[str, int] = {}
    pair_image = np.fromiter((groups.setdefault(r, len(groups)) for r in refs), dtype=np.int64, count=len(refs))
    _, first = np.unique(pair_image, return_index=True)
    return pair_image, first


def _finish_pairs(image_vectors: np.ndarray, pair_image: np.ndarray, text: np.ndarray, captions: list[str],
                  images: list[str], image_encoder: str, text_encoder: str) -> EmbeddedPairs:
    """Normalise (in place), drop pairs whose image or text vector is zero or not finite (listed in
    ``skipped``): the :class:`EmbeddedPairs`. ``image_vectors [U, di]`` float32, one per image."""
    n = len(captions)
    bad_image = _normalize_rows(image_vectors)
    bad = np.flatnonzero(_normalize_rows(text) | bad_image[pair_image])
    text[bad] = 0
    skipped = tuple(Skipped(i, captions[i], "its image or text vector is zero, NaN or infinite", "caption")
                    for i in bad[:1000].tolist())
    out = EmbeddedPairs(image_vectors=image_vectors, pair_image=pair_image,
                        text_vectors=text, captions=captions, images=images,
                        image_encoder=image_encoder, text_encoder=text_encoder, pair_ids=list(range(n)),
                        skipped=skipped)
    return out if bad.size == 0 else out.subset(np.setdiff1d(np.arange(n), bad))


def source_key(path: str | os.PathLike, **options) -> str:
    """A short hex key naming a source's current contents and the import ``options``: the relative
    path, size and modification time of every file under ``path``. A model saved with this key
    (:meth:`core.asif.AsifModel.save_mapped`) is never reopened after a file is changed, added or
    removed (only the file listing is read, not the 4.9 GB of vectors)."""
    p = Path(path).expanduser().resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256(json.dumps(sorted((k, str(v)) for k, v in options.items())).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(p) if p.is_dir() else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def import_pairs(path: str | os.PathLike, *, image_encoder: str | None = None,
                 text_encoder: str | None = None, image_column: str | None = None,
                 text_column: str | None = None, caption_column: str | None = None,
                 image_ref_column: str | None = None, split: str | None = None,
                 limit: int | None = None, cache: Any = None,
                 progress: Progress | None = None) -> EmbeddedPairs:
    """Anchor pairs from a precomputed source (:data:`FORMATS`) as :class:`core.embedded.EmbeddedPairs`.

    ``image_encoder`` / ``text_encoder`` name the encoders that made the vectors (required unless
    the source records them). Column options override the names looked for by default.
    ``limit``: the first N rows only. An ``imagefolder`` without vector columns is embedded by the
    named encoders through ``cache`` (a :class:`core.cache.EmbeddingCache`). Errors are
    ``ValueError``s with a sentence naming the fix.
    """
    p = Path(path).expanduser()
    fmt = detect_format(p)
    if fmt is None:
        raise ValueError(f"{p} is not a precomputed-vector source; expected one of {', '.join(FORMATS)} "
                         "(clip-retrieval img_emb/ text_emb/ metadata/, .parquet, a saved datasets "
                         "folder, or an imagefolder with metadata.jsonl).")
    import pyarrow as pa

    try:
        return _import_pairs(p, fmt, image_encoder, text_encoder, image_column, text_column, caption_column,
                             image_ref_column, split, limit, cache, progress)
    except (pa.ArrowException, OSError):     # a damaged or foreign file: its text is never quoted
        raise ValueError(f"{p.name} could not be read as {fmt}: a file in it is damaged or in another "
                         "format.") from None


def _import_pairs(p: Path, fmt: str, image_encoder, text_encoder, image_column, text_column, caption_column,
                  image_ref_column, split, limit, cache, progress) -> EmbeddedPairs:
    source = str(p)
    recorded = recorded_encoders(p)
    if fmt == "clip-retrieval":
        return _import_clip_retrieval(p, image_encoder, text_encoder, recorded, limit, image_ref_column)
    names, batches, root = _table_batches(p, fmt, split)
    caption_col = _pick(names, caption_column, CAPTION_COLUMNS, source, "caption")
    ref_col = _pick(names, image_ref_column, IMAGE_REF_COLUMNS, source, "image path or URL", required=False)
    img_col = _pick(names, image_column, IMAGE_VECTOR_COLUMNS, source, "image vector", required=fmt != "imagefolder")
    txt_col = _pick(names, text_column, TEXT_VECTOR_COLUMNS, source, "text vector", required=img_col is not None)
    if img_col is None:
        return _embed_imagefolder(p, batches, caption_col, ref_col, image_encoder, text_encoder,
                                  recorded, limit, cache, progress)
    img_parts, txt_parts, captions, refs = [], [], [], []
    n = 0
    for table in batches:
        if limit is not None and n >= limit:
            break
        if limit is not None:
            table = table.slice(0, limit - n)
        img_parts.append(_vectors_from_arrow(table.column(img_col), source, img_col))
        txt_parts.append(_vectors_from_arrow(table.column(txt_col), source, txt_col))
        captions += [str(c) if c is not None else "" for c in table.column(caption_col).to_pylist()]
        if ref_col is not None:
            refs += [str(r) if r is not None else "" for r in table.column(ref_col).to_pylist()]
        n += table.num_rows
    if n == 0:
        raise ValueError(f"{source} holds no rows.")
    img = np.concatenate(img_parts) if len(img_parts) > 1 else img_parts[0]
    txt = np.concatenate(txt_parts) if len(txt_parts) > 1 else txt_parts[0]
    ie = _resolve_encoder("image_encoder", image_encoder, recorded, img.shape[1], source)
    te = _resolve_encoder("text_encoder", text_encoder, recorded, txt.shape[1], source)
    resolve = _ref_resolver(root)
    refs_out = [resolve(r) for r in refs] if ref_col is not None else None
    pair_image, first = _group_images(refs_out, img)
    images = list(dict.fromkeys(refs_out)) if refs_out is not None else [f"{source}#image{j}" for j in range(first.size)]
    return _finish_pairs(np.array(img[first], dtype=np.float32), pair_image, txt, captions, images, ie, te)


class _Shard:
    """One ``.npy`` shard, mapped only while it is read (:meth:`read`), so at most one shard's pages
    are in this process at a time (at 1.6M float16 pairs the shards are 4.9 GB)."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, shape

    def __len__(self) -> int:
        return self.shape[0]

    def read(self) -> np.ndarray:
        """The shard memory-mapped: only the rows taken from it are read."""
        return np.load(self.path, mmap_mode="r", allow_pickle=False)


def _import_clip_retrieval(p: Path, image_encoder, text_encoder, recorded, limit, ref_column) -> EmbeddedPairs:
    import pyarrow.parquet as pq

    source = str(p)
    imgs = _shards(p / "img_emb", "img_emb", ".npy")
    txts = _shards(p / "text_emb", "text_emb", ".npy")
    metas = _shards(p / "metadata", "metadata", ".parquet")
    if not imgs or len(imgs) != len(txts) or len(imgs) != len(metas):
        raise ValueError(f"{source}: expected as many img_emb_N.npy, text_emb_N.npy and metadata_N.parquet "
                         f"shards; found {len(imgs)}, {len(txts)} and {len(metas)}.")
    maps = []
    for a, b, m in zip(imgs, txts, metas):
        try:
            x, y = np.load(a, mmap_mode="r", allow_pickle=False), np.load(b, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"{a.name} or {b.name} is not a readable .npy array.") from None
        rows = pq.read_metadata(m).num_rows
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) != rows:
            raise ValueError(f"{source}: shard {a.name} has {x.shape} image and {y.shape} text vectors for "
                             f"{rows} metadata rows; they must match.")
        maps.append((_Shard(a, x.shape), _Shard(b, y.shape), m))     # mapped again one at a time below
    di, dt = maps[0][0].shape[1], maps[0][1].shape[1]
    if any(x.shape[1] != di or y.shape[1] != dt for x, y, _ in maps):
        raise ValueError(f"{source}: shards disagree on the vector dimension.")
    ie = _resolve_encoder("image_encoder", image_encoder, recorded, di, source)
    te = _resolve_encoder("text_encoder", text_encoder, recorded, dt, source)
    total = sum(len(x) for x, _, _ in maps)
    n = total if limit is None else min(limit, total)
    captions: list[str] = []
    refs: list[str] | None = []
    resolve = _ref_resolver(p)
    for x, _, m in maps:                                    # captions and image references first
        if len(captions) >= n:
            break
        take = min(len(x), n - len(captions))
        names = pq.read_schema(m).names
        cap_col = _pick(names, None, CAPTION_COLUMNS, str(m), "caption")
        ref_col = _pick(names, ref_column, IMAGE_REF_COLUMNS, str(m), "image path or URL", required=False)
        table = pq.read_table(m, columns=[c for c in (cap_col, ref_col) if c]).slice(0, take)
        captions += [str(c) if c is not None else "" for c in table.column(cap_col).to_pylist()]
        if ref_col is None:
            refs = None
        elif refs is not None:
            refs += [resolve(str(r) if r is not None else "") for r in table.column(ref_col).to_pylist()]
    txt = np.empty((n, dt), dtype=np.float32)
    if refs is None:                                        # group by vector: every image row needed
        rows = np.empty((n, di), dtype=np.float32)
    r0 = 0
    for x, y, _ in maps:
        take = min(len(x), n - r0)
        if take <= 0:
            break
        txt[r0:r0 + take] = y.read()[:take]
        if refs is None:
            rows[r0:r0 + take] = x.read()[:take]
        r0 += take
    pair_image, first = _group_images(refs, rows if refs is None else None)
    if refs is None:                                        # every image row was read already
        img = rows[first]
    else:
        img = np.empty((first.size, di), dtype=np.float32)  # only one row per image is read
        starts = np.cumsum([0] + [len(x) for x, _, _ in maps])
        shard_of = np.searchsorted(starts, first, side="right") - 1
        for s_no, (x, _, _) in enumerate(maps):
            sel = np.flatnonzero(shard_of == s_no)
            if sel.size:
                img[sel] = x.read()[first[sel] - starts[s_no]]
    images = list(dict.fromkeys(refs)) if refs is not None else [f"{source}#image{j}" for j in range(first.size)]
    return _finish_pairs(img, pair_image, txt, captions, images, ie, te)


def _embed_imagefolder(p: Path, batches, caption_col, ref_col, image_encoder, text_encoder, recorded,
                       limit, cache, progress) -> EmbeddedPairs:
    """An imagefolder without vectors: its pictures and captions embedded by name through ``cache``."""
    if ref_col is None:
        raise ValueError(f"{p}: the metadata needs a file_name column naming each picture.")
    if cache is None:
        raise ValueError(f"{p} holds pictures without vectors: embedding them needs the embedding cache.")
    ie = image_encoder or recorded.get("image_encoder")
    te = text_encoder or recorded.get("text_encoder")
    if not ie or not te:
        raise ValueError(f"{p} holds pictures without vectors: name the image and text encoders to embed them.")
    table = next(batches)
    if limit is not None:
        table = table.slice(0, limit)
    refs = [str(r) for r in table.column(ref_col).to_pylist()]
    captions = [str(c) if c is not None else "" for c in table.column(caption_col).to_pylist()]
    root = os.path.abspath(p)
    groups: dict[str, int] = {}
    pair_image = []
    for r in refs:
        full = os.path.normpath(os.path.join(root, r))
        if not full.startswith(root + os.sep):
            raise ValueError(f"{p}: its metadata names a file outside the folder; fix the file_name column.")
        pair_image.append(groups.setdefault(full, len(groups)))
    return EmbeddedPairs.from_items(list(groups), pair_image, captions, ie, te, cache=cache, progress=progress)


# ------------------------------------------------------------------------------------------ labeled

def labeled_imagefolder(folder: str | os.PathLike, split: str | None = None):
    """A :class:`core.data.LabeledSet` from an imagefolder with one sub-folder per class, either at
    the top or under split folders (``train/``, ``test/`` …; ``split`` chooses, default ``test`` then
    the only one)."""
    from core.data import load_labeled

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of class sub-folders.")
    subs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    splits = [s for s in subs if s in SPLIT_NAMES]
    if splits and len(splits) == len(subs):
        chosen = split or ("test" if "test" in splits else splits[0] if len(splits) == 1 else None)
        if chosen not in splits:
            raise ValueError(f"{root} holds the split folders {', '.join(splits)}; choose one.")
        root = root / chosen
    elif split:
        raise ValueError(f"{root} has no split folders; leave the split out.")
    return load_labeled(root)


def import_labeled(path: str | os.PathLike, *, image_encoder: str | None = None,
                   image_column: str | None = None, label_column: str | None = None,
                   image_ref_column: str | None = None, split: str | None = None,
                   cache: Any = None, progress: Progress | None = None) -> EmbeddedLabeled:
    """Labeled pictures as :class:`core.embedded.EmbeddedLabeled`: from parquet / a saved dataset
    with a label column and an image vector column, or from an imagefolder with class sub-folders
    (embedded by ``image_encoder`` through ``cache``). Class names: the ``ClassLabel`` names, else
    the sorted distinct string labels."""
    from core.arrays import l2_normalize

    p = Path(path).expanduser()
    fmt = detect_format(p)
    if fmt not in ("parquet", "hf-dataset"):
        if cache is None or not image_encoder:
            raise ValueError(f"{p}: pictures to embed need an image encoder name and the embedding cache.")
        return EmbeddedLabeled.from_labeled(labeled_imagefolder(p, split), image_encoder, cache=cache,
                                            progress=progress)
    source = str(p)
    names, batches, root = _table_batches(p, fmt, split)
    img_col = _pick(names, image_column, IMAGE_VECTOR_COLUMNS, source, "image vector")
    lab_col = _pick(names, label_column, LABEL_COLUMNS, source, "label")
    ref_col = _pick(names, image_ref_column, IMAGE_REF_COLUMNS, source, "image path or URL", required=False)
    parts, labels, refs = [], [], []
    resolve = _ref_resolver(root)
    class_names = _class_label_names(p, fmt, split, lab_col)
    for table in batches:
        parts.append(_vectors_from_arrow(table.column(img_col), source, img_col))
        labels += table.column(lab_col).to_pylist()
        if ref_col is not None:
            refs += [resolve(str(r)) for r in table.column(ref_col).to_pylist()]
    vectors = np.concatenate(parts)
    if class_names is None:
        class_names = sorted({str(x) for x in labels})
        index = {c: i for i, c in enumerate(class_names)}
        y = np.asarray([index[str(x)] for x in labels], dtype=np.int64)
    else:
        y = np.asarray(labels, dtype=np.int64)
    ie = _resolve_encoder("image_encoder", image_encoder, recorded_encoders(p), vectors.shape[1], source)
    ok = np.isfinite(vectors).all(axis=1) & (np.abs(vectors).max(axis=1) > 0)
    out = EmbeddedLabeled(vectors=l2_normalize(np.where(ok[:, None], vectors, 0).astype(np.float32)), labels=y,
                          class_names=class_names, paths=refs or [f"{source}#{i}" for i in range(len(y))],
                          encoder=ie, skipped=tuple(Skipped(int(i), f"row {int(i)}", "its vector is zero, NaN or infinite")
                                                    for i in np.flatnonzero(~ok)[:1000]))
    return out if ok.all() else out.subset(np.flatnonzero(ok))


def _class_label_names(p: Path, fmt: str, split: str | None, column: str) -> list[str] | None:
    if fmt != "hf-dataset":
        return None
    import datasets

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split or ("train" if "train" in ds else list(ds)[0])]
    feature = ds.features.get(column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


# ------------------------------------------------------------------------------------------ export

def _arrow_vectors(x: np.ndarray, dtype: str):
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.dtype(dtype))
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])


def export_pairs(pairs: EmbeddedPairs, dest: str | os.PathLike, fmt: str, *, dtype: str = "float16",
                 shard_rows: int = 1_000_000) -> Path:
    """Write ``pairs`` as a precomputed source of format ``fmt`` (one row per pair: the pair's image
    vector, caption vector, caption, image path) with vectors as ``dtype`` (``float16`` or
    ``float32``), recording the encoder names. ``imagefolder`` links the pictures into ``dest``
    (they must be files). Returns the path to import from."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}.")
    if dtype not in ("float16", "float32"):
        raise ValueError("dtype must be float16 or float32.")
    dest = Path(dest)
    encoders = {"image_encoder": pairs.image_encoder, "text_encoder": pairs.text_encoder}
    refs = pairs.pair_paths
    if fmt == "clip-retrieval":
        for sub in ("img_emb", "text_emb", "metadata"):
            (dest / sub).mkdir(parents=True, exist_ok=True)
        for s, r0 in enumerate(range(0, len(pairs), shard_rows)):
            sel = slice(r0, r0 + shard_rows)
            np.save(dest / "img_emb" / f"img_emb_{s}.npy",
                    pairs.image_vectors[pairs.pair_image[sel]].astype(dtype))
            np.save(dest / "text_emb" / f"text_emb_{s}.npy", pairs.text_vectors[sel].astype(dtype))
            pq.write_table(pa.table({"image_path": refs[sel], "caption": pairs.captions[sel]}),
                           dest / "metadata" / f"metadata_{s}.parquet")
        (dest / ENCODERS_FILE).write_text(json.dumps(encoders), encoding="utf-8")
        return dest
    columns = {"image_path": refs, "caption": list(pairs.captions),
               "image_embedding": _arrow_vectors(pairs.pair_image_vectors, dtype),
               "text_embedding": _arrow_vectors(pairs.text_vectors, dtype)}
    if fmt == "imagefolder":
        dest.mkdir(parents=True, exist_ok=True)
        names = {}
        for j, path in enumerate(pairs.images):
            name = f"{j:08d}{Path(path).suffix}"
            target = dest / name
            if not target.exists():
                os.symlink(os.path.abspath(path), target)
            names[j] = name
        columns["file_name"] = [names[j] for j in pairs.pair_image.tolist()]
        del columns["image_path"]
        table = pa.table(columns)
        with open(dest / "metadata.jsonl", "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row) + "\n")
        (dest / ENCODERS_FILE).write_text(json.dumps(encoders), encoding="utf-8")
        return dest
    table = pa.table(columns)
    if fmt == "parquet":
        dest.parent.mkdir(parents=True, exist_ok=True)
        table = table.replace_schema_metadata({PARQUET_META_KEY: json.dumps(encoders).encode("utf-8")})
        pq.write_table(table, dest)
        return dest
    import datasets

    datasets.Dataset(table).save_to_disk(str(dest))
    (dest / ENCODERS_FILE).write_text(json.dumps(encoders), encoding="utf-8")
    return dest


def export_labeled(labeled: EmbeddedLabeled, dest: str | os.PathLike, fmt: str = "parquet", *,
                   dtype: str = "float16") -> Path:
    """Write labeled vectors (``image_path``, ``label`` as class names, ``image_embedding``) as
    ``parquet`` or ``hf-dataset`` (where ``label`` is a ``ClassLabel``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = Path(dest)
    encoders = {"image_encoder": labeled.encoder}
    vecs = _arrow_vectors(labeled.vectors, dtype)
    if fmt == "parquet":
        dest.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"image_path": list(labeled.paths),
                          "label": [labeled.class_names[i] for i in labeled.labels.tolist()],
                          "image_embedding": vecs})
        pq.write_table(table.replace_schema_metadata({PARQUET_META_KEY: json.dumps(encoders).encode()}), dest)
        return dest
    if fmt != "hf-dataset":
        raise ValueError("labeled sets export as parquet or hf-dataset.")
    import datasets

    ds = datasets.Dataset(pa.table({"image_path": list(labeled.paths), "label": labeled.labels.tolist(),
                                    "image_embedding": vecs}))
    ds = ds.cast_column("label", datasets.ClassLabel(names=list(labeled.class_names)))
    ds.save_to_disk(str(dest))
    (dest / ENCODERS_FILE).write_text(json.dumps(encoders), encoding="utf-8")
    return dest


# ------------------------------------------------------------------------------------------ workspaces

#: :func:`check_made_by` re-embeds this many items per side, and wants at least this cosine for each
#: (float16 copies of the encoder's own vectors reach 0.9999 and more)
CHECK_SAMPLE, CHECK_MIN_COSINE = 8, 0.99


def check_made_by(encoder: str, items: Sequence[Any], vectors: np.ndarray, cache: Any, what: str) -> None:
    """Refuse vectors that encoder ``encoder`` did not make: :data:`CHECK_SAMPLE` of ``items``
    (spread evenly, so the same ones every time) are embedded through ``cache`` and each must have
    cosine ≥ :data:`CHECK_MIN_COSINE` with its given row of ``vectors`` (unit rows); otherwise one
    sentence says so. ``what`` names an item ("picture", "caption") in that sentence."""
    at = np.unique(np.linspace(0, len(items) - 1, num=min(CHECK_SAMPLE, len(items))).astype(np.int64))
    res = embed(encoder, [items[i] for i in at], cache=cache)
    given = np.asarray(vectors[at], dtype=np.float32)
    if res.vectors.shape[1] != given.shape[1]:
        raise ValueError(f"These vectors have {given.shape[1]} dimensions but {encoder} makes "
                         f"{res.vectors.shape[1]}; name the encoder that made them.")
    cos = np.sum(res.vectors[res.ok] * given[res.ok], axis=1)
    if cos.size and float(cos.min()) < CHECK_MIN_COSINE:
        raise ValueError(f"These {what} vectors were not made by {encoder}: embedded again here, "
                         f"{int((cos < CHECK_MIN_COSINE).sum())} of {cos.size} checked differ (cosine as low "
                         f"as {float(cos.min()):.2f}); name the encoder that made them.")


def picture_refs(refs: Sequence[str], roots: Sequence[str | os.PathLike] | None = None) -> list[str]:
    """Picture references of imported pairs as the app may use them: a file inside ``roots``
    (default :func:`core.data.allowed_roots`, the folders the app may read; links resolved) as
    given, anything else (a URL, a relative path, a file elsewhere, a stored-reference escape such
    as ``ws:../x``) named only, ``core.store.EXTERNAL_REF`` + the reference: never read.

    >>> picture_refs(["https://example.org/a.jpg", "../b.jpg"], roots=["/nowhere"])
    ['external:https://example.org/a.jpg', 'external:../b.jpg']
    """
    from core import store
    from core.data import allowed_roots

    where = [os.path.realpath(r).rstrip(os.sep) + os.sep for r in (allowed_roots() if roots is None else roots)]

    def readable(ref: str) -> bool:
        if "://" in ref or not os.path.isabs(ref):
            return False
        real = os.path.realpath(ref)
        return any(real.startswith(r) for r in where) and os.path.isfile(real)

    return [ref if readable(ref) else store.EXTERNAL_REF + ref for ref in refs]


def create_vector_workspace(name: str, pairs: EmbeddedPairs, eval_items: Sequence[tuple], cache: Any, *,
                            settings: dict | None = None, roots: Sequence[str | os.PathLike] | None = None,
                            root: str | os.PathLike | None = None, source: dict | None = None) -> tuple[Any, int]:
    """A new workspace whose anchors are the imported ``pairs`` (pair ids ``0..P-1`` in their order),
    and how many of their pictures it only names (not files the app may read).

    Their vectors are kept inside the workspace (``core.store.VECTORS_DIR``, as
    :func:`core.asif.save_mapped_pairs` writes them) and memory-mapped when it opens, so a 1.6M-pair
    workspace opens without reading or copying its 9.8 GB of vectors; none of them goes into the
    shared embedding cache (only the encoders' own vectors of the sample the check embeds). A picture is referenced where it is when it is a file inside ``roots`` (default
    :func:`core.data.allowed_roots`: the folders the app may read), so its thumbnail shows; any other
    reference (a URL, a path elsewhere or relative) is kept as text only (``core.store.EXTERNAL_REF``)
    and the caption is shown alone. Both encoders must run here (:func:`require_encoder`): the
    workspace embeds its labeled pictures and class prompts with them, so the vectors are first
    checked against them (:func:`check_made_by`: a sample of the captions, and of the pictures that
    are on this computer); vectors another model made are refused in one sentence and nothing is
    created. ``settings`` / ``root`` / ``source`` as :func:`core.store.create_workspace` (the
    encoders are always those that made the vectors)."""
    from core import store
    from core.asif import save_mapped_pairs

    require_encoder(pairs.image_encoder, "A workspace's test pictures")
    require_encoder(pairs.text_encoder, "A workspace's class prompts")
    refs = picture_refs(pairs.images, roots)
    sample = np.unique(np.linspace(0, len(refs) - 1, num=min(len(refs), 8 * CHECK_SAMPLE)).astype(np.int64))
    shown = [i for i in sample.tolist() if not refs[i].startswith(store.EXTERNAL_REF)]
    if shown:
        check_made_by(pairs.image_encoder, [refs[i] for i in shown], pairs.image_vectors[shown], cache, "picture")
    check_made_by(pairs.text_encoder, pairs.captions, pairs.text_vectors, cache, "caption")
    rows = [(refs[j], c) for j, c in zip(pairs.pair_image.tolist(), pairs.captions)]
    chosen = {**(settings or {}), "image_encoder": pairs.image_encoder, "text_encoder": pairs.text_encoder}

    def vectors(folder: Path) -> None:
        save_mapped_pairs(folder / store.VECTORS_DIR, store.VECTORS_KEY, pairs.image_vectors,
                          pairs.pair_image, pairs.text_vectors, np.arange(len(rows), dtype=np.int64),
                          k=store.default_k(len(rows)),
                          info={"image_encoder": pairs.image_encoder, "text_encoder": pairs.text_encoder})

    ws = store.create_workspace(name, rows, eval_items, chosen, root=root,
                                source=source or {"kind": "precomputed"}, prepare=vectors)
    return ws, sum(r.startswith(store.EXTERNAL_REF) for r in refs)
