"""Packed rows are read in place (memory-mapped Arrow or rows.npy) and give exactly the rows of the split."""

import numpy as np
import pytest

from engine.pretrain_worker import PackedRows, export_rows, load_rows


def test_arrow_and_npy_rows_agree_with_the_split_row_for_row(tiny_corpus, tmp_path):
    import datasets

    split = f"{tiny_corpus}/packed/train"
    expected = np.asarray(datasets.load_from_disk(split).with_format("numpy")["input_ids"], dtype=np.int32)[:, :64]
    arrow = load_rows(split, 64)
    export_rows(split, tmp_path)
    npy = load_rows(tmp_path, 64)
    assert isinstance(arrow, PackedRows) and arrow.shape == expected.shape == npy.shape
    idx = np.random.default_rng(0).integers(0, len(expected), 300)
    assert np.array_equal(arrow[idx], expected[idx]) and np.array_equal(npy[idx], expected[idx])
    assert np.array_equal(arrow[3:11], expected[3:11]) and arrow[idx].dtype == np.int32


def test_rows_spread_over_many_chunks_index_like_one_array():
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 100, size=(n, 9), dtype=np.int32) for n in (5, 0, 3, 7)]
    rows = PackedRows(parts, 6, "test")
    whole = np.concatenate(parts)[:, :6]
    idx = np.array([0, 4, 5, 7, 14, 8, -1])
    assert len(rows) == 15 and np.array_equal(rows[idx], whole[idx])
    assert np.array_equal(rows[2:9], whole[2:9]) and rows[10:10].shape == (0, 6)
    with pytest.raises(IndexError, match="out of range"):
        rows[np.array([15])]


def test_rows_shorter_than_span_corruption_needs_are_refused(tiny_corpus):
    with pytest.raises(ValueError, match="rebuild the corpus with pack_length=500"):
        load_rows(f"{tiny_corpus}/packed/train", 500)
