"""The order in which a worker reads sharded packed rows: a pure function of (seed, epoch, position).

Rows live in shards (``engine/shards.py`` writes them; shard ``s`` holds ``shard_rows[s]`` rows). One epoch's
order of all ``N = sum(shard_rows)`` rows is:

1. the shards are permuted by ``np.random.default_rng([seed, SHARD_STREAM, epoch])``;
2. the permuted shards are cut into consecutive *windows* of ``window`` shards (the last may hold fewer);
3. the rows of each window (its shards' rows, in permuted shard order) are shuffled by
   ``np.random.default_rng([seed, WINDOW_STREAM, epoch, w])`` for window ``w``;
4. the epoch reads window 0's shuffled rows, then window 1's, and so on.

Stream position ``p`` (``models.training.batch_positions``: step, micro-batch, rank, row) is place ``p % N`` of
epoch ``p // N``'s order. So the rows a step reads depend on (seed, epoch, step, rank) alone: a resumed run
reads exactly what an uninterrupted one would have, with no reader state in the checkpoint. A window is the
unit of locality: a batch touches at most the shards of one or two windows, so a reader needs only about
``window`` shards at a time, and the shuffle mixes rows across that many shards (a larger window mixes
better and needs more of them at once).

Memory: a window's shuffle is a permutation of its rows (8 bytes a row), drawn once and kept for the two most
recent windows; nothing grows with the number of shards but the (n_shards,) tables.

Run the tests: ``pytest tests/models/test_shard_order.py``.
"""

from __future__ import annotations

import functools

import numpy as np

from models.training import batch_positions

SHARD_STREAM = 21
"""Stream id of the shard permutation in the seed sequence (apart from the other seeded draws of the seed)."""
WINDOW_STREAM = 22
"""Stream id of the within-window row shuffle."""


def shard_permutation(n_shards: int, *, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s order of the shards (a permutation of ``range(n_shards)``)."""
    return np.random.default_rng([seed, SHARD_STREAM, epoch]).permutation(n_shards)


@functools.lru_cache(maxsize=4)
def _layout(shard_rows: tuple[int, ...], window: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard order, first place of each window and the epoch's end) for one epoch."""
    order = shard_permutation(len(shard_rows), seed=seed, epoch=epoch)
    window_rows = np.add.reduceat(np.asarray(shard_rows, dtype=np.int64)[order], np.arange(0, len(order), window))
    starts = np.concatenate([[0], np.cumsum(window_rows)])
    order.flags.writeable = starts.flags.writeable = False
    return order, starts


@functools.lru_cache(maxsize=2)  # the current window and the next: a batch may straddle the boundary
def _window_shuffle(n_rows: int, seed: int, epoch: int, w: int) -> np.ndarray:
    perm = np.random.default_rng([seed, WINDOW_STREAM, epoch, w]).permutation(n_rows)
    perm.flags.writeable = False
    return perm


def epoch_places(places, shard_rows: tuple[int, ...], *, window: int, seed: int,
                 epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row in that shard) of each place (in ``[0, N)``) of epoch ``epoch``'s order (module docstring)."""
    shard_rows = tuple(int(n) for n in shard_rows)
    if window < 1:
        raise ValueError(f"window={window}: use a window of at least 1 shard")
    if any(n < 0 for n in shard_rows) or sum(shard_rows) == 0:
        raise ValueError(f"shard row counts {shard_rows[:8]}... must be >= 0 with at least one row")
    q = np.asarray(places, dtype=np.int64)
    total = sum(shard_rows)
    if len(q) and (q.min() < 0 or q.max() >= total):
        raise ValueError(f"places must lie in [0, {total})")
    order, starts = _layout(shard_rows, window, seed, epoch)
    counts = np.asarray(shard_rows, dtype=np.int64)
    shard = np.empty(len(q), dtype=np.int64)
    row = np.empty(len(q), dtype=np.int64)
    win = np.searchsorted(starts, q, side="right") - 1
    for w in np.unique(win):
        sel = win == w
        members = order[w * window:(w + 1) * window]  # this window's shards, in permuted order
        member_starts = np.concatenate([[0], np.cumsum(counts[members])])
        local = _window_shuffle(int(member_starts[-1]), seed, epoch, int(w))[q[sel] - starts[w]]
        k = np.searchsorted(member_starts, local, side="right") - 1
        shard[sel] = members[k]
        row[sel] = local - member_starts[k]
    return shard, row


def shard_batch_rows(*, shard_rows: tuple[int, ...], window: int, step: int, micro: int, grad_accum: int,
                     rank: int, world_size: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row in that shard) for one worker's micro-batch; the sharded twin of
    ``models.training.global_batch_rows`` (same positions, the windowed order of the module docstring)."""
    total = sum(int(n) for n in shard_rows)
    if total <= 0:
        raise ValueError("the sharded split has no rows; prepare a larger corpus or lower pack_length")
    positions = batch_positions(step=step, micro=micro, grad_accum=grad_accum, rank=rank, world_size=world_size,
                                batch_size=batch_size)
    epochs = positions // total
    shard = np.empty(batch_size, dtype=np.int64)
    row = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        shard[sel], row[sel] = epoch_places(positions[sel] % total, shard_rows, window=window, seed=seed,
                                            epoch=int(e))
    return shard, row
