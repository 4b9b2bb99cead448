"""core.search: exact chunked top-k (canonical ties, bounded memory), FAISS backends, recall."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.arrays import l2_normalize
from core.search import build_faiss_index, exact_topk, faiss_search, recall_at_k, similarity_block, topk


def _unit(rng, n, d):
    return l2_normalize(rng.normal(size=(n, d)).astype(np.float32))


def _naive(q, b, k):
    s = q @ b.T
    out_i = np.empty((len(q), k), dtype=np.int64)
    for r in range(len(q)):
        o = np.lexsort((np.arange(b.shape[0]), -s[r]))[:k]
        out_i[r] = o
    return out_i


@pytest.mark.parametrize("memory_bytes", [4096 * 4, 10 ** 9])
def test_exact_topk_matches_naive_and_is_chunk_independent(memory_bytes):
    rng = np.random.default_rng(0)
    q, b = _unit(rng, 150, 24), _unit(rng, 700, 24)
    idx, val = exact_topk(q, b, 37, memory_bytes=memory_bytes)
    assert idx.shape == (150, 37) and val.dtype == np.float32
    np.testing.assert_array_equal(idx, _naive(q, b, 37))
    np.testing.assert_allclose(val, np.take_along_axis(q @ b.T, idx, 1), atol=1e-5)
    assert (np.diff(val, axis=1) <= 0).all()


def test_ties_break_by_lower_index_even_past_the_extra_candidates():
    rng = np.random.default_rng(1)
    base = _unit(rng, 50, 8)
    dup = np.repeat(base[:1], 40, axis=0)  # 40 identical rows: a tie group larger than TIE_EXTRA
    b = np.concatenate([base[1:10], dup, base[10:]])
    q = base[:1] + 0.0  # most similar to the duplicated row
    idx, val = exact_topk(q, b, 25)
    np.testing.assert_array_equal(idx[0], np.arange(9, 34))
    assert np.all(val[0] == val[0, 0])


def test_similarity_block_is_bit_identical_to_a_large_product():
    rng = np.random.default_rng(2)
    q, b = _unit(rng, 300, 96), _unit(rng, 500, 96)
    full = similarity_block(q, b)
    for rows, cols in [(slice(3, 4), slice(7, 8)), (slice(0, 300), slice(10, 12)), (slice(5, 70), slice(0, 500))]:
        np.testing.assert_array_equal(similarity_block(q[rows], b[cols]), full[rows, cols])


@pytest.mark.parametrize("bad", ["k0", "kbig", "nan", "dim", "empty"])
def test_exact_topk_rejects_bad_input(bad):
    rng = np.random.default_rng(3)
    q, b = _unit(rng, 5, 4), _unit(rng, 10, 4)
    args = {"k0": (q, b, 0), "kbig": (q, b, 11), "dim": (q, _unit(rng, 10, 5), 2),
            "empty": (q[:0], b, 2)}
    if bad == "nan":
        q2 = q.copy()
        q2[1, 2] = np.nan
        args["nan"] = (q2, b, 2)
    with pytest.raises(ValueError):
        exact_topk(*args[bad])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_exact_topk_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    q, b = _unit(rng, 200, 32), _unit(rng, 3000, 32)
    ci, cv = exact_topk(q, b, 50, device="cpu")
    gi, gv = exact_topk(q, b, 50, device="cuda", memory_bytes=64 * 1024)
    assert recall_at_k(gi, ci) > 0.999
    np.testing.assert_allclose(gv, cv, atol=1e-5)


def test_faiss_backends_and_recall():
    rng = np.random.default_rng(5)
    b = _unit(rng, 2000, 32)
    q = _unit(rng, 100, 32)
    ei, ev = exact_topk(q, b, 10)
    fi, fv = topk(q, b, 10, backend="faiss-flat")
    assert recall_at_k(fi, ei) == 1.0
    np.testing.assert_allclose(fv, ev, atol=1e-5)
    for backend, params in [("faiss-ivf", {"nlist": 32, "nprobe": 32}),
                            ("faiss-hnsw", {"ef_search": 200}),
                            ("faiss-ivfpq", {"nlist": 16, "nprobe": 16, "pq_m": 8, "pq_bits": 4})]:
        ai, _ = topk(q, b, 10, backend=backend, **params)
        r = recall_at_k(ai, ei)
        floor = 0.2 if backend == "faiss-ivfpq" else 0.9
        assert r >= floor, (backend, r)
    index = build_faiss_index(b, "ivf", nlist=32)
    lo = recall_at_k(faiss_search(index, q, 10, nprobe=1)[0], ei)
    hi = recall_at_k(faiss_search(index, q, 10, nprobe=32)[0], ei)
    assert hi >= lo and hi == 1.0
    with pytest.raises(ValueError):
        topk(q, b, 10, backend="annoy")


def test_block_topk_path_and_dedup_index_equal_plain_search():
    from core.search import DedupIndex

    rng = np.random.default_rng(6)
    u = _unit(rng, 3000, 16)
    base = np.repeat(u, 5, axis=0)[rng.permutation(15000)]
    base[7:9] = u[11]  # a row with 7 copies
    q = _unit(rng, 120, 16)
    q[3] = u[11]
    sims = similarity_block(q, base)
    naive = np.lexsort((np.broadcast_to(np.arange(15000), sims.shape), -sims), axis=-1)[:, :100]
    plain_i, plain_v = exact_topk(q, base, 100)  # 15000 >= 128 * 116: the block-max top-k path
    np.testing.assert_array_equal(plain_i, naive)
    index = DedupIndex(base)
    assert index.unique.shape[0] == 3000
    di, dv = index.topk(q, 100)
    np.testing.assert_array_equal(di, plain_i)
    np.testing.assert_array_equal(dv, plain_v)


def test_block_topk_keeps_the_columns_past_the_last_full_block():
    from core.search import _block_topk

    rng = np.random.default_rng(7)
    n, kk = 128 * 40 + 5, 40  # 8 strided blocks and 5 tail columns outside them
    sims = torch.from_numpy(rng.normal(size=(30, n)).astype(np.float32))
    sims[:, -5:] += 10.0  # the tail holds each row's five best columns
    v, i = _block_topk(sims, kk)
    expected = torch.topk(sims, kk, dim=1).values
    np.testing.assert_array_equal(np.sort(v.numpy(), 1), np.sort(expected.numpy(), 1))
    assert set(range(n - 5, n)) <= set(i[0].tolist())


def test_distinct_rows_separates_rows_that_agree_on_the_probe_columns():
    from core.search import distinct_rows

    rng = np.random.default_rng(8)
    base = rng.normal(size=(60, 100)).astype(np.float32)
    base[20:40] = base[:20]                      # 20 exact duplicates
    base[40:60] = base[:20]
    base[40:60, 1] += 1.0                        # column 1 is not one of the 16 probe columns
    first, inverse = distinct_rows(base)
    _, ref_first, ref_inverse = np.unique(base, axis=0, return_index=True, return_inverse=True)
    assert first.tolist() == sorted(ref_first.tolist()) and first.size == 40
    np.testing.assert_array_equal(base[first][inverse], base)


def test_dedup_index_with_uneven_copies_and_tied_distinct_rows():
    from core.search import DedupIndex

    rng = np.random.default_rng(9)
    u = _unit(rng, 400, 12)
    u[7] = u[3]
    u[7, 11] += 0.5                               # differs from u3 only where the first queries are 0
    copies = rng.integers(1, 8, size=400)         # 1 to 7 copies per distinct row
    base = np.repeat(u, copies, axis=0)[rng.permutation(int(copies.sum()))]
    q = _unit(rng, 90, 12)
    q[:5] = u[3] + 0.1 * q[:5]
    q[:5, 11] = 0.0                               # so u3 and u7 tie exactly, near the top
    sims = similarity_block(q, base)
    canonical = np.lexsort((np.broadcast_to(np.arange(base.shape[0]), sims.shape), -sims), axis=-1)
    index = DedupIndex(base)
    for k in (1, 37, 250, base.shape[0]):
        di, dv = index.topk(q, k)
        np.testing.assert_array_equal(di, canonical[:, :k])
        np.testing.assert_array_equal(dv, np.take_along_axis(sims, di, 1))


def test_canonical_order_equals_lexsort_with_negatives_zeros_and_ties():
    from core.search import canonical_order

    rng = np.random.default_rng(10)
    values = rng.choice(np.array([-1.0, -0.5, -0.0, 0.0, 1e-30, 0.25, 0.5, 1.0], dtype=np.float32),
                        size=(50, 40))
    indices = np.stack([rng.permutation(2 ** 32 - 1 - np.arange(100))[:40] for _ in range(50)])
    got_i, got_v = canonical_order(indices, values)
    order = np.lexsort((indices, -values), axis=-1)
    np.testing.assert_array_equal(got_i, np.take_along_axis(indices, order, -1))
    np.testing.assert_array_equal(got_v, np.take_along_axis(values, order, -1))
    with pytest.raises(ValueError):
        canonical_order(np.array([[-1]]), np.array([[0.5]], dtype=np.float32))


def test_exact_index_searches_repeated_rows_once_and_equals_exact_topk():
    from core.search import ExactIndex

    rng = np.random.default_rng(11)
    distinct = _unit(rng, 1500, 16)
    repeated = np.repeat(_unit(rng, 300, 16), 5, axis=0)
    q = _unit(rng, 40, 16)
    for base, searched_once in [(distinct, False), (repeated, True), (repeated[:900], False)]:
        index = ExactIndex(base)
        assert (index.dedup is not None) == searched_once  # fewer than 1,000 rows: plain search
        got = index.topk(q, 60)
        want = exact_topk(q, base, 60)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError):
        ExactIndex(repeated).topk(q, 1501)


def test_later_tiles_keep_only_values_above_the_running_kth_best():
    from core.search import _above, tile_shape

    rng = np.random.default_rng(12)
    base = _unit(rng, 20000, 8)
    base[15000:15400] = base[100:500]           # exact ties between an early and a late tile
    q = _unit(rng, 30, 8)
    memory = 30 * 2000 * 4
    assert tile_shape(30, 20000, memory) == (30, 2000)  # ten tiles
    idx, val = exact_topk(q, base, 20, memory_bytes=memory)
    sims = similarity_block(q, base)
    canonical = np.lexsort((np.broadcast_to(np.arange(20000), sims.shape), -sims), axis=-1)[:, :20]
    np.testing.assert_array_equal(idx, canonical)
    tile = torch.from_numpy(sims[:, 18000:])
    kth = torch.from_numpy(np.sort(sims[:, :18000], axis=1)[:, -36])
    values, cols = _above(tile, kth)             # the pruned path is taken on the last tile …
    expected = [set(np.flatnonzero(row > t)) for row, t in zip(sims[:, 18000:], kth.numpy())]
    got = [set(c[v > -np.inf].tolist()) for c, v in zip(cols.numpy(), values.numpy())]
    assert all(e <= g for e, g in zip(expected, got))  # … and keeps every value above the threshold


@pytest.mark.parametrize("k", [1, 7, 60])
def test_row_subset_index_equals_a_search_of_the_gathered_rows(k):
    """Chosen rows of an indexed base (repeated rows, so ties) plus an added block (one row a copy
    of a base row, another tie): the same positions and similarities as an exact search of the
    gathered rows, with no base row kept, a few, or all."""
    from core.search import ExactIndex, RowSubsetIndex

    rng = np.random.default_rng(5)
    base = np.repeat(_unit(rng, 300, 16), 5, axis=0)
    extra = np.concatenate([_unit(rng, 9, 16), base[[3, 700]]])
    q = np.concatenate([_unit(rng, 30, 16), base[[0, 700]]])
    full = np.concatenate([base, extra])
    index = ExactIndex(base)
    for rows in (np.sort(rng.choice(full.shape[0], 1200, replace=False)),
                 np.arange(1490, full.shape[0]), np.concatenate([np.arange(1500), [1502, 1509]]),
                 np.arange(1500, full.shape[0])):                                   # no base row kept
        if rows.size < k:
            continue
        got = RowSubsetIndex(index, base.shape[0], extra, rows).topk(q, k)
        want = exact_topk(q, full[rows], k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError):
        RowSubsetIndex(index, base.shape[0], extra, np.arange(5)).topk(q, 6)
