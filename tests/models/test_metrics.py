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


def test_lead_n_takes_the_first_n_words_after_the_task_prefix():
    from models.metrics import lead_n

    assert lead_n(["describe: Paris is  the capital of France.", "x y"], 3, "describe: ") == ["Paris is the", "x y"]
    with pytest.raises(ValueError):
        lead_n(["a"], 0)


def test_choose_lead_n_picks_the_n_with_the_best_validation_rouge_l():
    from models.metrics import choose_lead_n

    inputs = ["p: the cat sat on the mat today", "p: a dog ran in the park at noon"]
    refs = ["the cat sat", "a dog ran"]  # the first three words are exactly the reference
    n, score = choose_lead_n(inputs, refs, "p: ", candidates=range(1, 8))
    assert n == 3 and score == pytest.approx(1.0)


def test_majority_class_is_the_most_frequent_label_with_ties_broken_by_name():
    from models.metrics import majority_class

    assert majority_class(["b", "a", "b", "c"]) == "b"
    assert majority_class(["b", "a"]) == "a"
    with pytest.raises(ValueError):
        majority_class([])


def test_beats_baseline_compares_the_primary_metric_strictly():
    from models.metrics import beats_baseline

    assert beats_baseline({"test.rougeL": 0.3, "test.baseline.rougeL": 0.2}, "generation", "test.") is True
    assert beats_baseline({"test.accuracy": 0.4, "test.baseline.accuracy": 0.4}, "classification", "test.") is False
    assert beats_baseline({"test.accuracy": 0.4}, "classification", "test.") is None


def test_word_error_rate_counts_substitutions_deletions_and_insertions_over_reference_words():
    from models.metrics import normalization, word_errors

    assert word_errors("a b c", "a b c") == 0
    assert word_errors("a x c", "a b c") == 1 and word_errors("a c", "a b c") == 1 and word_errors("a b b c", "a b c") == 1
    m = normalization(["One two", "three"], ["one two", "three four"])
    assert m["exact_match"] == 0.5 and m["wer"] == pytest.approx(1 / 4)


def test_the_normalization_baseline_is_the_better_of_copying_and_reading_digits_on_the_other_split():
    from models.metrics import choose_normalization_baseline, copy_input, read_digits

    assert copy_input(["normalize: in 2004"], "normalize: ") == ["in 2004"]
    assert read_digits(["normalize: £35bn"], "normalize: ") == ["£ three five bn"]
    assert read_digits(["normalize: 12 km² ①"], "normalize: ") == ["one two km² ①"]  # only ASCII digits are read
    inputs, refs = ["normalize: 1 2", "normalize: 3"], ["one two", "three"]
    assert choose_normalization_baseline(inputs, refs, "normalize: ") == "read-digits"
    assert choose_normalization_baseline(["normalize: in 2004"], ["in 2004"], "normalize: ") == "copy-input"
