"""Embedding on Ray Data: the same encoders, many workers, the same cache shards.

ASIF step 1 (``../shared/papers/asif.md`` section 2) embeds every anchor pair once. At paper scale
(1.6M pictures) one process is not enough, so :func:`embed` runs the encoder functions of
:mod:`core.encoders` through Ray Data — ``map_batches`` with a callable class, one encoder loaded per
actor (``num_gpus=1`` per actor when CUDA is present, else one CPU and one torch thread each) — and
writes the results into the same :class:`core.cache.EmbeddingCache` shards the single-process path
(:func:`core.embedded.embed`) writes, every ``flush_every`` vectors as they stream back, so an
interrupted run loses little and a later run (either engine) computes only what is missing.

Same signature and result as :func:`core.embedded.embed` (``EmbedResult``), so the command line
swaps one for the other (``python -m core embed --engine ray``). Items are image paths or texts
(strings travel to the workers; the workers must see the same files, e.g. a shared file system).
``ray.init()`` is called when Ray is not running: locally that starts a Ray instance on this
machine; with ``RAY_ADDRESS`` set it joins that cluster (see docs/SCALING.md).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from core.cache import FLUSH_EVERY, EmbeddingCache, as_key, text_key
from core.embedded import EmbedResult, Skipped
from core.embedded import embed as embed_locally

Progress = Callable[[int, int], None]

#: Rows handed to one actor call when the caller gives no batch size.
DEFAULT_BATCH = 32


class EncodeBatch:
    """Ray Data callable class: loads encoder ``name`` once per actor; ``__call__`` maps a batch
    ``{"row": int64 [b], "item": str [b]}`` to ``{"row", "vector" float32 [b, d], "error" str [b]}``
    (an item the encoder cannot read gets a zero vector and its one-sentence error)."""

    def __init__(self, name: str, batch_size: int):
        import torch

        from core.encoders import get_encoder

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(1)   # one CPU per actor: no oversubscription
        self.encoder = get_encoder(name, device)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        items = [str(x) for x in batch["item"]]
        errors = [""] * len(items)
        try:
            vectors = self.encoder.encode(items, batch_size=self.batch_size)
        except ValueError:
            vectors = np.zeros((len(items), self.encoder.dim), dtype=np.float32)
            for j, item in enumerate(items):
                try:
                    vectors[j] = self.encoder.encode([item], batch_size=1)[0]
                except ValueError as error:
                    errors[j] = str(error)
        return {"row": np.asarray(batch["row"], dtype=np.int64),
                "vector": np.asarray(vectors, dtype=np.float32), "error": np.asarray(errors, dtype=object)}


def _identity(name: str, cache: EmbeddingCache) -> tuple[str, str]:
    from core.encoders import BUILTIN_ENCODERS

    info = BUILTIN_ENCODERS.get(name.strip())
    if info is not None:
        return info.cache_id, info.modality
    encoder = cache.encoders.get(name)
    return encoder.cache_id, encoder.modality


def start_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` unless Ray is running: a local instance (``num_cpus`` CPUs, default all) or, with
    ``RAY_ADDRESS`` set, the cluster it names."""
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
        if not os.environ.get("RAY_ADDRESS"):
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)


def embed(encoder: str, items: Sequence[Any], *, cache: EmbeddingCache,
          keys: Sequence[bytes | str] | None = None, progress: Progress | None = None,
          batch_size: int | None = None, compute: bool = True, flush_every: int = FLUSH_EVERY,
          num_cpus: int | None = None, concurrency: int | None = None) -> EmbedResult:
    """:func:`core.embedded.embed` with the missing unique items encoded by Ray Data actors.

    ``encoder`` is a name (actors load it themselves). ``concurrency``: actors (default: GPUs
    when CUDA is present, else the CPUs Ray has). Returns the same :class:`EmbedResult`: vectors
    read back from the cache, ``hits`` counted before, ``computed`` the unique items encoded now,
    ``failed`` the items no worker could read.
    """
    if not isinstance(encoder, str):
        raise ValueError("the Ray engine takes an encoder name (each worker loads its own copy).")
    items = list(items)
    bad = [i for i, x in enumerate(items) if not isinstance(x, (str, os.PathLike))]
    if bad:
        raise ValueError(f"the Ray engine takes image paths or texts; item {bad[0]} is neither.")
    model_id, modality = _identity(encoder, cache)
    if keys is None:
        keys = [text_key(str(x)) if modality == "text" else cache.file_key(x) for x in items]
    keys = [as_key(k) for k in keys]
    if len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} items")
    found = cache.contains(model_id, keys)
    first: dict[bytes, int] = {}
    for i in np.flatnonzero(~found).tolist():
        first.setdefault(keys[i], i)
    todo = list(first.values()) if compute else []
    failed: list[Skipped] = []
    if progress is not None:
        progress(0, len(todo))
    if todo:
        failed = _run(encoder, items, keys, todo, model_id, cache, progress, int(batch_size or DEFAULT_BATCH),
                      flush_every, num_cpus, concurrency)
    back = embed_locally(encoder, items, cache=cache, keys=keys, compute=False)
    reason = {keys[s.index]: s.reason for s in failed}       # repeats of a failed item fail too
    listed = {s.index for s in failed}
    failed += [Skipped(i, os.fspath(items[i]), reason[keys[i]]) for i in np.flatnonzero(~back.ok).tolist()
               if keys[i] in reason and i not in listed]
    return EmbedResult(vectors=back.vectors, ok=back.ok, failed=tuple(sorted(failed, key=lambda s: s.index)),
                       hits=int(found.sum()), computed=len(todo))


def _run(name: str, items: list, keys: list[bytes], todo: list[int], model_id: str, cache: EmbeddingCache,
         progress: Progress | None, batch_size: int, flush_every: int, num_cpus: int | None,
         concurrency: int | None) -> list[Skipped]:
    """Encode ``items[todo]`` on Ray Data; cache shards are written as results stream back."""
    import ray
    import torch

    start_ray(num_cpus)
    gpus = torch.cuda.is_available()
    if concurrency is None:
        resources = ray.cluster_resources()
        concurrency = int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 1))
    concurrency = max(1, min(int(concurrency), -(-len(todo) // batch_size)))   # no idle actors
    ds = ray.data.from_items([{"row": i, "item": os.fspath(items[i])} for i in todo],
                             override_num_blocks=max(1, min(-(-len(todo) // batch_size), 4 * concurrency)))
    ds = ds.map_batches(EncodeBatch, fn_constructor_kwargs={"name": name, "batch_size": batch_size},
                        batch_size=batch_size, concurrency=concurrency,
                        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1, batch_format="numpy")
    failed: list[Skipped] = []
    pending_rows: list[np.ndarray] = []
    pending_vecs: list[np.ndarray] = []
    done = 0
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal pending_rows, pending_vecs, last_flush
        if pending_rows:
            rows = np.concatenate(pending_rows)
            cache.put(model_id, [keys[i] for i in rows.tolist()], np.concatenate(pending_vecs))
        pending_rows, pending_vecs, last_flush = [], [], time.monotonic()

    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows, vectors, errors = batch["row"], batch["vector"], batch["error"]
        good = np.asarray([not e for e in errors], dtype=bool)
        failed += [Skipped(int(r), os.fspath(items[int(r)]), str(e)) for r, e in zip(rows[~good], errors[~good])]
        pending_rows.append(rows[good])
        pending_vecs.append(vectors[good])
        done += len(rows)
        if sum(len(r) for r in pending_rows) >= flush_every or time.monotonic() - last_flush >= 30:
            flush()
        if progress is not None:
            progress(done, len(todo))
    flush()
    return failed
