"""Speculative decoding's probability maths: closed forms, sampling distributions, and the acceptance
probability and residual distribution of the rejection step.

Pure functions of probabilities and token ids; no model, no cache. The verification of one draft block
that uses them (``rejection_sample``, ``greedy_verify``) and the engine live in ``models.speculative``.

References
- Leviathan, Kalman, Matias 2023, "Fast Inference from Transformers via Speculative Decoding"
  (arXiv 2211.17192): Algorithm 1 (acceptance ``min(1, p / q)``, residual ``norm(max(0, p - q))``), Eq. 1
  (``expected_block_efficiency``), Theorem 3.8 (``expected_speedup``), Appendix A.5 (lenience).
- Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling" (arXiv 2302.01318).
- Zhou et al. 2023, "DistillSpec" (arXiv 2310.08461), Section 5.3 / Appendix: lossy SD with a
  lenience function ``f(p, lenience) = p / lenience``.
- The names follow transformers' ``generation/utils.py::_speculative_sampling`` (p, q, p_prime).

- ``lenience = 1`` is lossless; ``lenience < 1`` is LOSSY: faster, but the output no longer follows the
  target distribution (see ``check_lenience``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "acceptance_probability",
    "draft_token",
    "check_lenience",
    "check_sampling_args",
    "expected_block_efficiency",
    "expected_speedup",
    "residual_distribution",
    "sample_token",
    "sampling_distribution",
]


# ----------------------------------------------------------------------------------------------
# Closed forms (Leviathan et al. 2023)
# ----------------------------------------------------------------------------------------------


def _check_alpha_gamma(alpha: float, gamma: int) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be an acceptance rate in [0, 1]")
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 0:
        raise ValueError(f"gamma={gamma!r} must be an int >= 0 (draft tokens per target call)")


def expected_block_efficiency(alpha: float, gamma: int) -> float:
    """Expected tokens emitted per target call, ``(1 - alpha^(gamma+1)) / (1 - alpha)`` (Eq. 1).

    ``alpha`` is the per-token acceptance rate (assumed i.i.d.); the ``alpha == 1`` limit is
    ``gamma + 1`` (every draft accepted plus the bonus token).
    """
    _check_alpha_gamma(alpha, gamma)
    if alpha == 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected walltime improvement over target-only decoding (Theorem 3.8).

    ``(1 - alpha^(gamma+1)) / ((1 - alpha) (gamma c + 1))`` where ``c`` is the cost of one draft
    call relative to one target call. ``alpha == 1`` gives ``(gamma + 1) / (gamma c + 1)``.
    """
    if c < 0:
        raise ValueError(f"c={c} must be >= 0 (draft-call cost / target-call cost)")
    return expected_block_efficiency(alpha, gamma) / (gamma * c + 1.0)


# ----------------------------------------------------------------------------------------------
# Distributions of the verification step
# ----------------------------------------------------------------------------------------------


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse a sampling setting ``sampling_distribution`` cannot apply; ValueError names the bad value."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (use do_sample=False for greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be None or an int >= 1")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be None or in (0, 1]")


def sampling_distribution(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Logits (..., V) -> probabilities (..., V) after temperature, then top-k, then top-p.

    The one function that turns logits into a sampling distribution: SD applies it to the target
    logits (p) and the draft logits (q) alike, and the draft samples from exactly this q, which the
    lossless guarantee needs. Top-p keeps the smallest set of most likely tokens whose mass reaches
    ``top_p`` (at least one token).
    """
    check_sampling_args(temperature, top_k, top_p)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly likelier tokens
        drop_sorted = mass_before >= top_p  # never drops the first (most likely) token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def check_lenience(lenience: float) -> None:
    """Refuse a lenience outside (0, 1]. 1 is lossless SD; **anything below 1 is LOSSY**."""
    if not 0.0 < lenience <= 1.0:
        raise ValueError(
            f"lenience={lenience} must be in (0, 1]; 1 is lossless SD, smaller values accept more "
            "draft tokens at the price of exactness"
        )


def acceptance_probability(
    p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor, *, lenience: float = 1.0
) -> torch.Tensor:
    """Probability of accepting each draft token given the ones before it were accepted.

    ``min(1, p_i(x_i) / (lenience * q_i(x_i)))`` for i < gamma; p may carry the extra bonus row.
    Returns (gamma,). A token with ``q_i(x_i) == 0`` cannot have been sampled; it gets 1 if
    ``p_i(x_i) > 0`` (the ratio's limit) and 0 otherwise.
    """
    check_lenience(lenience)
    gamma = draft_tokens.shape[0]
    idx = torch.arange(gamma, device=p.device)
    p_i = p[idx, draft_tokens].double()  # (gamma,)
    q_i = q[idx, draft_tokens].double()  # (gamma,)
    ratio = torch.where(q_i > 0, p_i / (lenience * q_i).clamp_min(1e-300), (p_i > 0).double())
    return ratio.clamp(max=1.0)


def residual_distribution(p_row: torch.Tensor, q_row: torch.Tensor, *, lenience: float = 1.0) -> torch.Tensor:
    """Distribution of the replacement token after a rejection: ``norm(max(0, p - lenience * q))``.

    lenience = 1 is Leviathan et al.'s ``p'``. For lenience < 1 we follow Leviathan et al. App. A.5
    and DistillSpec's lossy SD (lenience function ``f(p) = p / lenience``, residual
    ``norm(max(0, f(p) - q))``); dividing by lenience does not change the normalised result, so it
    equals ``norm(max(0, p - lenience * q))``. A rejection can only happen where
    ``p < lenience * q``, so the residual has mass whenever a rejection has positive probability;
    if rounding still leaves it all zero (p == q numerically), we fall back to p.
    """
    check_lenience(lenience)
    p_prime = (p_row.double() - lenience * q_row.double()).clamp_min(0.0)  # (V,)
    total = p_prime.sum()
    if total <= torch.finfo(torch.float32).tiny:
        return p_row.double() / p_row.double().sum()
    return p_prime / total


def sample_token(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token id drawn from ``probs`` (V,) with ``generator`` (None uses torch's global one)."""
    return int(torch.multinomial(probs.float(), 1, generator=generator))


def draft_token(logits: torch.Tensor, *, do_sample: bool, warp: Callable[[torch.Tensor], torch.Tensor],
                generator: torch.Generator | None) -> tuple[int, torch.Tensor | None]:
    """A drafter's next token from its logits (V,): the argmax when greedy, else a draw from ``warp(logits)``;
    and that distribution (q, which verification needs), None when greedy."""
    if not do_sample:
        return int(logits.argmax()), None
    q = warp(logits)
    return sample_token(q, generator), q
