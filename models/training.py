"""Pure-torch pieces of the shared training loop (pretraining, fine-tuning and distillation use them).

* ``lr_at``: warmup then decay (cosine, linear, inverse square root or constant);
* ``make_optimizer``: AdamW without weight decay on biases and layer norms;
* ``batch_positions`` / ``global_batch_rows``: which data rows a worker reads at a given step. The stream of rows is a fixed
  function of (seed, step, micro-batch, rank): an epoch is a seeded permutation, a step reads the next
  ``world_size * batch_size`` rows per micro-batch, and a worker takes its slice. Resuming at step ``s``
  therefore reads exactly what an uninterrupted run would have read; no sampler state to save.
  Up to ``PERMUTATION_TABLE_MAX_ROWS`` rows the epoch's permutation is a table (8 bytes a row, at most
  8 MiB); above it, ``feistel_permute`` computes each position's row on its own, in O(batch) memory, so a
  worker's memory stays constant however large the corpus. Sharded rows (``engine/shards.py``) map the same
  positions through ``models.shard_order`` instead.
* ``step_seed``: a per-(seed, step, micro, rank) seed for the objective's own randomness (span
  corruption, masking, sampling), again so a resumed run draws the same numbers.

Run the tests: ``pytest tests/models/test_training.py``.
"""

from __future__ import annotations

import functools
import math


import numpy as np
import torch


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
          min_ratio: float = 0.1) -> float:
    """Learning rate at ``step`` (0-based): linear warmup to ``lr``, then the chosen decay."""
    if schedule not in ("cosine", "linear", "rsqrt", "constant"):
        raise ValueError(f"unknown schedule '{schedule}'; use cosine, linear, rsqrt or constant")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "rsqrt":
        return lr * math.sqrt(max(1, warmup_steps)) / math.sqrt(max(step, 1, warmup_steps))
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return lr * (1.0 - (1.0 - min_ratio) * progress)
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, *, lr: float, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-8, fused: bool | None = None):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "layer_norm" in name or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {}
    if fused is None:
        fused = bool(decay) and decay[0].is_cuda
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def step_seed(seed: int, step: int, micro: int = 0, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed that depends only on its arguments (for stateless, resumable randomness)."""
    ss = np.random.SeedSequence([seed, stream, step, micro, rank])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@functools.lru_cache(maxsize=2)  # the current epoch and the next: a batch may straddle the boundary
def _epoch_permutation(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """Epoch ``epoch``'s order of the rows: drawn once per epoch, not once per step (O(n_rows) each time)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    perm.flags.writeable = False
    return perm


PERMUTATION_TABLE_MAX_ROWS = 1 << 20
"""Largest split whose epoch order is a permutation table; larger splits use :func:`feistel_permute`."""

_FEISTEL_ROUNDS = 6
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche on uint64 (the Feistel round function's core)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def feistel_permute(positions, n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The rows at ``positions`` (each in ``[0, n)``) of a seeded pseudo-random permutation of ``range(n)``.

    A balanced Feistel network over ``2b`` bits (the smallest even width with ``2**2b >= n``; ``_FEISTEL_ROUNDS``
    rounds keyed by (seed, epoch, round)) is a bijection on ``[0, 2**2b)``; cycle-walking (apply it again while
    the value is ``>= n``) restricts it to a bijection on ``[0, n)``, in fewer than 4 walks on average. Each
    position is mapped on its own, so memory is O(len(positions)) whatever ``n`` is.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    pos = np.asarray(positions, dtype=np.int64)
    if len(pos) and (pos.min() < 0 or pos.max() >= n):
        raise ValueError(f"positions must lie in [0, {n})")
    half = max(1, ((int(n) - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [np.uint64(step_seed(seed, epoch, r, 0, stream=11)) for r in range(_FEISTEL_ROUNDS)]

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            with np.errstate(over="ignore"):
                left, right = right, left ^ (_mix64(right ^ k) & mask)
        return (left << np.uint64(half)) | right

    out = once(pos.astype(np.uint64))
    walk = out >= np.uint64(n)
    while walk.any():
        out[walk] = once(out[walk])
        walk = out >= np.uint64(n)
    return out.astype(np.int64)


def batch_positions(*, step: int, micro: int, grad_accum: int, rank: int, world_size: int,
                    batch_size: int) -> np.ndarray:
    """Positions in the endless stream of rows that one worker's micro-batch reads:
    ``((step * grad_accum + micro) * world_size + rank) * batch_size + i`` for ``i < batch_size``. Position
    ``p`` is row ``p % n_rows`` of epoch ``p // n_rows``'s order (:func:`global_batch_rows`, or
    ``models.shard_order`` for sharded rows); ranks of one micro-batch read adjacent, disjoint slices."""
    start = ((step * grad_accum + micro) * world_size + rank) * batch_size
    return np.arange(start, start + batch_size, dtype=np.int64)


def global_batch_rows(*, n_rows: int, step: int, micro: int, grad_accum: int, rank: int, world_size: int,
                      batch_size: int, seed: int) -> np.ndarray:
    """Row indices for one worker's micro-batch (see module docstring); epochs are seeded permutations."""
    if n_rows <= 0:
        raise ValueError("the training split has no rows; prepare a larger corpus or lower pack_length")
    positions = batch_positions(step=step, micro=micro, grad_accum=grad_accum, rank=rank, world_size=world_size,
                                batch_size=batch_size)
    epochs = positions // n_rows
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        if n_rows <= PERMUTATION_TABLE_MAX_ROWS:
            out[sel] = _epoch_permutation(seed, int(e), n_rows)[positions[sel] % n_rows]
        else:
            out[sel] = feistel_permute(positions[sel] % n_rows, n_rows, seed=seed, epoch=int(e))
    return out


def grad_global_norm(parameters) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
