"""core.arrays: one input check and one L2 normalisation for every core module."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.arrays import StackedRows, as_2d, as_float32_2d, as_float64_2d, l2_normalize, sample_groups


def test_checks_name_the_argument_and_the_problem():
    for bad, words in ((np.zeros((0, 3)), "empty"), (np.zeros((2, 0)), "zero-dimensional"),
                       (np.zeros((2, 2, 2)), "2-D"), (np.array(["a", "b"]), "numeric"),
                       ([[1.0, np.nan], [0.0, 1.0]], "NaN or infinite values in rows [0]")):
        with pytest.raises(ValueError, match="^queries") as error:
            as_float32_2d("queries", bad)
        assert words in str(error.value)
    with pytest.raises(ValueError, match="dimension 3 but the other side has 4"):
        as_float32_2d("queries", np.ones((2, 3)), dim=4)


def test_torch_tensors_lists_and_dtypes():
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    out = as_float32_2d("x", t)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.tolist() == t.tolist()
    assert as_float64_2d("x", [1, 2]).dtype == np.float64
    assert as_2d("feature", [1.0, 2.0, 3.0], dtype=None, vector="column").shape == (3, 1)


def test_a_memmap_is_neither_copied_nor_read(tmp_path):
    big = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(1000, 8))
    out = as_2d("X", big, dtype=None, check_finite=False)
    assert np.shares_memory(out, big)  # still backed by the file


def test_l2_normalize_keeps_float64_leaves_unit_rows_alone_and_zero_rows_zero():
    rng = np.random.default_rng(0)
    x64 = rng.normal(size=(5, 7))
    n64 = l2_normalize(x64)
    assert n64.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(n64, axis=1), 1.0, rtol=1e-15)
    n32 = l2_normalize(x64.astype(np.float32))
    assert n32.dtype == np.float32
    assert np.array_equal(l2_normalize(n32), n32)  # normalising twice is a no-op, bit for bit
    z = l2_normalize(np.zeros((2, 3), np.float32))
    assert not z.any()
    np.testing.assert_allclose(l2_normalize(np.array([3.0, 4.0])), [0.6, 0.8])  # any rank: last axis


def test_sample_groups_keeps_whole_photos_within_the_limit_the_same_each_time():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(3000), rng.integers(1, 6, 3000))          # photos with 1-5 captions
    rows = sample_groups(groups, 2000)
    assert rows.size <= 2000 and rows.size > 1900                           # nearly full: greedy by photo
    kept = np.unique(groups[rows])
    assert np.isin(groups, kept).sum() == rows.size                         # every caption of a kept photo
    np.testing.assert_array_equal(rows, sample_groups(groups, 2000))      # the same sample each time
    np.testing.assert_array_equal(sample_groups(groups, groups.size), np.arange(groups.size))


def test_stacked_rows_read_like_the_joined_array_without_joining_it(tmp_path):
    base = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    np.save(tmp_path / "b.npy", base)
    mapped = np.load(tmp_path / "b.npy", mmap_mode="r")
    extra = np.ones((3, 4), np.float32)
    rows = StackedRows(mapped).appended(extra[:1]).appended(extra[1:])
    joined = np.concatenate([base, extra])
    assert rows.shape == joined.shape and len(rows) == 53
    for key in (7, -1, slice(0, 10), slice(45, 53), slice(None, None, 7), np.array([52, 0, 50]),
                joined[:, 0] > 0):
        np.testing.assert_array_equal(rows[key], joined[key])
    np.testing.assert_array_equal(np.asarray(rows), joined)
    assert np.shares_memory(rows[0:10], mapped)                  # a slice of the base is a view
