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
