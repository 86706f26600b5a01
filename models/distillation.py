"""Token-level divergences for knowledge distillation, following DistillSpec.

DistillSpec (Zhou et al., 2023, arXiv 2310.08461) aligns a draft model (the student) with a target
model (the teacher) for speculative decoding, and studies which divergence to minimise. Notation
matches the house speculative-decoding code: ``p`` is the target / teacher distribution and ``q`` the
draft / student distribution, both at the same temperature ``T``::

    p = softmax(teacher_logits / T)        q = softmax(student_logits / T)

    fkl  = KL(p || q)     = sum_x p(x) (log p(x) - log q(x))        # forward KL (mode covering)
    rkl  = KL(q || p)     = sum_x q(x) (log q(x) - log p(x))        # reverse KL (mode seeking)
    jsd  = beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
    tvd  = 1/2 sum_x |p(x) - q(x)|

Each divergence is summed over the vocabulary at a position, then averaged over the unmasked
positions: per token (the default) or per sequence first (``reduction="sequence"``, the paper's). The teacher is detached: gradients reach the student only. No ``T**2`` gradient
rescaling is applied (Hinton et al.); multiply the loss by ``temperature**2`` yourself if you want it.

The probability that speculative sampling accepts the draft token at one position is
``sum_x min(p(x), q(x)) = 1 - tvd`` (Leviathan et al. 2023, section 3.3, where it is called beta,
unrelated to the JSD weight above), which is why DistillSpec finds TVD a natural objective;
``token_acceptance_rate`` (its mean, DistillSpec's alpha) and ``greedy_agreement`` measure
alignment directly.

Run the tests: ``python -m pytest tests/models/test_distillation.py -q``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = ["KINDS", "REDUCTIONS", "divergence", "rollout_labels", "token_acceptance_rate", "greedy_agreement"]

KINDS = ("fkl", "rkl", "jsd", "tvd")


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_pair(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != student_logits shape "
            f"{tuple(student_logits.shape)}; both must be (..., vocab) over the same vocabulary"
        )
    if teacher_logits.ndim < 1 or teacher_logits.shape[-1] < 1:
        raise ValueError(
            f"logits must have a non-empty last (vocabulary) dimension, got shape "
            f"{tuple(teacher_logits.shape)}"
        )


def _check_temperature(temperature: float) -> None:
    if not (_is_real(temperature) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _prepare_mask(mask: torch.Tensor | None, positions_shape: torch.Size, device) -> torch.Tensor:
    """Bool mask of ``positions_shape``; nonzero entries are kept. Raises if nothing is kept."""
    if mask is None:
        mask = torch.ones(positions_shape, dtype=torch.bool, device=device)
    else:
        mask = torch.as_tensor(mask, device=device)
        if mask.shape != positions_shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal logits.shape[:-1] = "
                f"{tuple(positions_shape)}"
            )
        mask = mask != 0
    # A host sync on GPU; acceptable here because an all-masked batch would otherwise give 0/0 = nan.
    if not bool(mask.any()):
        raise ValueError("mask selects no positions (all masked); pass at least one True entry")
    return mask


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # Upcast half precision: log_softmax over a large vocabulary in bf16 loses the small terms.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) summed over the last dim; terms with a(x) == 0 contribute 0 (0 log 0 = 0)."""
    a = log_a.exp()
    terms = torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a))
    return terms.sum(dim=-1)


REDUCTIONS = ("token", "sequence")


def _select(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unmasked positions of ``logits`` as ``(N, V)``.

    Selecting (rather than multiplying by the mask) keeps whatever a masked position holds (-inf,
    NaN, garbage from padding) out of the loss *and* out of its gradient: ``0 * nan`` is nan, and the
    backward pass of a softmax over a row of -inf is nan even when its upstream gradient is 0.
    """
    return logits[mask]


def _sequence_ids(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """For each unmasked position (in ``mask[mask]`` order), the index of its sequence.

    A sequence is one index of every dimension but the last of the positions shape: a ``(B, T)`` mask
    has B sequences, a ``(T,)`` mask one.
    """
    if mask.ndim <= 1:
        return torch.zeros(int(mask.sum()), dtype=torch.long, device=mask.device), 1
    n_seq = math.prod(mask.shape[:-1])
    ids = torch.arange(n_seq, device=mask.device).reshape(mask.shape[:-1]).unsqueeze(-1).expand(mask.shape)
    return ids[mask], n_seq


def _reduce(per_position: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mean of the selected per-position values: over tokens, or over sequences of per-sequence means."""
    if reduction == "token":
        return per_position.mean()
    ids, n_seq = _sequence_ids(mask)
    sums = torch.zeros(n_seq, dtype=per_position.dtype, device=per_position.device).index_add(0, ids, per_position)
    counts = torch.bincount(ids, minlength=n_seq)
    keep = counts > 0  # sequences with no unmasked position do not count
    return (sums[keep] / counts[keep].to(sums.dtype)).mean()


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def divergence(
    kind: str,
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    reduction: str = "token",
) -> torch.Tensor:
    """Mean token-level divergence between teacher (p) and student (q) distributions.

    Args:
        kind: ``"fkl"`` KL(p||q), ``"rkl"`` KL(q||p), ``"jsd"`` generalised JSD with weight
            ``beta`` on p, ``"tvd"`` total variation 1/2 sum |p - q|.
        teacher_logits, student_logits: ``(..., V)`` with identical shapes.
        mask: ``logits.shape[:-1]``, bool or 0/1 (nonzero = keep); None keeps every position.
        beta: JSD mixture weight on p, must lie in the open interval (0, 1): at 0 or 1 the JSD is
            identically 0 and gives no training signal. For the other kinds beta is ignored but
            must still lie in [0, 1] (a value outside is always a config mistake).
            With beta = 0.5, 0 <= jsd <= ln 2.
        temperature: T > 0, applied to both logits before the softmax.
        reduction: ``"token"`` (default) averages over all unmasked positions of the batch, so a
            long sequence weighs more than a short one; ``"sequence"`` is DistillSpec's sequence-level
            average (Zhou et al. 2023, eq. 2: the mean over each sequence's tokens, then the mean over
            sequences), so every sequence weighs the same. A sequence is one row of ``mask`` (every
            dimension but the last); rows with no unmasked position are left out. The two agree when
            every row has the same number of unmasked positions. The token mean is the default
            because it is the usual distillation loss (the teacher-forced cross-entropy of
            fine-tuning averages the same way) and its gradient scale does not depend on how the
            batch's lengths are spread.

    Returns:
        Scalar tensor: per-position divergence (summed over V) averaged over unmasked positions
        (see ``reduction``). Masked positions are selected out before anything is computed, so
        -inf or NaN logits there reach neither the loss nor its gradient.
        Differentiable w.r.t. ``student_logits`` only.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown divergence kind {kind!r}; choose one of {KINDS}")
    if not (_is_real(beta) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(
            f"jsd needs beta strictly inside (0, 1), got {beta!r}: at 0 or 1 the JSD is identically 0; "
            "use 'fkl'/'rkl' for the one-sided divergences"
        )
    _check_temperature(temperature)
    _check_reduction(reduction)
    _check_pair(teacher_logits, student_logits)
    mask = _prepare_mask(mask, teacher_logits.shape[:-1], teacher_logits.device)

    log_p = _log_probs(_select(teacher_logits.detach(), mask), temperature)  # (N, V), target / teacher
    log_q = _log_probs(_select(student_logits, mask), temperature)  # (N, V), draft / student

    if kind == "fkl":
        per_position = _kl(log_p, log_q)
    elif kind == "rkl":
        per_position = _kl(log_q, log_p)
    elif kind == "jsd":
        # log m = log(beta p + (1 - beta) q), computed in log space to stay finite for tiny p, q.
        log_m = torch.logsumexp(
            torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)], dim=0), dim=0
        )
        per_position = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    else:  # tvd
        per_position = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    return _reduce(per_position, mask, reduction)


@torch.no_grad()
def token_acceptance_rate(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over unmasked positions of ``sum_x min(p(x), q(x))`` (= 1 - TVD).

    This is the probability that speculative sampling accepts a draft token sampled from q when the
    target is p (Leviathan et al. 2023; DistillSpec's alpha). Returns a detached scalar tensor.
    """
    _check_temperature(temperature)
    _check_pair(teacher_logits, student_logits)
    mask = _prepare_mask(mask, teacher_logits.shape[:-1], teacher_logits.device)
    p = _log_probs(_select(teacher_logits, mask), temperature).exp()
    q = _log_probs(_select(student_logits, mask), temperature).exp()
    return torch.minimum(p, q).sum(dim=-1).mean()


@torch.no_grad()
def greedy_agreement(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fraction of unmasked positions where ``argmax`` teacher == ``argmax`` student.

    The acceptance rate of greedy (temperature 0) speculative decoding. Ties in argmax resolve to the
    first index (torch semantics) for both models. Returns a detached float scalar tensor.
    """
    _check_pair(teacher_logits, student_logits)
    mask = _prepare_mask(mask, teacher_logits.shape[:-1], teacher_logits.device)
    agree = _select(teacher_logits, mask).argmax(dim=-1) == _select(student_logits, mask).argmax(dim=-1)
    return agree.to(torch.float32).mean()


def rollout_labels(sequences: torch.Tensor, eos_token_id: int, ignore_index: int = -100) -> torch.Tensor:
    """Distillation labels from sampled sequences (decoder start token already dropped).

    Only the positions *after the first EOS* of a row are padding (set to ``ignore_index``); the EOS
    itself is kept. A pad id that the model sampled before its EOS is a token like any other and stays:
    splicing it out would train on a sequence nobody sampled. A row without EOS keeps every position.
    """
    y = sequences.clone()
    eos = (y == eos_token_id).to(torch.int32)
    after = (eos.cumsum(-1) - eos) > 0
    y[after] = ignore_index
    return y
