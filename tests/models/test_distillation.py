"""Tests for models/distillation.py: divergence definitions pinned against direct numpy formulas."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from models.distillation import KINDS, divergence, greedy_agreement, rollout_labels, token_acceptance_rate


def _softmax(x: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = x / t - (x / t).max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * (np.log(a) - np.log(b))).sum(-1)


def _reference(kind: str, t: np.ndarray, s: np.ndarray, beta: float, temp: float) -> np.ndarray:
    """Per-position divergence, float64, straight from the definitions."""
    p, q = _softmax(t, temp), _softmax(s, temp)
    if kind == "fkl":
        return _kl(p, q)
    if kind == "rkl":
        return _kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    return 0.5 * np.abs(p - q).sum(-1)


def _random_logits(seed: int, shape=(3, 5, 7), scale=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * scale, rng.normal(size=shape) * scale


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_divergence_matches_numpy_definition(kind, beta, temperature):
    t, s = _random_logits(seed=zlib.crc32(f"{kind}/{beta}/{temperature}".encode()))
    got = divergence(kind, torch.tensor(t), torch.tensor(s), beta=beta, temperature=temperature)
    want = _reference(kind, t, s, beta, temperature).mean()
    assert got.shape == ()
    np.testing.assert_allclose(got.item(), want, rtol=1e-10, atol=1e-12)


def test_forward_and_reverse_kl_are_not_swapped():
    # p = (1/2, 1/2), q = (1/4, 3/4):
    #   KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    #   KL(q||p) = 1/4 ln(1/2) + 3/4 ln(3/2) = 3/4 ln 3 - ln 2
    teacher = torch.tensor([[0.0, 0.0]])
    student = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    fkl = divergence("fkl", teacher.double(), student)
    rkl = divergence("rkl", teacher.double(), student)
    assert fkl.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert rkl.item() == pytest.approx(0.75 * math.log(3) - math.log(2), rel=1e-12)
    assert fkl.item() != pytest.approx(rkl.item())


def test_tvd_is_half_the_l1_sum_over_the_vocabulary_not_a_mean():
    # p = (1, 0, 0, 0) (almost), q = uniform over 4: 1/2 (3/4 + 3 * 1/4) = 3/4.
    teacher = torch.tensor([[1e4, 0.0, 0.0, 0.0]])
    student = torch.zeros(1, 4)
    assert divergence("tvd", teacher, student).item() == pytest.approx(0.75, abs=1e-6)


def test_acceptance_rate_is_one_minus_tvd():
    t, s = (torch.tensor(x) for x in _random_logits(seed=3))
    alpha = token_acceptance_rate(t, s, temperature=1.5)
    tvd = divergence("tvd", t, s, temperature=1.5)
    assert alpha.item() == pytest.approx(1.0 - tvd.item(), abs=1e-12)
    p, q = _softmax(t.numpy(), 1.5), _softmax(s.numpy(), 1.5)
    assert alpha.item() == pytest.approx(np.minimum(p, q).sum(-1).mean(), abs=1e-12)


def test_jsd_with_half_beta_lies_between_zero_and_ln2():
    t, s = (torch.tensor(x) for x in _random_logits(seed=4, scale=5.0))
    jsd = divergence("jsd", t, s, beta=0.5)
    assert 0.0 <= jsd.item() <= math.log(2)
    # Disjoint supports reach the upper bound ln 2.
    disjoint = divergence("jsd", torch.tensor([[1e4, 0.0]]), torch.tensor([[0.0, 1e4]]), beta=0.5)
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_is_zero_for_identical_distributions(kind):
    t, _ = _random_logits(seed=5)
    t = torch.tensor(t)
    assert divergence(kind, t, t.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # Softmax is shift invariant: a constant offset per position changes nothing.
    assert divergence(kind, t, t + 3.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_mask_averages_over_unmasked_positions_only(kind):
    t, s = _random_logits(seed=6, shape=(2, 4, 5))
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    got = divergence(kind, torch.tensor(t), torch.tensor(s), torch.tensor(mask))
    want = _reference(kind, t, s, 0.5, 1.0)[mask].mean()
    assert got.item() == pytest.approx(want, rel=1e-10)
    # 0/1 integer masks mean the same as bool masks.
    as_int = divergence(kind, torch.tensor(t), torch.tensor(s), torch.tensor(mask.astype(np.int64)))
    assert as_int.item() == pytest.approx(got.item(), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("poison", [float("-inf"), float("nan"), float("inf")])
def test_masked_positions_holding_inf_or_nan_leave_the_loss_and_gradient_finite(kind, poison):
    t, s = _random_logits(seed=11, shape=(2, 4, 5))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
    want = _reference(kind, t, s, 0.5, 1.0)[mask].mean()
    t_bad, s_bad = t.copy(), s.copy()
    t_bad[~mask] = poison
    s_bad[~mask] = poison
    s_t = torch.tensor(s_bad, requires_grad=True)
    loss = divergence(kind, torch.tensor(t_bad), s_t, torch.tensor(mask))
    loss.backward()
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert torch.isfinite(s_t.grad).all()
    assert (s_t.grad[torch.tensor(~mask)] == 0).all()
    assert torch.isfinite(token_acceptance_rate(torch.tensor(t_bad), torch.tensor(s_bad), torch.tensor(mask)))


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_reduction_is_the_mean_over_sequences_of_each_sequence_mean(kind):
    t, s = _random_logits(seed=12, shape=(3, 5, 6))
    mask = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)  # last row: empty
    per = _reference(kind, t, s, 0.5, 1.0)
    want = np.mean([per[0][mask[0]].mean(), per[1][mask[1]].mean()])
    got = divergence(kind, torch.tensor(t), torch.tensor(s), torch.tensor(mask), reduction="sequence")
    assert got.item() == pytest.approx(want, rel=1e-10)
    token = divergence(kind, torch.tensor(t), torch.tensor(s), torch.tensor(mask))
    assert token.item() == pytest.approx(per[mask].mean(), rel=1e-10)
    assert got.item() != pytest.approx(token.item(), rel=1e-6)  # they differ when lengths differ


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_and_token_reductions_agree_when_every_sequence_has_the_same_length(kind):
    t, s = (torch.tensor(x) for x in _random_logits(seed=13, shape=(3, 4, 6)))
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    a = divergence(kind, t, s, mask, reduction="sequence")
    b = divergence(kind, t, s, mask, reduction="token")
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_unknown_reduction_is_refused():
    t, s = (torch.tensor(x) for x in _random_logits(seed=14))
    with pytest.raises(ValueError, match="reduction"):
        divergence("fkl", t, s, reduction="batch")


def test_rollout_labels_pad_only_after_the_first_eos_and_keep_a_sampled_pad_id():
    pad, eos = 0, 1
    seqs = torch.tensor([[5, pad, 7, eos, pad, pad],   # a pad id sampled before EOS is a real token
                         [5, 6, eos, 8, eos, 9],       # everything after the first EOS is padding
                         [pad, 4, 4, 4, 4, 4]])        # no EOS: nothing is padding
    got = rollout_labels(seqs, eos)
    assert got.tolist() == [[5, pad, 7, eos, -100, -100],
                            [5, 6, eos, -100, -100, -100],
                            [pad, 4, 4, 4, 4, 4]]
    assert seqs[0, 1] == pad  # the input is not modified


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_the_student_only(kind):
    t, s = (torch.tensor(x, requires_grad=True) for x in _random_logits(seed=7))
    divergence(kind, t, s, beta=0.3).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_large_logits_stay_finite_in_value_and_gradient(kind):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 6, 32, generator=g) * 1e4
    s = (torch.randn(4, 6, 32, generator=g) * 1e4).requires_grad_()
    loss = divergence(kind, t, s, beta=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_half_precision_inputs_are_upcast():
    t, s = (torch.tensor(x) for x in _random_logits(seed=8))
    full = divergence("fkl", t.float(), s.float())
    half = divergence("fkl", t.bfloat16(), s.bfloat16())
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=5e-2)


def test_greedy_agreement_counts_matching_argmax_over_unmasked_positions():
    teacher = torch.tensor([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0]]])
    student = torch.tensor([[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert greedy_agreement(teacher, student).item() == pytest.approx(2 / 3)
    mask = torch.tensor([[True, True, False]])
    assert greedy_agreement(teacher, student, mask).item() == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="kl"), "unknown divergence kind"),
        (dict(kind="jsd", beta=0.0), "strictly inside"),
        (dict(kind="jsd", beta=1.0), "strictly inside"),
        (dict(kind="fkl", beta=1.5), "beta must be in"),
        (dict(kind="fkl", temperature=0.0), "temperature"),
        (dict(kind="tvd", temperature=-1.0), "temperature"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, match):
    t, s = (torch.tensor(x) for x in _random_logits(seed=9))
    kind = kwargs.pop("kind")
    with pytest.raises(ValueError, match=match):
        divergence(kind, t, s, **kwargs)


def test_shape_mismatch_and_bad_mask_raise_value_error():
    t = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="shape"):
        divergence("fkl", t, torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match="mask shape"):
        divergence("fkl", t, t, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="all masked"):
        divergence("fkl", t, t, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="all masked"):
        token_acceptance_rate(t, t, torch.zeros(2, 3))
