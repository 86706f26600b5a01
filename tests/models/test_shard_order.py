"""The windowed shard order is a pure function of (seed, epoch, position): every row once per epoch, ranks
disjoint, windows local, the same answer on every call (so resume needs no reader state)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from models.shard_order import epoch_places, shard_batch_rows, shard_permutation


def _all_rows(shard_rows):
    return sorted((s, r) for s, n in enumerate(shard_rows) for r in range(n))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=8).filter(lambda xs: sum(xs) > 0),
       st.integers(1, 4), st.integers(0, 3), st.integers(0, 2))
def test_each_epoch_reads_every_row_of_every_shard_exactly_once(shard_rows, window, seed, epoch):
    shard, row = epoch_places(np.arange(sum(shard_rows)), tuple(shard_rows), window=window, seed=seed, epoch=epoch)
    assert sorted(zip(shard.tolist(), row.tolist())) == _all_rows(shard_rows)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_ranks_never_share_a_row_in_a_step_and_the_stream_covers_each_epoch(world, batch, accum, window):
    shard_rows = (7, 3, 5, 6)
    total = sum(shard_rows)
    seen = []
    for step in range(2 * total // (world * batch * accum) + 1):
        for micro in range(accum):
            step_rows = []
            for rank in range(world):
                s, r = shard_batch_rows(shard_rows=shard_rows, window=window, step=step, micro=micro,
                                        grad_accum=accum, rank=rank, world_size=world, batch_size=batch, seed=5)
                step_rows.append(set(zip(s.tolist(), r.tolist())))
                seen.extend(zip(s.tolist(), r.tolist()))
            first = (step * accum + micro) * world * batch
            if first // total == (first + world * batch - 1) // total:  # within one epoch: no row twice
                assert sum(len(x) for x in step_rows) == len(set().union(*step_rows))
    assert sorted(seen[:total]) == _all_rows(shard_rows)
    assert sorted(seen[total:2 * total]) == _all_rows(shard_rows)


def test_the_order_depends_only_on_seed_and_position_and_epochs_differ():
    kw = dict(shard_rows=(10, 10, 10, 4), window=2, micro=1, grad_accum=2, world_size=2, batch_size=3)
    a = shard_batch_rows(step=5, rank=1, seed=0, **kw)
    shard_batch_rows(step=0, rank=0, seed=9, **kw)  # other calls in between change nothing
    b = shard_batch_rows(step=5, rank=1, seed=0, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = shard_batch_rows(step=5, rank=1, seed=1, **kw)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    n = 20
    assert not np.array_equal(shard_permutation(n, seed=0, epoch=0), shard_permutation(n, seed=0, epoch=1))
    assert sorted(shard_permutation(n, seed=0, epoch=1).tolist()) == list(range(n))


def test_consecutive_places_stay_within_one_window_of_shards():
    shard_rows = (50,) * 12
    window = 3
    shard, _ = epoch_places(np.arange(600), shard_rows, window=window, seed=0, epoch=0)
    order = shard_permutation(12, seed=0, epoch=0)
    for w in range(4):
        assert set(shard[w * 150:(w + 1) * 150].tolist()) == set(order[w * window:(w + 1) * window].tolist())


def test_bad_windows_and_empty_splits_are_refused_in_one_line():
    with pytest.raises(ValueError, match="window=0"):
        epoch_places([0], (3,), window=0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="no rows"):
        shard_batch_rows(shard_rows=(0, 0), window=1, step=0, micro=0, grad_accum=1, rank=0, world_size=1,
                         batch_size=2, seed=0)
