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
positions. The teacher is detached: gradients reach the student only. No ``T**2`` gradient
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

__all__ = ["KINDS", "divergence", "token_acceptance_rate", "greedy_agreement"]

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


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum()


def divergence(
    kind: str,
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
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

    Returns:
        Scalar tensor: per-position divergence (summed over V) averaged over unmasked positions.
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
    _check_pair(teacher_logits, student_logits)
    mask = _prepare_mask(mask, teacher_logits.shape[:-1], teacher_logits.device)

    log_p = _log_probs(teacher_logits.detach(), temperature)  # (..., V), target / teacher
    log_q = _log_probs(student_logits, temperature)  # (..., V), draft / student

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
    return _masked_mean(per_position, mask)


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
    p = _log_probs(teacher_logits, temperature).exp()
    q = _log_probs(student_logits, temperature).exp()
    return _masked_mean(torch.minimum(p, q).sum(dim=-1), mask)


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
    agree = teacher_logits.argmax(dim=-1) == student_logits.argmax(dim=-1)
    return _masked_mean(agree.to(torch.float32), mask)
