import pytest

from models.metrics import classification, rouge


def test_rouge_is_one_for_identical_text_and_zero_for_disjoint_text():
    assert rouge(["the cat sat"], ["the cat sat"]) == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert rouge(["dogs bark"], ["the cat sat"])["rouge1"] == 0.0


def test_rouge1_matches_the_unigram_f_measure_formula():
    # 3 of 4 predicted unigrams match 3 reference unigrams: P = 3/4, R = 1, F = 6/7
    assert rouge(["the cat sat down"], ["the cat sat"])["rouge1"] == pytest.approx(6 / 7)


def test_macro_f1_averages_per_label_f1_and_counts_unknown_predictions_as_wrong():
    m = classification(["a", "a", "b", "zzz"], ["a", "b", "b", "b"], labels=["a", "b"])
    assert m["accuracy"] == pytest.approx(0.5)
    # a: P=1/2 R=1 F=2/3; b: P=1 R=1/3 F=1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge(["a", "b"], ["a"])
