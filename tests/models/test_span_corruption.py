"""Tests for models/span_corruption.py against T5's counting rules and golden vectors.

Golden vectors: google-research/text-to-text-transfer-transformer t5/data/preprocessors_test.py
(vocab_size 1000) and the same functions evaluated on the stock 32100-id T5 vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from models.span_corruption import (
    LABEL_PAD_ID,
    SpanCorruptionCollator,
    compute_input_and_target_lengths,
    noise_counts,
    noise_span_to_unique_sentinel,
    nonnoise_span_to_unique_sentinel,
    random_spans_noise_mask,
)

T5_VOCAB = 32100  # <extra_id_0> is 32099


def _runs(mask: np.ndarray) -> int:
    """Number of maximal runs of True."""
    m = mask.astype(np.int8)
    return int(np.sum(np.diff(np.concatenate([[0], m])) == 1))


def _merge(inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> list[int]:
    """Undo span corruption: replace each sentinel in inputs by what follows it in targets."""
    is_sentinel = lambda t: t >= vocab_size - 100  # noqa: E731
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets.tolist():
        if is_sentinel(t):
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs.tolist():
        out.extend(spans[t] if is_sentinel(t) else [t])
    return out


# ---------------------------------------------------------------- compute_input_and_target_lengths


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((512, 0.15, 3.0), (568, 114)),  # the T5 pre-training setting
        ((64, 0.20, 2.0), (70, 22)),  # preprocessors_test.test_random_spans_helper
        ((64, 0.20, 1.0), (63, 27)),  # idem
        # noise_density == 0.5 hack: 767 tokens give targets 513 > 512, so T5 drops one token.
        # 767 * 0.5 = 383.5 also checks half-to-even rounding (-> 384).
        ((512, 0.5, 3.0), (766, 512)),
    ],
)
def test_lengths_helper_matches_t5_values(args, expected):
    assert compute_input_and_target_lengths(*args) == expected


def test_lengths_helper_tokens_length_is_the_largest_that_fits():
    for inputs_length in (16, 100, 512, 1024):
        n, _ = compute_input_and_target_lengths(inputs_length, 0.15, 3.0)

        def inputs(k):
            noise = round(k * 0.15)
            return k - noise + round(noise / 3.0) + 1

        assert inputs(n) <= inputs_length < inputs(n + 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(inputs_length=1, noise_density=0.15, mean_noise_span_length=3.0),
        dict(inputs_length=512, noise_density=1.0, mean_noise_span_length=3.0),
        dict(inputs_length=512, noise_density=-0.1, mean_noise_span_length=3.0),
        dict(inputs_length=512, noise_density=0.15, mean_noise_span_length=0.5),
    ],
)
def test_lengths_helper_rejects_bad_arguments_with_value_error(kwargs):
    with pytest.raises(ValueError, match="must be"):
        compute_input_and_target_lengths(**kwargs)


# ---------------------------------------------------------------- random_spans_noise_mask


def test_noise_mask_density_zero_is_all_false():
    mask = random_spans_noise_mask(32, 0.0, 2.0, rng=np.random.default_rng(0))
    assert mask.dtype == bool and mask.shape == (32,) and not mask.any()


def test_noise_mask_lengths_zero_and_one_follow_t5():
    rng = np.random.default_rng(0)
    assert random_spans_noise_mask(0, 0.15, 3.0, rng=rng).shape == (0,)
    # Computed at length 2 as [False, True], then truncated to the first token.
    np.testing.assert_array_equal(random_spans_noise_mask(1, 0.15, 3.0, rng=rng), [False])


def test_noise_mask_t5_example_has_four_spans_of_total_length_eight():
    # preprocessors_test.test_random_spans_noise_mask: "4 noise spans with a total length of 8".
    for seed in range(20):
        mask = random_spans_noise_mask(32, 0.25, 2.0, rng=np.random.default_rng(seed))
        assert mask.sum() == 8 and _runs(mask) == 4


def test_noise_counts_round_in_float32_like_tf():
    # 190 * 0.15 is 28.499999999999996 in float64 but 28.500002 in float32; TF (and we) get 29.
    assert round(190 * 0.15) == 28
    assert noise_counts(190, 0.15, 3.0) == (29, 10)


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(2, 2000),
    noise_density=st.floats(0.01, 0.6),
    mean_noise_span_length=st.floats(1.0, 12.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_noise_mask_has_exact_noise_count_and_span_count(
    length, noise_density, mean_noise_span_length, seed
):
    num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
    assume(num_spans <= length - num_noise)
    mask = random_spans_noise_mask(
        length, noise_density, mean_noise_span_length, rng=np.random.default_rng(seed)
    )
    assert mask.shape == (length,) and mask.dtype == bool
    assert mask.sum() == num_noise
    assert _runs(mask) == num_spans
    assert not mask[0] and mask[-1]  # spans alternate starting with non-noise, ending with noise


@settings(max_examples=100, deadline=None)
@given(length=st.integers(2, 500), seed=st.integers(0, 2**32 - 1))
def test_noise_mask_random_roll_is_a_rotation_of_the_unrolled_mask(length, seed):
    plain = random_spans_noise_mask(length, 0.15, 3.0, rng=np.random.default_rng(seed))
    rolled = random_spans_noise_mask(
        length, 0.15, 3.0, rng=np.random.default_rng(seed), random_roll=True
    )
    # Same draws for the segmentation, then a roll: some rotation must map one onto the other.
    assert any(np.array_equal(np.roll(plain, k), rolled) for k in range(length))


def test_noise_mask_is_deterministic_given_the_rng_seed():
    a = random_spans_noise_mask(100, 0.15, 3.0, rng=np.random.default_rng(7))
    b = random_spans_noise_mask(100, 0.15, 3.0, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_noise_mask_span_lengths_are_not_degenerate():
    # All compositions are equally likely, so over many draws spans of length 1 and > 3 occur.
    lengths = []
    for seed in range(50):
        mask = random_spans_noise_mask(200, 0.15, 3.0, rng=np.random.default_rng(seed))
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        lengths += list(edges[1::2] - edges[::2])
    assert min(lengths) == 1 and max(lengths) > 3
    assert abs(np.mean(lengths) - 30 / 10) < 1e-9  # 30 noise tokens in 10 spans, every time


def test_noise_mask_rejects_infeasible_span_count_with_value_error():
    # 9 noise tokens in 9 spans need 9 separating non-noise tokens; only 1 is left.
    with pytest.raises(ValueError, match="lower noise_density"):
        random_spans_noise_mask(10, 0.9, 1.0, rng=np.random.default_rng(0))


# ---------------------------------------------------------------- sentinels


def test_noise_span_to_unique_sentinel_matches_t5_golden_vector():
    # preprocessors_test.test_noise_span_to_unique_sentinel
    out = noise_span_to_unique_sentinel(
        np.array([10, 11, 12, 13, 14, 15]), np.array([1, 1, 0, 0, 1, 0], bool), 1000
    )
    np.testing.assert_array_equal(out, [999, 12, 13, 998, 15])


def test_nonnoise_span_to_unique_sentinel_matches_t5_semantics():
    out = nonnoise_span_to_unique_sentinel(
        np.array([10, 11, 12, 13, 14, 15]), np.array([1, 1, 0, 0, 1, 0], bool), 1000
    )
    np.testing.assert_array_equal(out, [10, 11, 999, 14, 998])


TEN = np.arange(10, 20)
MASK_A = np.array([0, 0, 0, 1, 1, 0, 1, 0, 0, 1], bool)
MASK_B = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 0], bool)


@pytest.mark.parametrize(
    ("tokens", "mask", "expected"),
    [
        (np.array([], np.int64), np.array([], bool), []),
        (np.array([1, 2, 3]), np.ones(3, bool), [32099]),
        (np.array([1, 2, 3]), np.zeros(3, bool), [1, 2, 3]),
        (TEN, MASK_A, [10, 11, 12, 32099, 15, 32098, 17, 18, 32097]),
        (TEN, MASK_B, [32099, 12, 13, 14, 15, 32098, 19]),
    ],
)
def test_noise_span_to_unique_sentinel_t5_vocab_vectors(tokens, mask, expected):
    np.testing.assert_array_equal(noise_span_to_unique_sentinel(tokens, mask, T5_VOCAB), expected)


@pytest.mark.parametrize(
    ("tokens", "mask", "expected"),
    [
        (np.array([], np.int64), np.array([], bool), []),
        (np.array([1, 2, 3]), np.ones(3, bool), [1, 2, 3]),
        (np.array([1, 2, 3]), np.zeros(3, bool), [32099]),
        (TEN, MASK_A, [32099, 13, 14, 32098, 16, 32097, 19]),
        (TEN, MASK_B, [10, 11, 32099, 16, 17, 18, 32098]),
    ],
)
def test_nonnoise_span_to_unique_sentinel_t5_vocab_vectors(tokens, mask, expected):
    np.testing.assert_array_equal(nonnoise_span_to_unique_sentinel(tokens, mask, T5_VOCAB), expected)


def test_sentinel_functions_reject_mismatched_shapes_with_value_error():
    with pytest.raises(ValueError, match="same shape"):
        noise_span_to_unique_sentinel(np.arange(4), np.zeros(3, bool), 1000)


# ---------------------------------------------------------------- collator


def _rows(collate: SpanCorruptionCollator, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, collate.vocab_size - 100, (batch, collate.tokens_length))


def test_collator_full_rows_fill_inputs_and_targets_exactly_without_padding():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=512)
    assert (collate.tokens_length, collate.targets_length) == (568, 114)
    batch = collate(_rows(collate, 4), rng=np.random.default_rng(0))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == (4, 512) and batch["input_ids"].dtype == torch.int64
    assert batch["labels"].shape == (4, 114) and batch["labels"].dtype == torch.int64
    assert (batch["input_ids"][:, -1] == 1).all() and (batch["labels"][:, -1] == 1).all()
    assert not (batch["input_ids"] == 0).any() and not (batch["labels"] == LABEL_PAD_ID).any()


def test_collator_inputs_and_targets_merge_back_to_the_original_row():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=64)
    rows = _rows(collate, 8)
    batch = collate(rows, rng=np.random.default_rng(1))
    for row, inputs, labels in zip(rows, batch["input_ids"].numpy(), batch["labels"].numpy()):
        assert _merge(inputs[:-1], labels[:-1], T5_VOCAB) == row.tolist()


def test_collator_sentinels_count_down_from_extra_id_0():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=512)
    inputs = collate(_rows(collate, 1), rng=np.random.default_rng(2))["input_ids"][0].numpy()
    sentinels = inputs[inputs >= T5_VOCAB - 100]
    np.testing.assert_array_equal(sentinels, T5_VOCAB - 1 - np.arange(len(sentinels)))
    assert len(sentinels) == 28  # round(85 / 3)


def test_collator_trailing_pads_are_not_corrupted_and_outputs_are_padded():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=64)
    rows = _rows(collate, 2)
    rows[0, 30:] = 0  # a short last document
    rows[1, :] = 0  # an empty row
    batch = collate(rows, rng=np.random.default_rng(3))
    inputs, labels = batch["input_ids"][0].numpy(), batch["labels"][0].numpy()
    n_in, n_tg = int((inputs != 0).sum()), int((labels != LABEL_PAD_ID).sum())
    assert (inputs[n_in:] == 0).all() and (labels[n_tg:] == LABEL_PAD_ID).all()
    assert inputs[n_in - 1] == 1 and labels[n_tg - 1] == 1
    assert _merge(inputs[: n_in - 1], labels[: n_tg - 1], T5_VOCAB) == rows[0, :30].tolist()
    assert batch["input_ids"][1, 0] == 1 and (batch["input_ids"][1, 1:] == 0).all()
    assert batch["labels"][1, 0] == 1 and (batch["labels"][1, 1:] == LABEL_PAD_ID).all()


def test_collator_is_deterministic_given_the_rng_seed():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=64)
    rows = _rows(collate, 3)
    a = collate(rows, rng=np.random.default_rng(5))
    b = collate(rows, rng=np.random.default_rng(5))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_collator_rejects_short_rows_with_value_error():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=64)
    with pytest.raises(ValueError, match=str(collate.tokens_length)):
        collate(np.ones((2, collate.tokens_length - 1), np.int64) + 5, rng=np.random.default_rng(0))


def test_collator_rejects_padding_before_real_tokens_with_value_error():
    collate = SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=64)
    rows = _rows(collate, 1)
    rows[0, 10] = 0
    with pytest.raises(ValueError, match="only allowed at the end"):
        collate(rows, rng=np.random.default_rng(0))


def test_collator_rejects_lengths_where_t5_helper_and_mask_disagree():
    # inputs_length 172: the helper's 190 * 0.15 rounds to 28 (float64), the mask's to 29 (float32).
    with pytest.raises(ValueError, match="neighbouring inputs_length"):
        SpanCorruptionCollator(vocab_size=T5_VOCAB, inputs_length=172)


def test_more_noise_spans_than_sentinels_is_refused_at_construction():
    # 1810 inputs -> 2006 raw tokens at 0.15 / 3.0: 100.3 -> 100 spans fit; 1830 -> 101 spans do not
    from models.span_corruption import SpanCorruptionCollator, noise_counts

    n_tokens = SpanCorruptionCollator(vocab_size=32100, inputs_length=1700).tokens_length
    assert noise_counts(n_tokens, 0.15, 3.0)[1] <= 100
    with pytest.raises(ValueError, match="more than the 100 sentinels"):
        SpanCorruptionCollator(vocab_size=32100, inputs_length=1810)
    SpanCorruptionCollator(vocab_size=32100, inputs_length=1810, num_sentinels=200)  # a vocabulary with 200
    with pytest.raises(ValueError, match="num_sentinels"):
        SpanCorruptionCollator(vocab_size=100, inputs_length=64, num_sentinels=100)
