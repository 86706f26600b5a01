"""Tests for models/al_scorers.py: uncertainty shapes, aggregation and ranking rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.al_scorers import AGGREGATES, METHODS, char_uncertainty, rank, sentence_score

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
