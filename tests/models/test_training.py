import numpy as np
import pytest
from hypothesis import given, strategies as st

from models.training import global_batch_rows, lr_at, step_seed


def test_warmup_reaches_peak_then_cosine_decays_to_min_ratio():
    kw = dict(lr=1e-3, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(110, **kw) == pytest.approx(1e-4)
    assert all(lr_at(s, **kw) >= lr_at(s + 1, **kw) for s in range(10, 120))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'cos'"):
        lr_at(0, lr=1.0, warmup_steps=0, total_steps=1, schedule="cos")


@given(st.integers(1, 50), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5))
def test_workers_read_disjoint_rows_and_each_epoch_covers_every_row_once(n_rows, world, batch, accum):
    seen = []
    steps = (2 * n_rows) // (world * batch * accum) + 1
    for step in range(steps):
        for micro in range(accum):
            for rank in range(world):
                seen.extend(global_batch_rows(n_rows=n_rows, step=step, micro=micro, grad_accum=accum, rank=rank,
                                              world_size=world, batch_size=batch, seed=3))
    first_epoch = seen[:n_rows]
    assert sorted(first_epoch) == list(range(n_rows))


def test_rows_and_seeds_depend_only_on_position_so_resume_reads_the_same_data():
    a = global_batch_rows(n_rows=100, step=7, micro=1, grad_accum=2, rank=1, world_size=2, batch_size=4, seed=0)
    b = global_batch_rows(n_rows=100, step=7, micro=1, grad_accum=2, rank=1, world_size=2, batch_size=4, seed=0)
    assert np.array_equal(a, b)
    assert step_seed(1, 2, 3, 4) == step_seed(1, 2, 3, 4) != step_seed(1, 2, 3, 5)


@given(st.integers(1, 3000), st.integers(0, 2**31), st.integers(0, 5))
def test_feistel_order_is_a_permutation_of_every_row_for_any_size_seed_and_epoch(n, seed, epoch):
    from models.training import feistel_permute

    rows = feistel_permute(np.arange(n), n, seed=seed, epoch=epoch)
    assert sorted(rows.tolist()) == list(range(n))


def test_feistel_order_depends_on_seed_and_epoch_and_looks_shuffled():
    from models.training import feistel_permute

    n = 5000
    a = feistel_permute(np.arange(n), n, seed=0, epoch=0)
    assert not np.array_equal(a, feistel_permute(np.arange(n), n, seed=1, epoch=0))
    assert not np.array_equal(a, feistel_permute(np.arange(n), n, seed=0, epoch=1))
    assert np.array_equal(a, feistel_permute(np.arange(n), n, seed=0, epoch=0))
    fixed = int((a == np.arange(n)).sum())
    assert fixed < 20  # a uniform permutation has ~1 fixed point; the identity has n
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.1  # no trace of the input order


def test_feistel_order_maps_single_positions_of_a_huge_split_without_a_table():
    import tracemalloc

    from models.training import feistel_permute

    n = 10**12  # far too many rows for an 8-byte-a-row table (8 TB)
    tracemalloc.start()
    rows = feistel_permute(np.arange(10**12 - 64, 10**12), n, seed=3, epoch=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20 and len(set(rows.tolist())) == 64 and rows.min() >= 0 and rows.max() < n


def test_above_the_table_limit_batches_still_cover_every_row_once_per_epoch(monkeypatch):
    import models.training as training

    monkeypatch.setattr(training, "PERMUTATION_TABLE_MAX_ROWS", 10)  # force the Feistel path on a small split
    n_rows, world, batch = 37, 2, 3
    seen = []
    for step in range(n_rows // (world * batch) + 2):
        for rank in range(world):
            seen.extend(training.global_batch_rows(n_rows=n_rows, step=step, micro=0, grad_accum=1, rank=rank,
                                                   world_size=world, batch_size=batch, seed=5))
    assert sorted(seen[:n_rows]) == list(range(n_rows))
    a = training.global_batch_rows(n_rows=n_rows, step=4, micro=0, grad_accum=1, rank=1, world_size=2,
                                   batch_size=3, seed=5)
    assert np.array_equal(a, training.global_batch_rows(n_rows=n_rows, step=4, micro=0, grad_accum=1, rank=1,
                                                        world_size=2, batch_size=3, seed=5))  # resume reads the same
