"""Tests for models/al_scorers.py: uncertainty shapes, aggregation and ranking rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.al_scorers import AGGREGATES, METHODS, char_uncertainty, rank, sentence_score, sentence_scores

GRID = np.linspace(0.0, 1.0, 1001)


@pytest.mark.parametrize("method", METHODS)
def test_uncertainty_peaks_at_one_half_and_vanishes_at_certainty(method):
    u = char_uncertainty(GRID, method)
    assert GRID[np.argmax(u)] == 0.5
    assert u[0] == 0.0 and u[-1] == 0.0
    peak = {"entropy": 1.0, "margin": 1.0, "least_confidence": 0.5}[method]
    assert u.max() == pytest.approx(peak)


@pytest.mark.parametrize("method", METHODS)
def test_uncertainty_is_symmetric_and_decreases_away_from_one_half(method):
    u = char_uncertainty(GRID, method)
    np.testing.assert_allclose(u, u[::-1], atol=1e-12)
    upper = u[500:]  # p from 0.5 to 1
    assert np.all(np.diff(upper) < 0)


def test_uncertainty_formulas():
    p = np.array([0.1, 0.25, 0.8])
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(char_uncertainty(p, "entropy"), h)
    np.testing.assert_allclose(char_uncertainty(p, "margin"), [0.2, 0.5, 0.4])
    np.testing.assert_allclose(char_uncertainty(p, "least_confidence"), [0.1, 0.25, 0.2])


def test_all_methods_rank_single_characters_identically():
    rng = np.random.default_rng(0)
    p = rng.random(200)
    orders = {m: np.argsort(-char_uncertainty(p, m), kind="stable").tolist() for m in METHODS}
    assert orders["entropy"] == orders["margin"] == orders["least_confidence"]


def test_uncertainty_rejects_values_outside_unit_interval():
    with pytest.raises(ValueError, match="logits"):
        char_uncertainty([0.2, 1.5], "entropy")
    with pytest.raises(ValueError, match="unknown uncertainty method"):
        char_uncertainty([0.2], "bald")


def test_sentence_score_ignores_position_zero():
    # Position 0 is always a word start (prob 1 from the model); it must not dilute the mean.
    assert sentence_score([1.0, 0.5, 0.5]) == pytest.approx(1.0)
    assert sentence_score([0.5, 0.0, 1.0]) == 0.0


def test_sentence_aggregates():
    probs = [1.0, 0.5, 0.9, 0.0]  # decisions: 0.5, 0.9, 0.0
    u = char_uncertainty([0.5, 0.9, 0.0], "margin")  # [1.0, 0.2, 0.0]
    assert sentence_score(probs, method="margin", aggregate="sum") == pytest.approx(u.sum())
    assert sentence_score(probs, method="margin", aggregate="mean") == pytest.approx(u.mean())
    assert sentence_score(probs, method="margin", aggregate="max") == pytest.approx(1.0)


def test_length_normalized_sum_is_the_mean():
    probs = np.random.default_rng(1).random(17)
    normalized = sentence_score(probs, aggregate="sum", length_normalize=True)
    assert normalized == pytest.approx(sentence_score(probs, aggregate="mean"))


def test_cost_aware_score_is_total_uncertainty_per_annotated_character():
    probs = np.array([1.0, 0.5, 0.5, 0.0, 0.0])  # 5 characters to annotate, 2 uncertain decisions
    assert sentence_score(probs, aggregate="sum", cost_aware=True) == pytest.approx(2.0 / 5)
    # At equal total uncertainty, the shorter sentence is cheaper and wins.
    short = [1.0, 0.5, 0.5]
    long = [1.0, 0.5, 0.5] + [0.0] * 7
    assert sentence_score(short, aggregate="sum") == sentence_score(long, aggregate="sum")
    assert sentence_score(short, aggregate="sum", cost_aware=True) > sentence_score(
        long, aggregate="sum", cost_aware=True
    )


@settings(max_examples=100, deadline=None)
@given(
    probs=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=40),
    method=st.sampled_from(METHODS),
    aggregate=st.sampled_from(AGGREGATES),
)
def test_sentence_score_bounds(probs, method, aggregate):
    score = sentence_score(probs, method=method, aggregate=aggregate)
    peak = 0.5 if method == "least_confidence" else 1.0
    n_decisions = max(len(probs) - 1, 0)
    upper = peak * (n_decisions if aggregate == "sum" else 1)
    assert 0.0 <= score <= upper + 1e-12
    assert math.isfinite(score)
    if aggregate != "sum":
        assert sentence_score(probs, method=method, aggregate=aggregate, length_normalize=True) <= score + 1e-12


def test_sentence_score_of_empty_and_single_character_text_is_zero():
    for probs in ([], [1.0]):
        for aggregate in AGGREGATES:
            assert sentence_score(probs, aggregate=aggregate) == 0.0
            assert sentence_score(probs, aggregate=aggregate, cost_aware=True) == 0.0


def test_sentence_score_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown aggregate"):
        sentence_score([1.0, 0.5], aggregate="median")
    with pytest.raises(ValueError, match="pick one"):
        sentence_score([1.0, 0.5], length_normalize=True, cost_aware=True)
    with pytest.raises(ValueError, match="1-D"):
        sentence_score([[1.0, 0.5]])


class _TableModel:
    """Stand-in segmenter: fixed probabilities per text."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def boundary_probs(self, texts):
        return [np.asarray(self.table[t], dtype=np.float32) for t in texts]


def test_rank_orders_best_first_and_breaks_ties_by_index():
    model = _TableModel({
        "sure": [1.0, 0.0, 1.0],
        "unsure": [1.0, 0.5, 0.5],
        "half": [1.0, 0.5, 0.0],
        "half2": [1.0, 0.0, 0.5],
        "": [],
    })
    texts = ["sure", "half", "", "unsure", "half2"]
    assert rank(texts, model) == [3, 1, 4, 0, 2]


def test_rank_cost_aware_prefers_cheap_sentences():
    model = _TableModel({"short": [1.0, 0.5], "long": [1.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]})
    assert rank(["long", "short"], model, aggregate="sum") == [0, 1]
    assert rank(["long", "short"], model, aggregate="sum", cost_aware=True) == [1, 0]


def test_rank_rejects_a_model_that_drops_texts():
    class Broken:
        def boundary_probs(self, texts):
            return []

    with pytest.raises(ValueError, match="probability arrays"):
        rank(["a"], Broken())


# -- decision masks: only the positions where the model really decides count -----------------------

def test_equal_uncertainty_scores_equal_whatever_the_forced_positions_with_the_decision_mask():
    plain, forced = [1.0, 0.5, 0.5], [1.0, 0.5, 0.0, 0.0, 0.5]
    forced_mask = np.array([False, True, False, False, True])
    assert sentence_score(forced) == pytest.approx(0.5)  # without the mask the forced zeros dilute the mean
    for aggregate in AGGREGATES:
        for method in METHODS:
            assert sentence_score(forced, decision_mask=forced_mask, method=method, aggregate=aggregate) == \
                pytest.approx(sentence_score(plain, method=method, aggregate=aggregate))
    assert sentence_score(forced, decision_mask=forced_mask, aggregate="sum", length_normalize=True) == \
        pytest.approx(1.0)  # per decision position: 2 decisions, not 4
    assert sentence_score(forced, decision_mask=forced_mask, aggregate="sum", cost_aware=True) == \
        pytest.approx(2.0 / 5)  # per character the annotator reads: all 5


def test_no_mask_means_every_position_after_the_first_and_position_0_is_never_a_decision():
    probs = np.array([1.0, 0.3, 0.9, 0.5])
    assert sentence_score(probs, decision_mask=None) == sentence_score(probs)
    assert sentence_score(probs, decision_mask=np.ones(4, dtype=bool)) == pytest.approx(sentence_score(probs))
    assert sentence_score([0.5, 1.0], decision_mask=[True, False]) == 0.0  # only position 0 left: no decision


def test_a_mask_with_no_decision_scores_zero_for_every_aggregate():
    for aggregate in AGGREGATES:
        assert sentence_score([1.0, 0.5, 0.5], decision_mask=np.zeros(3, dtype=bool), aggregate=aggregate) == 0.0
        assert sentence_score([1.0, 0.5], decision_mask=[False, False], aggregate=aggregate,
                              length_normalize=True) == 0.0


def test_a_mask_of_the_wrong_length_or_kind_is_refused_in_one_line():
    with pytest.raises(ValueError, match="one entry per character"):
        sentence_score([1.0, 0.5, 0.5], decision_mask=[False, True])
    with pytest.raises(ValueError, match="boolean"):
        sentence_score([1.0, 0.5, 0.5], decision_mask=[0.0, 0.5, 1.0])
    assert sentence_score([1.0, 0.5, 0.0], decision_mask=[0, 1, 0]) == pytest.approx(1.0)  # 0/1 ints are bools


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=40))
def test_masked_positions_never_change_the_score(rows):
    probs = np.array([p for p, _ in rows])
    mask = np.array([m for _, m in rows])
    other = np.where(mask, probs, 1.0 - probs)  # change only the positions the mask leaves out
    for aggregate in AGGREGATES:
        assert sentence_score(probs, decision_mask=mask, aggregate=aggregate) == pytest.approx(
            sentence_score(other, decision_mask=mask, aggregate=aggregate))


class _MaskedTableModel(_TableModel):
    def __init__(self, table, masks):
        super().__init__(table)
        self.masks = masks

    def decision_masks(self, texts):
        return [np.asarray(self.masks[t], dtype=bool) for t in texts]


def test_rank_takes_the_decision_masks_from_the_model():
    table = {"vowels": [1.0, 0.45, 0.0, 0.0, 0.45], "plain": [1.0, 0.4, 0.4]}
    masks = {"vowels": [False, True, False, False, True], "plain": [False, True, True]}
    texts = ["plain", "vowels"]
    assert rank(texts, _TableModel(table)) == [0, 1]  # unmasked: the forced zeros sink the vowel-rich text
    assert rank(texts, _MaskedTableModel(table, masks)) == [1, 0]  # masked: p = 0.45 is the more uncertain
    assert sentence_scores(texts, _MaskedTableModel(table, masks)).tolist() == pytest.approx(
        [sentence_score(table["plain"]), sentence_score([1.0, 0.45, 0.45])])


# -- partial annotation windows -------------------------------------------------------------------

from models.al_scorers import merge_windows, select_windows, window_decisions  # noqa: E402


def test_windows_merge_and_an_annotator_decides_the_positions_between_shown_characters():
    assert merge_windows([(5, 9), (0, 3), (3, 4), (8, 12)]) == [(0, 4), (5, 12)]
    assert window_decisions([(2, 6)], 8).tolist() == [False, False, False, True, True, True, False, False]
    assert window_decisions([(0, 3)], 5).tolist() == [False, True, True, False, False]  # 0 is never a decision


def test_select_windows_takes_the_most_uncertain_positions_first_within_budget_and_quota():
    probs = [np.array([1.0, 0.5, 0.9, 0.9, 0.9, 0.9, 0.5, 0.99]), np.array([1.0, 0.45, 0.0, 0.99, 0.6])]
    chosen = select_windows(probs, [None, None], budget_chars=4, windows_per_text=1, half_width=1)
    assert chosen == {0: [(0, 2)], 1: [(0, 2)]}  # p = 0.5 at text 0 first, then p = 0.45 at text 1
    wide = select_windows(probs, [None, None], budget_chars=100, windows_per_text=2, half_width=1)
    assert wide[0] == [(0, 2), (5, 7)] and len(wide[1]) <= 2
    masked = select_windows(probs, [np.array([False, False, True, True, True, True, False, True]), None],
                            budget_chars=2, windows_per_text=1, half_width=1)
    assert masked == {1: [(0, 2)]}  # text 0: both p = 0.5 positions masked out (already annotated)
    with pytest.raises(ValueError, match=">= 1"):
        select_windows(probs, [None, None], budget_chars=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), min_size=1, max_size=8),
       st.integers(1, 60), st.integers(1, 4), st.integers(1, 4))
def test_windows_cost_at_most_the_budget_plus_one_window_and_respect_the_quota(rows, budget, k, h):
    probs = [np.array(r) for r in rows]
    chosen = select_windows(probs, [None] * len(probs), budget_chars=budget, windows_per_text=k, half_width=h)
    shown = sum(e - s for w in chosen.values() for s, e in w)
    assert shown < budget + 2 * h
    for t, w in chosen.items():
        assert merge_windows(w) == w and all(0 <= s < e <= len(probs[t]) for s, e in w)


# -- batch diversity ---------------------------------------------------------------------------------

def test_diverse_order_skips_a_near_duplicate_of_a_sentence_already_in_the_batch():
    from models.al_scorers import diverse_order

    texts = ["กขคงจฉชซ", "กขคงจฉชซ", "ฌญฎฏฐฑฒณ"]  # 0 and 1 are the same sentence; 2 is new
    scores = [1.0, 0.99, 0.6]
    assert diverse_order(texts, scores, diversity=0.0) == [0, 1, 2]  # plain score order
    assert diverse_order(texts, scores, diversity=1.0) == [0, 2, 1]  # the duplicate has nothing new: last


def test_diverse_order_discounts_what_the_labelled_set_already_covers():
    from models.al_scorers import diverse_order

    texts = ["abcdefgh", "stuvwxyz"]
    assert diverse_order(texts, [1.0, 0.5], covered=["xxabcdefghxx"]) == [1, 0]
    assert diverse_order(texts, [1.0, 0.5], covered=[]) == [0, 1]


def test_diverse_order_is_the_exact_greedy_order_and_stops_at_the_budget():
    from models.al_scorers import char_ngrams, diverse_order

    rng = np.random.default_rng(0)
    alphabet = list("abcdefghij")
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(3, 12)))) for _ in range(40)]
    scores = rng.random(40)
    # the naive greedy: recompute every gain at every pick
    seen, naive, left = set(), [], list(range(40))
    while left:
        g = {i: scores[i] * len(char_ngrams(texts[i]) - seen) / len(char_ngrams(texts[i])) for i in left}
        best = min(left, key=lambda i: (-g[i], i))
        naive.append(best)
        left.remove(best)
        seen |= char_ngrams(texts[best])
    assert diverse_order(texts, scores) == naive
    budget = diverse_order(texts, scores, budget_chars=30)
    assert budget == naive[:len(budget)] and sum(len(texts[i]) for i in budget[:-1]) < 30 <= sum(
        len(texts[i]) for i in budget)
    assert diverse_order(texts, scores, max_items=5) == naive[:5]


def test_diverse_order_refuses_mismatched_lengths_and_negative_diversity():
    from models.al_scorers import diverse_order

    with pytest.raises(ValueError, match="2 texts but 1 scores"):
        diverse_order(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="diversity"):
        diverse_order(["a"], [1.0], diversity=-1)
