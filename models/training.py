"""Pure-torch pieces of the shared training loop (pretraining, fine-tuning and distillation use them).

* ``lr_at``: warmup then decay (cosine, linear, inverse square root or constant);
* ``make_optimizer``: AdamW without weight decay on biases and layer norms;
* ``global_batch_rows``: which data rows a worker reads at a given step. The stream of rows is a fixed
  function of (seed, step, micro-batch, rank): an epoch is a seeded permutation, a step reads the next
  ``world_size * batch_size`` rows per micro-batch, and a worker takes its slice. Resuming at step ``s``
  therefore reads exactly what an uninterrupted run would have read; no sampler state to save.
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


def global_batch_rows(*, n_rows: int, step: int, micro: int, grad_accum: int, rank: int, world_size: int,
                      batch_size: int, seed: int) -> np.ndarray:
    """Row indices for one worker's micro-batch (see module docstring); epochs are seeded permutations."""
    if n_rows <= 0:
        raise ValueError("the training split has no rows; prepare a larger corpus or lower pack_length")
    per_micro = world_size * batch_size
    start = ((step * grad_accum + micro) * per_micro) + rank * batch_size
    positions = np.arange(start, start + batch_size)
    epochs = positions // n_rows
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = _epoch_permutation(seed, int(e), n_rows)
        sel = epochs == e
        out[sel] = perm[positions[sel] % n_rows]
    return out


def grad_global_norm(parameters) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
