"""A faithful re-implementation of the reference ASIF classification algorithm (noranta4/ASIF,
``relreps.py``: ``relative_represent`` + ``zero_shot_classification``), written from its
description for side-by-side benchmarks. It is *not* used by Rosetta.

Algorithm, as in the reference:
  * relative representation: chunk the queries so that one dense similarity block
    ``[chunk, N_dic]`` fits in ``max_mem_gb``; ``einsum`` then ``topk(k)`` (sorted) per chunk;
  * anchors are processed in dictionaries of ``dic_size``; after each dictionary the running top-k
    and the new top-k are concatenated ([Q, 2k]) and re-reduced with ``topk``;
  * values are raised with ``values ** p`` (NOT sign-safe), scattered into sparse COO tensors and
    row-normalised;
  * image-text similarities: dense ``einsum`` of the two densified sparse matrices when ``N`` is
    below ``max_mem_gb·2^30 / 4 / Q``, else ``torch.sparse.mm`` in 6 query chunks;
  * prediction = argmax over all prompts, class = index // n_templates.
"""
from __future__ import annotations

import torch


def relative_represent(y: torch.Tensor, basis: torch.Tensor, k: int, max_mem_gb: float):
    n_q = y.shape[0]
    values = torch.zeros((n_q, k))
    indices = torch.zeros((n_q, k), dtype=torch.long)
    max_floats = max_mem_gb * 1024 ** 3 / 4
    max_rows = max_floats / basis.shape[0]
    n_chunks = int(n_q / max_rows) + 1
    rows = int(n_q / n_chunks) + n_chunks
    with torch.no_grad():
        for c in range(n_chunks):
            block = torch.einsum("ik,jk->ij", y[c * rows:(c + 1) * rows], basis)
            v, i = torch.topk(block, k, dim=1)
            values[c * rows:(c + 1) * rows] = v
            indices[c * rows:(c + 1) * rows] = i
            del block
    return indices, values


def _to_sparse(idx: torch.Tensor, val: torch.Tensor, shape):
    n = idx.numel()
    first = torch.div(torch.arange(n), idx.shape[1], rounding_mode="floor")
    coords = torch.stack([first, idx.flatten()])
    return torch.sparse_coo_tensor(coords, val.flatten(), shape)


def _normalize_rows(t: torch.Tensor, nnz_per_row: int):
    t = t.coalesce() if not t.is_coalesced() else t
    norms = torch.sparse.sum(t * t, dim=1).to_dense()
    v = t._values().clone().reshape(-1, nnz_per_row).t()
    v /= torch.sqrt(norms)
    return torch.sparse_coo_tensor(t._indices(), v.t().flatten(), t.shape)


def zero_shot_classify(zimgs, ztxts, aimgs, atxts, k: int, p: float, n_templates: int,
                       dic_size: int = 100_000, max_mem_gb: float = 8.0) -> torch.Tensor:
    """Predicted class per image (``[Q]``), the reference way, for one anchor count and one p."""
    n_a = aimgs.shape[0]
    vi = torch.zeros((len(zimgs), 2 * k))
    ii = torch.zeros((len(zimgs), 2 * k), dtype=torch.long)
    vt = torch.zeros((len(ztxts), 2 * k))
    it = torch.zeros((len(ztxts), 2 * k), dtype=torch.long)
    for d in range(n_a // (dic_size + 1) + 1):
        sl = slice(d * dic_size, min(n_a, (d + 1) * dic_size))
        idx, val = relative_represent(zimgs, aimgs[sl], k, max_mem_gb)
        ii[:, :k], vi[:, :k] = idx + d * dic_size, val
        idx, val = relative_represent(ztxts, atxts[sl], k, max_mem_gb)
        it[:, :k], vt[:, :k] = idx + d * dic_size, val
        top_vi, sel = torch.topk(vi, k, dim=1)
        top_ii = torch.gather(ii, 1, sel)
        top_vt, sel = torch.topk(vt, k, dim=1)
        top_it = torch.gather(it, 1, sel)
        ii[:, k:], vi[:, k:] = top_ii, top_vi
        it[:, k:], vt[:, k:] = top_it, top_vt
    txt = _normalize_rows(_to_sparse(top_it, top_vt ** p, (len(ztxts), n_a)), k)
    if n_a < max_mem_gb * 1024 ** 3 / 4 / zimgs.shape[0]:
        img = _to_sparse(top_ii, top_vi ** p, (len(zimgs), n_a))
        sims = torch.einsum("ij,kj->ik", img.to_dense(), txt.to_dense())
    else:
        sims = torch.zeros((len(zimgs), len(ztxts)))
        n_chunks = 6
        zs = zimgs.shape[0]
        bounds = [c * (zs // n_chunks) for c in range(n_chunks)] + [zs]
        for c in range(n_chunks):
            a, b = bounds[c], bounds[c + 1]
            img = _to_sparse(top_ii[a:b], top_vi[a:b] ** p, (b - a, n_a))
            sims[a:b] = torch.sparse.mm(img, txt.t()).to_dense()
    return torch.div(sims.argmax(dim=1), n_templates, rounding_mode="floor")
